"""ARGP and SafeguardGS strategies: exact prune sets, IRP arithmetic, modes, optimizer-state alignment."""

import numpy as np
import pytest
import torch

from argp_ns.options import IRP_PRESETS
from argp_ns.strategy import ArgpStrategy, PruneError, SafeguardStrategy, prune, quantile


def released(**kwargs) -> ArgpStrategy:
    """ArgpStrategy with the official code's schedule (rounds 12k..27k every 3,000, the released ratios, pure AOP),
    which these tests were written against; ``kwargs`` override it."""
    return ArgpStrategy(**{"irp_every": 3000, "irp_last": 27000, "irp_preset": "released", "aop_opacity_floor": 0.0, **kwargs})


def make_params(n: int, seed: int = 0, opacities=None):
    g = torch.Generator().manual_seed(seed)
    params = torch.nn.ParameterDict({
        "means": torch.randn(n, 3, generator=g), "scales": torch.full((n, 3), -4.0), "quats": torch.randn(n, 4, generator=g),
        "features_dc": torch.randn(n, 3, generator=g), "features_rest": torch.zeros(n, 15, 3),
        "opacities": (torch.randn(n, 1, generator=g) if opacities is None else torch.logit(opacities)[:, None]),
    })
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    for p in params.values():
        p.grad = torch.randn_like(p)
    for opt in optimizers.values():
        opt.step()
    return params, optimizers


def assert_aligned(params, optimizers, state):
    n = params["means"].shape[0]
    for name, p in params.items():
        opt = optimizers[name]
        assert opt.param_groups[0]["params"][0] is p and p.shape[0] == n
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][key].shape == p.shape
    for v in state.values():
        if isinstance(v, torch.Tensor):
            assert v.shape[0] == n


def test_quantile_matches_torch_and_scales_past_2_24():
    x = torch.rand(1001)
    for q in (0.0, 0.01, 0.37, 0.99, 1.0):
        assert torch.isclose(quantile(x, q), torch.quantile(x, q))
    big = torch.rand(2**24 + 7, generator=torch.Generator().manual_seed(1))
    assert abs(quantile(big, 0.01).item() - np.quantile(big.double().numpy(), 0.01)) < 1e-6


def test_aop_prunes_exactly_below_the_quantile_with_ties():
    opa = torch.cat([torch.full((30,), 0.2), torch.linspace(0.01, 0.9, 970)])  # ties at and below the threshold
    params, optimizers = make_params(1000, opacities=opa)
    strat = released(prune_quantile=0.05, reset_every=3000)
    state = strat.initialize_state()
    state["extra"] = torch.arange(1000)
    act = torch.sigmoid(params["opacities"].flatten()).detach()
    expected = torch.nonzero(act >= torch.quantile(act, 0.05))[:, 0]
    removed = strat._prune_gs(params, optimizers, state, step=600)
    assert removed == 1000 - expected.numel()
    assert torch.equal(state["extra"], expected)  # exactly the kept rows, in order
    assert state["events"][-1] == {"step": 600, "rule": "aop", "removed": removed, "kept": expected.numel()}
    assert_aligned(params, optimizers, state)


@pytest.mark.parametrize("floor", [0.0, 0.03, 0.1, 0.5])
def test_aop_floor_prunes_below_the_larger_of_quantile_and_floor(floor):
    """The 5 % quantile of these opacities is about 0.054: a floor below it changes nothing, one above it rules."""
    opa = torch.linspace(0.01, 0.9, 1000)
    params, optimizers = make_params(1000, opacities=opa)
    strat = released(prune_quantile=0.05, aop_opacity_floor=floor, reset_every=3000)
    state = strat.initialize_state()
    state["extra"] = torch.arange(1000)
    act = torch.sigmoid(params["opacities"].flatten()).detach()
    expected = torch.nonzero(act >= max(float(torch.quantile(act, 0.05)), floor))[:, 0]
    assert strat._prune_gs(params, optimizers, state, step=600) == 1000 - expected.numel()
    assert torch.equal(state["extra"], expected)
    assert_aligned(params, optimizers, state)


