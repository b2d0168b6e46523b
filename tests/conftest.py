"""Shared fixtures: the demo scene, CPU settings, and the GPU marker's skip."""

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # nerfstudio torch.compiles get_viewmat; slow on the CPU

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory):
    """A small demo scene (48 px, 16 train / 4 test views, 800 seed points), generated once."""
    from argp_ns.demo_scene import make_demo_scene

    return make_demo_scene(tmp_path_factory.mktemp("demo"), size=48, n_train=16, n_test=4, n_points=800)


def random_scene(n: int, seed: int, device: str = "cpu", sh_degree: int = 1):
    """Random Gaussians in front of two cameras: (means, quats, scales, opacities, sh, viewmats, Ks, W, H)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.5, 0.4, 0.3])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.08 + 0.01
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.4
    vm = torch.eye(4).repeat(2, 1, 1)
    vm[:, 2, 3] = 2.5
    vm[1, 0, 3] = 0.3
    W, H = 37, 29
    K = torch.tensor([[35.0, 0, W / 2], [0, 35.0, H / 2], [0, 0, 1]]).repeat(2, 1, 1)
    t = [x.to(device) for x in (means, quats, scales, opac, sh, vm, K)]
    return (*t, W, H)
