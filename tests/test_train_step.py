"""The lean training step: the loss against pytorch_msssim and splatfacto's formula, fused Adam through gsplat's
ops, and the sync-free strategy statistics against gsplat's (CPU); the CUDA loss against the reference (GPU)."""

from pathlib import Path

import pytest
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import duplicate, remove, split
from pytorch_msssim import SSIM

from argp_ns.strategy import SyncFreeStrategy
from argp_ns.method_config import splatfacto_optimizers
from argp_ns.train_step import FusedAdamOptimizerConfig, FusedOptimizers, loss_reference, ssim_reference, training_loss

FOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "fox" / "images_2" / "0001.jpg"
SIZES = [(37, 29), (11, 11), (64, 48), (53, 70), (8, 30)]


def image_pair(h: int, w: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(h, w, 3, generator=g)
    render = (gt + 0.2 * torch.randn(h, w, 3, generator=g)).clamp(0, 1)
    return gt.double(), render.double()


def real_pair():
    """A fox photograph (or, without the shared data, a smooth synthetic image) and a noisy, shifted render of it."""
    if FOX.exists():
        import numpy as np
        from PIL import Image

        gt = torch.from_numpy(np.asarray(Image.open(FOX).convert("RGB").resize((97, 61)))).double() / 255.0
    else:
        y, x = torch.meshgrid(torch.linspace(0, 3, 61), torch.linspace(0, 5, 97), indexing="ij")
        gt = torch.stack([torch.sin(x + y), torch.cos(2 * x), torch.sin(y * x)], -1).double() * 0.5 + 0.5
    render = (torch.roll(gt, 1, dims=1) + 0.05 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).clamp(0, 1)
    return gt, render


def msssim(gt, render):
    """splatfacto's call: SSIM(data_range=1, size_average=True, channel=3) on permuted [1, 3, H, W] views."""
    return SSIM(data_range=1.0, size_average=True, channel=3)(gt.permute(2, 0, 1)[None], render.permute(2, 0, 1)[None])


@pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")
@pytest.mark.parametrize("size", SIZES + ["real"])
def test_ssim_value_and_gradient_equal_pytorch_msssim(size):
    gt, render = real_pair() if size == "real" else image_pair(*size, seed=sum(size))
    ours_in = render.clone().requires_grad_(True)
    ref_in = render.clone().requires_grad_(True)
    ours, ref = ssim_reference(gt, ours_in), msssim(gt, ref_in)
    assert abs(ours.item() - ref.item()) < 1e-5
    ours.backward()
    ref.backward()
    assert torch.allclose(ours_in.grad, ref_in.grad, atol=1e-5, rtol=0)
    assert ours_in.grad.abs().max() > 0


@pytest.mark.parametrize("size", [(37, 29), (48, 64)])
def test_training_loss_is_splatfacto_main_loss(size):
    gt, render = (t.float() for t in image_pair(*size, seed=7))
    lam = 0.2
    ours_in, ref_in = render.clone().requires_grad_(True), render.clone().requires_grad_(True)
    loss, stats = training_loss(gt, ours_in, lam)
    ref = (1 - lam) * torch.abs(gt - ref_in).mean() + lam * (1 - msssim(gt, ref_in))
    assert abs(float(loss) - float(ref)) < 1e-6
    assert torch.allclose(stats, torch.stack([(render - gt).abs().mean(), msssim(gt, render), ((render - gt) ** 2).mean()]), atol=1e-6)
    loss.backward()
    ref.backward()
    assert torch.allclose(ours_in.grad, ref_in.grad, atol=1e-7, rtol=1e-5)


def gaussians(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.nn.Parameter(torch.randn(n, 3, generator=g)),
        "scales": torch.nn.Parameter(torch.randn(n, 3, generator=g) - 3),
        "quats": torch.nn.Parameter(torch.randn(n, 4, generator=g)),
        "opacities": torch.nn.Parameter(torch.randn(n, generator=g)),
    }


def adam_steps(params, optimizers, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for name, p in params.items():
            p.grad = torch.randn(p.shape, generator=g)
            optimizers[name].step()


def test_fused_adam_config_builds_fused_adam_with_the_same_updates():
    fused_params, plain_params = gaussians(50, 0), gaussians(50, 0)
    fused = {k: FusedAdamOptimizerConfig(lr=1e-2, eps=1e-15).setup([p]) for k, p in fused_params.items()}
    plain = {k: torch.optim.Adam([p], lr=1e-2, eps=1e-15, foreach=False) for k, p in plain_params.items()}
    assert all(o.param_groups[0]["fused"] for o in fused.values())
    adam_steps(fused_params, fused, 5, seed=1)
    adam_steps(plain_params, plain, 5, seed=1)
    for k in fused_params:
        assert torch.allclose(fused_params[k], plain_params[k], atol=1e-6)


def test_gsplat_ops_keep_fused_adam_state_aligned():
    params = gaussians(40, 2)
    opts = {k: FusedAdamOptimizerConfig(lr=1e-2, eps=1e-15).setup([p]) for k, p in params.items()}
    adam_steps(params, opts, 3, seed=4)
    state = {"grad2d": torch.rand(40), "count": torch.rand(40)}
    before = {k: opts[k].state[p]["exp_avg"].clone() for k, p in params.items()}

    mask = torch.zeros(40, dtype=torch.bool)
    mask[[1, 5, 7, 30]] = True
    remove(params=params, optimizers=opts, state=state, mask=mask)
    for k, p in params.items():
        st = opts[k].state[p]
        assert opts[k].param_groups[0]["params"][0] is p and p.shape[0] == 36
        assert st["exp_avg"].shape == p.shape == st["exp_avg_sq"].shape
        assert torch.equal(st["exp_avg"], before[k][~mask])
    assert state["grad2d"].shape[0] == 36

    sel = torch.zeros(36, dtype=torch.bool)
    sel[[0, 3]] = True
    duplicate(params=params, optimizers=opts, state=state, mask=sel)
    sel = torch.zeros(38, dtype=torch.bool)
    sel[[4, 10, 37]] = True
    split(params=params, optimizers=opts, state=state, mask=sel)
    for k, p in params.items():
        st = opts[k].state[p]
        assert p.shape[0] == 41 and st["exp_avg"].shape == p.shape == st["exp_avg_sq"].shape
    assert state["count"].shape[0] == 41
    adam_steps(params, opts, 2, seed=5)  # the fused step still runs on the resized rows
    assert all(torch.isfinite(p).all() for p in params.values())


def splatfacto_groups(n: int, seed: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    shapes = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "features_dc": (n, 3), "features_rest": (n, 15, 3),
              "opacities": (n, 1)}
    return {k: [torch.nn.Parameter(torch.randn(shape, generator=g).to(device))] for k, shape in shapes.items()}


def nerfstudio_steps(opts, steps: range, seed: int, scaler) -> None:
    """Steps as nerfstudio's train_iteration makes them: zero_grad_some, gradients, optimizer_scaler_step_some,
    scheduler_step_all; the gradients depend only on the seed, the step and the shapes."""
    names = list(opts.parameters)
    for step in steps:
        opts.zero_grad_some(names)
        g = torch.Generator().manual_seed(seed + step)
        for name in names:
            p = opts.optimizers[name].param_groups[0]["params"][0]
            p.grad = torch.randn(p.shape, generator=g).to(p.device)
        opts.optimizer_scaler_step_some(scaler, names)
        opts.scheduler_step_all(step)


def assert_same_adam(a, b) -> None:
    for name in a.optimizers:
        pa, pb = (o.optimizers[name].param_groups[0]["params"][0] for o in (a, b))
        sa, sb = a.optimizers[name].state[pa], b.optimizers[name].state[pb]
        assert torch.equal(pa, pb), name
        assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert a.optimizers[name].param_groups[0]["lr"] == b.optimizers[name].param_groups[0]["lr"]


def count_fused_steps(monkeypatch) -> list:
    """The batches FusedOptimizers hands to torch's fused Adam (one list entry per batched step)."""
    from argp_ns import torch_compat

    batches = []
    original = torch_compat.fused_adam_steps
    monkeypatch.setattr(torch_compat, "fused_adam_steps", lambda calls: (batches.append(len(calls)), original(calls))[1])
    return batches


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fused_optimizers_step_as_nerfstudio_optimizers(monkeypatch, device):
    """One batch of fused Adam calls gives bit-for-bit nerfstudio's per-group Adam steps (splatfacto's six groups and
    schedules), across a gsplat prune that replaces every parameter and a checkpoint round trip; only the first step
    (which initialises the state) goes through Adam.step."""
    from nerfstudio.engine.optimizers import Optimizers

    config = splatfacto_optimizers(max_steps=20)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ref, ours = Optimizers(config, splatfacto_groups(64, 0, device)), FusedOptimizers(config, splatfacto_groups(64, 0, device))
    batches = count_fused_steps(monkeypatch)
    nerfstudio_steps(ref, range(0, 3), 1, scaler)
    assert batches == []
    nerfstudio_steps(ours, range(0, 3), 1, scaler)
    assert batches == [6, 6]
    assert_same_adam(ref, ours)

    mask = torch.zeros(64, dtype=torch.bool, device=device)
    mask[[2, 9, 40]] = True
    for opts in (ref, ours):  # a prune: every parameter replaced, its Adam state carried over (gsplat's ops)
        params = {k: o.param_groups[0]["params"][0] for k, o in opts.optimizers.items()}
        remove(params=params, optimizers=opts.optimizers, state={}, mask=mask)
    nerfstudio_steps(ref, range(3, 6), 1, scaler)
    nerfstudio_steps(ours, range(3, 6), 1, scaler)
    assert len(batches) == 5
    assert_same_adam(ref, ours)

    saved = {k: o.state_dict() for k, o in ours.optimizers.items()}  # as nerfstudio's checkpoint holds them
    groups = {k: [torch.nn.Parameter(o.param_groups[0]["params"][0].detach().clone())] for k, o in ours.optimizers.items()}
    resumed = FusedOptimizers(config, groups)
    resumed.load_optimizers(saved)
    for k, s in ours.schedulers.items():
        resumed.schedulers[k].load_state_dict(s.state_dict())
    nerfstudio_steps(ref, range(6, 9), 1, scaler)
    nerfstudio_steps(resumed, range(6, 9), 1, scaler)
    assert len(batches) == 8  # the loaded state steps in batches from the first step on
    assert_same_adam(ref, resumed)


def test_fused_optimizers_fall_back_to_nerfstudio_step(monkeypatch):
    """A group that clips its gradients, a step hook or an enabled grad scaler: nerfstudio's own per-group step."""
    config = splatfacto_optimizers(max_steps=20)
    config["scales"] = {**config["scales"], "optimizer": FusedAdamOptimizerConfig(lr=0.005, eps=1e-15, max_norm=1.0)}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batches = count_fused_steps(monkeypatch)
    nerfstudio_steps(FusedOptimizers(config, splatfacto_groups(16, 0)), range(0, 3), 1, scaler)
    assert batches == []
    hooked = FusedOptimizers(splatfacto_optimizers(max_steps=20), splatfacto_groups(16, 0))
    nerfstudio_steps(hooked, range(0, 2), 1, scaler)
    assert batches == [6]
    hooked.optimizers["quats"].register_step_post_hook(lambda *args: None)
    nerfstudio_steps(hooked, range(2, 4), 1, scaler)
    assert batches == [6]


@pytest.mark.parametrize("cameras", [1, 2])
def test_sync_free_statistics_equal_gsplat_default_strategy(cameras):
    g = torch.Generator().manual_seed(cameras)
    n = 500
    params = {"means": torch.zeros(n, 3)}
    means2d = torch.zeros(cameras, n, 2, requires_grad=True)
    means2d.grad = torch.randn(cameras, n, 2, generator=g)
    radii = (torch.rand(cameras, n, generator=g) * 20).int() * (torch.rand(cameras, n, generator=g) > 0.3)
    info = {"width": 64, "height": 48, "n_cameras": cameras, "radii": radii, "gaussian_ids": None, "means2d": means2d}
    results = []
    for strategy in (DefaultStrategy(refine_scale2d_stop_iter=1000), SyncFreeStrategy(refine_scale2d_stop_iter=1000)):
        state = strategy.initialize_state()
        for _ in range(3):
            strategy._update_state(params, state, info, packed=False)
        results.append(state)
    for key in ("grad2d", "count"):
        assert torch.allclose(results[0][key], results[1][key], rtol=1e-6, atol=1e-7), key
    if cameras == 1:  # splatfacto renders one camera a step: bit-identical
        assert all(torch.equal(results[0][k], results[1][k]) for k in ("grad2d", "count", "radii"))
    else:  # gsplat writes radii[ids] = max(...) with repeated ids (one write wins); ours is the true maximum
        assert torch.equal(results[1]["radii"], (radii / 64.0).amax(0))
        assert (results[1]["radii"] >= results[0]["radii"]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(37, 29), (11, 11), (540, 960), (1080, 1920), (61, 97), "real"])
def test_cuda_loss_equals_reference(size):
    from argp_ns.cuda import loss as kernel

    if not kernel.available():
        pytest.skip(kernel.unavailable_reason())
    gt, render = real_pair() if size == "real" else image_pair(*size, seed=11)
    gt, render = gt.float().cuda(), render.float().cuda()
    lam = 0.2
    ours_in, ref_in = render.clone().requires_grad_(True), render.clone().requires_grad_(True)
    loss, stats = training_loss(gt, ours_in, lam)
    ref, ref_stats = loss_reference(gt, ref_in, lam)
    assert abs(float(loss) - float(ref)) < 1e-5
    assert torch.allclose(stats, ref_stats, atol=1e-5)
    loss.backward()
    ref.backward()
    diff = float((ours_in.grad - ref_in.grad).abs().max())
    assert diff < 1e-5  # the bar, absolute
    assert diff <= 1e-3 * float(ref_in.grad.abs().max())  # and relative to the gradient's scale (~1 / pixels)
