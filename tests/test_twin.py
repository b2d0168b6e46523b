"""The PyTorch twin rasterizer against a brute-force per-pixel alpha-compositing loop."""

import math

import torch
from conftest import random_scene

from argp_ns import twin


def brute_force(means, quats, scales, opac, sh, vm, K, W, H, sh_degree, bg):
    """Per camera, per pixel: walk every Gaussian whose tile rectangle holds the pixel, by depth,
    with gsplat's alpha, skip and stop rules, in float64."""
    proj = twin.project(means, quats, scales, opac, vm, K, W, H)
    colors = twin.view_colors(means, sh, vm, proj["radii"], sh_degree)
    tw, th = math.ceil(W / 16), math.ceil(H / 16)
    lo, hi = twin.tile_bounds(proj["means2d"], proj["radii"], 16, tw, th)
    C, N = proj["depths"].shape
    img = torch.zeros(C, H, W, 3, dtype=torch.float64)
    alp = torch.zeros(C, H, W, 1, dtype=torch.float64)
    for c in range(C):
        order = sorted(range(N), key=lambda i: (proj["depths"][c, i].item(), i))
        for y in range(H):
            for x in range(W):
                T, acc = 1.0, torch.zeros(3, dtype=torch.float64)
                for i in order:
                    if not (lo[c, i, 0] <= x // 16 < hi[c, i, 0] and lo[c, i, 1] <= y // 16 < hi[c, i, 1]):
                        continue
                    mx, my = proj["means2d"][c, i].double()
                    a, b, cc = proj["conics"][c, i].double()
                    dx, dy = mx - (x + 0.5), my - (y + 0.5)
                    sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
                    alpha = min(0.999, proj["opacities"][c, i].double().item() * math.exp(-sigma.item()))
                    if sigma < 0 or alpha < 1 / 255:
                        continue
                    if T * (1 - alpha) <= 1e-4:
                        break
                    acc += colors[c, i].double() * alpha * T
                    T *= 1 - alpha
                img[c, y, x] = acc + T * bg[c].double()
                alp[c, y, x] = 1 - T
    return img, alp


def test_twin_matches_brute_force():
    for seed in (0, 1):
        means, quats, scales, opac, sh, vm, K, W, H = random_scene(40, seed)
        bg = torch.rand(2, 3, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            img, alp, _ = twin.rasterization(means, quats, scales, opac, sh, vm, K, W, H, sh_degree=1, backgrounds=bg)
        ref_img, ref_alp = brute_force(means, quats, scales, opac, sh, vm, K, W, H, 1, bg)
        assert torch.allclose(img.double(), ref_img, atol=1e-5)
        assert torch.allclose(alp.double(), ref_alp, atol=1e-5)
        assert (alp > 0.05).float().mean() > 0.2  # the scene covers the views


def test_twin_gradients_and_absgrad():
    means, quats, scales, opac, sh, vm, K, W, H = random_scene(60, 3)
    leaves = [t.requires_grad_(True) for t in (means, quats, scales, opac, sh)]
    img, alp, info = twin.rasterization(means, quats, scales, opac, sh, vm, K, W, H, sh_degree=1,
                                        backgrounds=torch.ones(2, 3), render_mode="RGB+ED", absgrad=True)
    info["means2d"].retain_grad()
    (img[..., :3] * torch.linspace(0, 1, W)[:, None]).sum().backward()
    for t in leaves:
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    g, ag = info["means2d"].grad, info["means2d"].absgrad
    assert ag.shape == g.shape == (2, 60, 2)
    assert (ag >= g.abs() - 1e-6).all() and ag.sum() > g.abs().sum()
    assert set(info) >= {"radii", "means2d", "depths", "conics", "opacities", "width", "height", "n_cameras"}
    assert info["n_cameras"] == 2 and info["radii"].shape == (2, 60)


def test_expected_depth_and_modes():
    means, quats, scales, opac, sh, vm, K, W, H = random_scene(30, 4)
    with torch.no_grad():
        rgbd, alp, _ = twin.rasterization(means, quats, scales, opac, sh, vm, K, W, H, sh_degree=1, render_mode="RGB+ED")
        ed, _, _ = twin.rasterization(means, quats, scales, opac, sh, vm, K, W, H, sh_degree=1, render_mode="ED")
    covered = alp[..., 0] > 0.2
    assert torch.allclose(rgbd[..., 3][covered], ed[..., 0][covered], atol=1e-5)
    assert (ed[..., 0][covered] > 1.0).all()  # the cameras sit 2.5 in front of the cloud