@pytest.mark.parametrize("preset,expected", [
    ("released", [0.580, 0.454, 0.2986, 0.2167, 0.1486]),
    ("earlier", [0.675, 0.5125, 0.3744, 0.2769, 0.2040]),  # anchors-and-official-code.md: about 20.4 %
])
def test_irp_count_arithmetic_and_moments(preset, expected):
    n = 200_000
    params, optimizers = make_params(n, seed=2)
    mark_ratio, recover_ratio = IRP_PRESETS[preset]
    strat = released(refine_stop_iter=12000, mark_ratio=mark_ratio, recover_ratio=recover_ratio)
    state = strat.initialize_state()
    fractions = []
    g = torch.Generator().manual_seed(3)
    for step in strat.irp_rounds():
        scores = {"recovery": torch.rand(params["means"].shape[0], generator=g)} if strat.scores_due(step) else None
        strat.score_round(params, optimizers, state, step, scores)
        assert_aligned(params, optimizers, state)
        cand = state["irp_candidates"]
        for opt in optimizers.values():
            p = opt.param_groups[0]["params"][0]
            assert (opt.state[p]["exp_avg"][cand] == 0).all()
        if step != strat.irp_rounds()[0]:
            fractions.append(params["means"].shape[0] / n)
    assert fractions == pytest.approx(expected, abs=2e-3)
    assert not state["irp_candidates"].any()  # the last round marks none


def test_irp_keeps_the_highest_recovery_scores():
    params, optimizers = make_params(1000, seed=4)
    strat = released(refine_stop_iter=12000)
    state = strat.initialize_state()
    strat.score_round(params, optimizers, state, 12000, None)
    cand = state["irp_candidates"].clone()
    params["means"].data[:, 0] = torch.arange(1000).float()  # identity tag
    score = torch.rand(1000)
    strat.score_round(params, optimizers, state, 15000, {"recovery": score})
    kept = set(params["means"][:, 0].long().tolist())
    c_ids = torch.nonzero(cand)[:, 0]
    thresh = torch.quantile(score[cand], 0.6)
    assert kept == set(range(1000)) - {int(i) for i in c_ids if score[i] <= thresh}


def test_config_errors_are_one_line():
    for kwargs, text in (({"mark_ratio": 1.5}, "mark_ratio"), ({"irp_last": 40000}, "irp_last"), ({"irp_start": 5000}, "IRP rounds"),
                         ({"aop_opacity_floor": 1.0}, r"aop_opacity_floor must be in \[0, 1\)"),
                         ({"aop_opacity_floor": -0.1}, "aop_opacity_floor")):
        with pytest.raises(ValueError, match=text) as err:
            released(refine_stop_iter=12000, **kwargs).check_config(30000)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="top_k"):
        SafeguardStrategy(top_k=0).check_config(30000)
    with pytest.raises(ValueError, match="prune_step"):
        SafeguardStrategy(prune_step=30000).check_config(30000)


def test_prune_refuses_to_empty_the_scene():
    params, optimizers = make_params(10)
    state = {}
    with pytest.raises(PruneError, match="all 10"):
        prune(params, optimizers, state, torch.ones(10, dtype=torch.bool), 5, "test")
    assert params["means"].shape[0] == 10 and "events" not in state


def test_next_prune_skips_refine_steps_paused_after_an_opacity_reset():
    # the CPU demo schedule: refine every 25 from 50, reset every 100, pause 41 steps after it, densify to 150
    st = released(refine_start_iter=50, refine_every=25, reset_every=100, pause_refine_after_reset=41,
                      refine_stop_iter=150, irp_start=150, irp_every=50, irp_last=250)
    assert st.next_prune(60) == (75, "aop")
    assert st.next_prune(75) == (150, "irp")  # 100 and 125 fall in the pause after the reset at 100; 150 ends densification
    assert st.next_prune(250) == (None, "")
