"""splatfacto-mcmc: the MCMC moves against their formulas, the cap, optimizer alignment, and a tiny CPU run."""

import math

import pytest
import torch

from argp_ns import mcmc_ops
from argp_ns.strategy import McmcStrategy


def brute_relocation(o: float, s: torch.Tensor, n: int):
    """The paper's Eq. 9 as written: o' = 1 - (1 - o)^(1/n), s' = o s / sum_i sum_k C(i-1,k) (-1)^k / sqrt(k+1) o'^(k+1)."""
    new_o = 1.0 - (1.0 - o) ** (1.0 / n)
    denom = sum(math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1) * new_o ** (k + 1) for i in range(1, n + 1) for k in range(i))
    return new_o, o * s / denom


@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
def test_relocation_matches_the_double_sum(n):
    o = torch.tensor([0.05, 0.3, 0.7, 0.95])
    s = torch.rand(4, 3) + 0.1
    new_o, new_s = mcmc_ops.relocation(o, s, torch.full((4,), n))
    for i in range(4):
        eo, es = brute_relocation(float(o[i]), s[i].double(), n)
        assert new_o[i].item() == pytest.approx(eo, rel=1e-5)
        assert torch.allclose(new_s[i].double(), es, rtol=1e-5)
    if n == 1:  # one copy is the Gaussian itself
        assert torch.allclose(new_o, o) and torch.allclose(new_s, s, rtol=1e-5)


def setup(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.randn(n, 3, generator=g)),
        "scales": torch.nn.Parameter(torch.randn(n, 3, generator=g) - 3),
        "quats": torch.nn.Parameter(torch.randn(n, 4, generator=g)),
        "opacities": torch.nn.Parameter(torch.randn(n, generator=g)),
        "features_dc": torch.nn.Parameter(torch.randn(n, 3, generator=g)),
    })
    opts = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    for p in params.values():  # one step so that Adam has moments
        p.grad = torch.ones_like(p)
    for o in opts.values():
        o.step()
    return params, opts


def aligned(params, opts):
    for name, p in params.items():
        opt = opts[name]
        assert opt.param_groups[0]["params"][0] is p
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape


def test_relocate_moves_dead_onto_live_and_zeroes_both_moments():
    params, opts = setup(200)
    with torch.no_grad():
        params["opacities"][:50] = -10.0  # dead
    dead = torch.sigmoid(params["opacities"]) <= 0.005
    before = params["features_dc"].detach().clone()
    moved = mcmc_ops.relocate(params, opts, dead, 0.005, torch.Generator().manual_seed(1))
    assert moved == 50 and params["means"].shape[0] == 200
    aligned(params, opts)
    assert (torch.sigmoid(params["opacities"]) > 0.005).all()  # every row now carries a live Gaussian's copy
    live_rows = {tuple(r) for r in before[50:].tolist()}
    assert all(tuple(r) in live_rows for r in params["features_dc"][:50].tolist())
    assert (opts["features_dc"].state[params["features_dc"]]["exp_avg"][:50] == 0).all()


def test_add_grows_with_zero_moments_and_conserves_the_split_opacity():
    params, opts = setup(100)
    o_before = torch.sigmoid(params["opacities"]).detach().clone()
    mcmc_ops.add(params, opts, 30, 0.005, torch.Generator().manual_seed(2))
    assert params["means"].shape[0] == 130
    aligned(params, opts)
    assert (opts["means"].state[params["means"]]["exp_avg"][100:] == 0).all()
    o_after = torch.sigmoid(params["opacities"]).detach()
    changed = (o_after[:100] - o_before).abs() > 1e-6
    # a Gaussian drawn d times is split into d + 1 copies of opacity 1 - (1 - o)^(1/(d+1)): their joint coverage is o
    for i in torch.nonzero(changed).flatten().tolist()[:10]:
        copies = 1 + int((params["means"][100:] == params["means"][i]).all(-1).sum())
        assert 1 - (1 - o_after[i]) ** copies == pytest.approx(float(o_before[i]), abs=1e-5)


def test_noise_moves_only_near_transparent_gaussians():
    params, _ = setup(2)
    with torch.no_grad():
        params["opacities"][:] = torch.tensor([-12.0, 6.0])
    before = params["means"].detach().clone()
    mcmc_ops.inject_noise(params, 1e3, torch.Generator().manual_seed(0))
    moved = (params["means"] - before).norm(dim=-1)
    assert moved[0] > 0 and moved[1] < 1e-6 * moved[0]


def test_covariances_are_rotated_squared_scales():
    q = torch.tensor([[math.cos(0.3), 0.0, 0.0, math.sin(0.3)]])  # 0.6 rad about z
    s = torch.tensor([[2.0, 1.0, 0.5]])
    c, sn = math.cos(0.6), math.sin(0.6)
    R = torch.tensor([[c, -sn, 0], [sn, c, 0], [0, 0, 1.0]])
    assert torch.allclose(mcmc_ops.covariances(q, s)[0], R @ torch.diag(s[0] ** 2) @ R.T, atol=1e-6)


def test_strategy_grows_five_percent_a_refine_step_up_to_the_cap():
    params, opts = setup(100)
    strat = McmcStrategy(budget=120, refine_start_iter=0, refine_stop_iter=1000, refine_every=10)
    state = strat.initialize_state()
    counts = []
    for step in range(1, 60):
        strat.step_post_backward(params, opts, state, step, lr=1e-4)
        counts.append(params["means"].shape[0])
    assert counts[9] == 105 and counts[19] == 110 and max(counts) == 120
    aligned(params, opts)


def test_strategy_config_errors():
    for kwargs, msg in (({"budget": -1}, "budget must be a positive integer"), ({"budget": 50}, "below the floor of 100"), ({"noise_lr": -1.0}, "noise_lr"), ({"mcmc_min_opacity": 1.0}, "mcmc_min_opacity")):
        with pytest.raises(ValueError, match=msg):
            McmcStrategy(**kwargs).check_config(1000)


@pytest.mark.parametrize("flag, value, line", [
    ("budget", -5, "budget must be a positive integer (0: off), got -5"),
    ("budget", 5, "budget 5 is below the floor of 100 Gaussians (a scene that small is degenerate)"),
    ("init_fraction", 1.5, "init_fraction must be in (0, 1], got 1.5"),
    ("init_opacity", 0.0, "init_opacity must be in (0, 1), got 0.0"),
])
def test_bad_mcmc_flags_are_one_line_config_errors(flag, value, line):
    from argp_ns.checks import ConfigError, check_model
    from argp_ns.method_config import splatfacto_mcmc

    model = splatfacto_mcmc.config.pipeline.model
    old = getattr(model, flag)
    setattr(model, flag, value)
    try:
        with pytest.raises(ConfigError) as err:
            check_model(model, 30000, "cpu")
        assert str(err.value) == line
    finally:
        setattr(model, flag, old)


def test_mcmc_initialisation_subsamples_to_the_cap_fraction():
    from argp_ns.model import SplatfactoMcmcModelConfig

    seed = (torch.randn(400, 3), torch.randint(0, 255, (400, 3), dtype=torch.uint8))
    model = SplatfactoMcmcModelConfig(budget=300, init_fraction=0.5).setup(scene_box=None, num_train_data=4, seed_points=seed)
    assert model.num_points == 150
    assert torch.allclose(torch.sigmoid(model.opacities), torch.full((150, 1), 0.5))
    assert model.strategy.cap_max == 300


@pytest.mark.gpu
def test_relocation_matches_gsplats_kernel():
    from gsplat.relocation import compute_relocation
    from gsplat.strategy.mcmc import MCMCStrategy

    g = torch.Generator().manual_seed(0)
    o = (torch.rand(1000, generator=g) * 0.98 + 0.01).cuda()
    s = (torch.rand(1000, 3, generator=g) + 0.05).cuda()
    ratios = torch.randint(1, 6, (1000,), generator=g).cuda()
    ours_o, ours_s = mcmc_ops.relocation(o, s, ratios)
    ref_o, ref_s = compute_relocation(o, s, ratios.clone(), MCMCStrategy().initialize_state()["binoms"].cuda())
    assert torch.allclose(ours_o, ref_o, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours_s, ref_s, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_mcmc_cpu_run_lands_on_its_cap_and_evaluates(demo_scene, tmp_path):
    import json
    import subprocess

    from test_e2e_cpu import ENV, train

    config, log = train("splatfacto-mcmc", demo_scene, tmp_path, extra=[
        "--pipeline.model.budget=300", "--pipeline.model.init-fraction=0.9", "--pipeline.model.stop-split-at=290"])
    assert "mcmc relocated" in log
    ckpt = torch.load(sorted((config.parent / "nerfstudio_models").glob("*.ckpt"))[-1], map_location="cpu")
    assert ckpt["pipeline"]["_model.gauss_params.means"].shape[0] == 300
    metrics = tmp_path / "m.json"
    subprocess.run(["ns-eval", "--load-config", str(config), "--output-path", str(metrics)], env=ENV, check=True)
    assert json.loads(metrics.read_text())["results"]["psnr"] > 10
