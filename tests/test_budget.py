"""Budgets (--pipeline.model.budget N, argp-ns prune --budget N): the arithmetic, exact landing for every rule,
refusals, the per-pixel win counts of the score pass, the -big methods, and budget runs end to end on the CPU."""

import subprocess

import pytest
import torch
from test_scores import enumerate_pixels, scene_with_ties, views_for
from test_strategy import assert_aligned, make_params

from argp_ns.scores import ScoreSpec, family_score
from argp_ns.scoring import score_views
from argp_ns.options import IRP_PRESETS
from argp_ns.strategy import (ArgpStrategy, PruneError, SafeguardStrategy, check_budget, irp_final_count,
                              solve_recover_ratio, topk_ranking)

RULES = ("safeguard", "efficientgs", "lightgaussian", "minisplatting", "radsplat")


def released(**kwargs) -> ArgpStrategy:
    """ArgpStrategy with the official code's schedule (rounds 12k..27k every 3,000, the released ratios, pure AOP),
    which these tests were written against; ``kwargs`` override it."""
    return ArgpStrategy(**{"irp_every": 3000, "irp_last": 27000, "irp_preset": "released", "aop_opacity_floor": 0.0, **kwargs})


# --- ARGP: the schedule's arithmetic ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset,fraction", [("balanced", 0.229265), ("released", 0.148618), ("earlier", 0.203953)])
def test_final_count_of_the_presets_and_its_inverse(preset, fraction):
    m, r = IRP_PRESETS[preset]
    later = 4  # six rounds (default 12k..22k, published 12k..27k): R_1 deletes, 4 more rounds after it
    exact = irp_final_count(1.0, m, m, r, later)
    assert exact == pytest.approx(fraction, abs=1e-6)
    assert solve_recover_ratio(1.0, m, m, later, exact) == pytest.approx(r, abs=1e-9)
    counts = [irp_final_count(1.0, m, m, x / 100, later) for x in range(101)]
    assert all(b > a for a, b in zip(counts, counts[1:]))  # rises with r: the bisection's premise
    assert counts[-1] == pytest.approx(1.0)
    assert solve_recover_ratio(1.0, m, m, later, counts[0] / 2) == 0.0  # below reach: every candidate deleted


def run_rounds(strat: ArgpStrategy, n: int, seed: int = 0):
    """Every IRP round on n synthetic Gaussians with Adam optimizers and random recovery scores; returns
    (params, optimizers, state, count after each round, recover ratios in force at each deleting round)."""
    params, optimizers = make_params(n, seed=seed)
    state = strat.initialize_state()
    state["tag"] = torch.arange(n)  # a per-Gaussian state tensor: must stay aligned through remove()
    g = torch.Generator().manual_seed(seed + 1)
    counts = []
    rounds = strat.irp_rounds()
    for i, step in enumerate(rounds):
        scores = {"recovery": torch.rand(params["means"].shape[0], generator=g)} if strat.scores_due(step) else None
        strat.score_round(params, optimizers, state, step, scores)
        assert_aligned(params, optimizers, state)
        for opt in optimizers.values():  # new candidates' moments zeroed, as without a budget
            p = opt.param_groups[0]["params"][0]
            assert (opt.state[p]["exp_avg"][state["irp_candidates"]] == 0).all()
        counts.append(params["means"].shape[0])
    return params, optimizers, state, counts


@pytest.mark.parametrize("preset", ["released", "earlier"])
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2, 0.3, 0.6])
def test_argp_budget_lands_exactly_through_the_rounds(preset, fraction):
    n0 = 20_000
    budget = int(fraction * n0)
    m, r = IRP_PRESETS[preset]
    strat = released(refine_stop_iter=12000, mark_ratio=m, recover_ratio=r, budget=budget)
    _, _, state, counts = run_rounds(strat, n0)
    assert counts[-1] == budget
    assert counts[0] == n0 and all(b <= a for a, b in zip(counts, counts[1:]))
    # the rounds keep their shape: the count before the last round is the solved schedule's, within quantile ties
    r0 = solve_recover_ratio(n0, m * n0, m, len(strat.irp_rounds()) - 2, budget)
    expected = n0
    c = m * n0
    for _ in strat.irp_rounds()[1:-1]:
        expected, c = expected - (1 - r0) * c, m * (expected - c)
    assert counts[-2] == pytest.approx(expected, rel=0.01)
    assert not state["irp_candidates"].any()
    assert [e["kept"] for e in state["events"]] == counts[1:]


def test_argp_budget_last_round_deletes_the_lowest_scored_candidates():
    strat = released(refine_stop_iter=12000, irp_start=12000, irp_every=3000, irp_last=15000, budget=700)
    params, optimizers = make_params(1000, seed=4)
    state = strat.initialize_state()
    strat.score_round(params, optimizers, state, 12000, None)
    cand = state["irp_candidates"].clone()
    params["means"].data[:, 0] = torch.arange(1000).float()  # identity tag
    score = torch.rand(1000, generator=torch.Generator().manual_seed(5))
    strat.score_round(params, optimizers, state, 15000, {"recovery": score})
    c_ids = torch.nonzero(cand)[:, 0]
    deleted = set(c_ids[torch.sort(score[c_ids]).indices[:300]].tolist())
    assert set(params["means"][:, 0].long().tolist()) == set(range(1000)) - deleted
    assert_aligned(params, optimizers, state)


def test_argp_budget_at_or_above_the_count_is_aop_only(capsys):
    strat = released(refine_stop_iter=12000, budget=5000, verbose=True)
    _, _, state, counts = run_rounds(strat, 4000)
    assert counts == [4000] * len(strat.irp_rounds()) and not state.get("events")
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["argp_ns: step 12000: 4,000 Gaussians after densification, within the budget 5,000: no IRP deletion (AOP only)"]


def test_argp_budget_below_reach_says_so(capsys):
    strat = released(refine_stop_iter=12000, budget=10, verbose=True)  # the floor is about 0.3^5 = 0.24 %
    _, _, _, counts = run_rounds(strat, 20_000)
    out = capsys.readouterr().out
    assert "below the" in out and "only" in out and "above the budget 10" in out
    assert 10 < counts[-1] < 0.005 * 20_000


def test_argp_budget_config_errors_are_one_line():
    for kwargs, text in (({"budget": -1}, "budget must be a positive integer"),
                         ({"budget": 100, "irp_last": 12000}, "at least two IRP rounds")):
        with pytest.raises(ValueError, match=text) as err:
            released(refine_stop_iter=12000, **kwargs).check_config(30000)
        assert "\n" not in str(err.value)
    released(refine_stop_iter=12000, budget=100).check_config(30000)


# --- ARGP with the SafeguardGS prune as its final round ----------------------------------------------------------
def tagged_rounds(strat: ArgpStrategy, n: int, last_scores):
    """The IRP rounds of ``strat`` on n tagged Gaussians (``means[:, 0]`` = original index), random recovery scores
    before the last round and ``last_scores(ids)`` (totals of the live Gaussians) at it. Returns (ids alive before
    the last round, ids kept, count after each round, events)."""
    params, optimizers = make_params(n, seed=8)
    params["means"].data[:, 0] = torch.arange(n).float()
    state, counts, g = strat.initialize_state(), [], torch.Generator().manual_seed(9)
    rounds = strat.irp_rounds()
    for step in rounds:
        live = params["means"][:, 0].long()
        scores = {"recovery": torch.rand(live.numel(), generator=g)} if strat.scores_due(step) else None
        if step == rounds[-1]:
            scores.update(last_scores(live))
            before = live.tolist()
        strat.score_round(params, optimizers, state, step, scores)
        assert_aligned(params, optimizers, state)
        counts.append(params["means"].shape[0])
    return before, params["means"][:, 0].long().tolist(), counts, state["events"]


def test_final_round_safeguard_keeps_the_topk_union():
    n = 5000
    union = torch.rand(n, generator=torch.Generator().manual_seed(3)) < 0.08
    totals = lambda live: {"keep": union[live]}  # noqa: E731
    _, _, irp_counts, _ = tagged_rounds(released(refine_stop_iter=12000), n, totals)
    before, kept, counts, events = tagged_rounds(released(refine_stop_iter=12000, final_round="safeguard"), n, totals)
    assert counts[:-1] == irp_counts[:-1]  # the rounds before the last are IRP's
    assert kept == [i for i in before if union[i]]  # exactly the union among the live ones, order kept
    assert [e["rule"] for e in events] == ["irp"] * (len(events) - 1) + ["safeguard"]
    strat = released(refine_stop_iter=12000, final_round="safeguard")
    assert strat.next_prune(24000) == (27000, "safeguard") and strat.next_prune(20000) == (21000, "irp")


@pytest.mark.parametrize("budget", [400, 1500])
def test_final_round_safeguard_budget_keeps_the_best_by_wins(budget):
    n = 20_000
    g = torch.Generator().manual_seed(11)
    wins = torch.where(torch.rand(n, generator=g) < 0.05, torch.randint(1, 4, (n,), generator=g), 0)
    sum_score = torch.rand(n, generator=g).double()
    totals = lambda live: {"keep": wins[live] > 0, "wins": wins[live], "sum_score": sum_score[live]}  # noqa: E731
    before, kept, counts, events = tagged_rounds(
        released(refine_stop_iter=12000, final_round="safeguard", budget=budget), n, totals)
    assert len(before) > budget and counts[-1] == budget and events[-1]["rule"] == "safeguard"
    best = sorted(before, key=lambda i: (-int(wins[i]), -float(sum_score[i]), i))[:budget]
    assert kept == sorted(best)


def test_the_safeguard_final_round_scores_without_the_recovery_walk():
    for final, step, recovery in (("irp", 27000, True), ("safeguard", 24000, True), ("safeguard", 27000, False)):
        strategy = released(refine_stop_iter=12000, final_round=final, top_k=4)
        assert strategy.pass_options(step) == {"spec": ScoreSpec(), "k": 4, "tile_scope": False, "recovery": recovery}


def test_topk_ranking_orders_by_wins_then_summed_score_then_index():
    s = {"wins": torch.tensor([3, 0, 3, 1, 0]), "sum_score": torch.tensor([0.1, 0.9, 0.5, 0.2, 0.9]).double()}
    assert topk_ranking(s).tolist() == [2, 0, 3, 1, 4]


def test_final_round_config_errors_are_one_line():
    for kwargs, text in (({"final_round": "lightgaussian"}, "final_round must be irp or safeguard"),
                         ({"final_round": "safeguard", "top_k": 0}, "top_k must be >= 1")):
        with pytest.raises(ValueError, match=text) as err:
            released(refine_stop_iter=12000, **kwargs).check_config(30000)
        assert "\n" not in str(err.value)


# --- SafeguardGS and the baselines ---------------------------------------------------------------------------
def synthetic_scores(n: int, seed: int = 0, union: int = 300):
    g = torch.Generator().manual_seed(seed)
    wins = torch.zeros(n, dtype=torch.long)
    winners = torch.randperm(n, generator=g)[:union]
    wins[winners] = torch.randint(1, 6, (union,), generator=g)  # few distinct values: ties broken by sum_score
    return {"sum_w": torch.rand(n, generator=g).double(), "max_w": torch.rand(n, generator=g),
            "sum_opacity": torch.rand(n, generator=g).double() * 10, "hits": torch.randint(0, 50, (n,), generator=g),
            "keep": wins > 0, "keep_tile": torch.zeros(n, dtype=torch.bool), "wins": wins,
            "sum_score": torch.rand(n, generator=g).double()}


def expected_kept(method: str, params, scores, budget: int) -> set:
    """The budget best by each rule's importance, from plain Python sorting."""
    n = scores["sum_w"].numel()
    if method in ("safeguard", "efficientgs"):
        key = lambda i: (-int(scores["wins"][i]), -float(scores["sum_score"][i]), i)  # noqa: E731
    elif method == "lightgaussian":
        vol = params["scales"].detach().exp().prod(-1)
        sig = scores["sum_opacity"] * (vol / torch.quantile(vol, 0.9)) ** 0.1
        key = lambda i: (-float(sig[i]), i)  # noqa: E731
    else:
        imp = scores["sum_w" if method == "minisplatting" else "max_w"]
        key = lambda i: (-float(imp[i]), i)  # noqa: E731
    return set(sorted(range(n), key=key)[:budget])


@pytest.mark.parametrize("method", RULES)
@pytest.mark.parametrize("budget", [1, 150, 300, 450, 999])
def test_rule_budget_keeps_exactly_the_best(method, budget):
    n = 1000
    params, optimizers = make_params(n, seed=6)
    params["scales"].data = torch.randn(n, 3, generator=torch.Generator().manual_seed(7)) * 0.3 - 3
    scores = synthetic_scores(n)
    strat = SafeguardStrategy(prune_method=method, budget=budget)
    mask = strat.prune_mask(params, scores)
    kept = set(torch.nonzero(~mask)[:, 0].tolist())
    assert kept == expected_kept(method, params, scores, budget)
    if method in ("safeguard", "efficientgs"):
        union = set(torch.nonzero(scores["keep"])[:, 0].tolist())
        assert union <= kept if budget >= len(union) else kept <= union
    state = strat.initialize_state()
    params["means"].data[:, 0] = torch.arange(n).float()
    events = strat.score_round(params, optimizers, state, strat.prune_step, scores)
    assert events[0]["kept"] == budget and set(params["means"][:, 0].long().tolist()) == kept
    assert_aligned(params, optimizers, state)


def test_minisplatting_budget_with_sampling_keeps_budget():
    n = 1000
    params, _ = make_params(n)
    scores = synthetic_scores(n)
    mask = SafeguardStrategy(prune_method="minisplatting", minisplatting_sampling=True, budget=321).prune_mask(params, scores)
    assert int((~mask).sum()) == 321


@pytest.mark.parametrize("budget", [1000, 5000])
def test_rule_budget_not_below_the_count_removes_nothing(budget, capsys):
    params, optimizers = make_params(1000)
    strat = SafeguardStrategy(budget=budget, verbose=True)
    state = strat.initialize_state()
    assert strat.score_round(params, optimizers, state, strat.prune_step, synthetic_scores(1000)) == []
    assert params["means"].shape[0] == 1000 and not state.get("events")
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"argp_ns: step 20000: safeguard: budget {budget:,} is not below the current count 1,000; nothing was removed"]


def test_budget_refusals_are_one_line():
    for budget, n, text in ((0, 10, "positive integer, got 0"), (-3, 10, "positive integer, got -3"),
                            (10, 10, "not below the current count 10"), (11, 10, "budget 11 is not below")):
        with pytest.raises(PruneError, match=text) as err:
            check_budget(budget, n, "radsplat")
        assert "\n" not in str(err.value)
    check_budget(9, 10, "radsplat")
    for kwargs, text in (({"budget": -1}, "budget must be a positive integer"),
                         ({"budget": 10}, "budget 10 is below the floor of 100 Gaussians"),
                         ({"budget": 100, "topk_scope": "tile"}, "does not apply to topk_scope tile")):
        with pytest.raises(ValueError, match=text) as err:
            SafeguardStrategy(**kwargs).check_config(30000)
        assert "\n" not in str(err.value)
    SafeguardStrategy(budget=100, topk_scope="tile", prune_method="radsplat").check_config(30000)


# --- the score pass: per-pixel wins and summed scores --------------------------------------------------------------
@pytest.mark.parametrize("code,k", [(36, 1), (4, 1), (36, 3)])
def test_wins_and_summed_scores_match_brute_force(code, k):
    means, quats, scales, opac, sh, vm, K, W, H = scene_with_ties()
    views = views_for(vm, K, W, H, 0)
    spec = ScoreSpec.from_code(code)
    n = means.shape[0]
    wins, sum_score = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.float64)
    for view in views:
        pixels, proj, cols = enumerate_pixels(means, quats, scales, opac, sh, view)
        for (x, y), lst in pixels.items():
            if not lst:
                continue
            ids = [i for i, *_ in lst]
            a = torch.stack([t[1] for t in lst])
            T = torch.stack([t[3] for t in lst])
            dist = (proj["means2d"][0, ids] - torch.tensor([x + 0.5, y + 0.5])).norm(dim=-1)
            s = family_score(spec, proj["opacities"][0, ids], a, T, dist, cols[ids], view.image[y, x][None])
            for j in sorted(range(len(ids)), key=lambda j: (-s[j].item(), j))[:k]:
                wins[ids[j]] += 1
            for j, i in enumerate(ids):
                sum_score[i] += s[j].item()
    res = score_views(means, quats, scales, opac, sh, 1, views, spec, k=k, backend="torch")
    assert torch.equal(res.totals["wins"], wins)
    assert torch.equal(res.totals["keep"], wins > 0)
    assert torch.allclose(res.totals["sum_score"], sum_score, rtol=1e-5, atol=1e-7)


# --- the -big methods -----------------------------------------------------------------------------------------------
def test_big_methods_use_splatfacto_big_settings():
    from nerfstudio.configs.method_configs import all_methods
    from nerfstudio.plugins.registry import discover_methods

    methods, _ = discover_methods()
    stock, big = all_methods["splatfacto"], all_methods["splatfacto-big"]
    changed = {f: getattr(big.pipeline.model, f) for f in vars(big.pipeline.model)
               if getattr(big.pipeline.model, f) != getattr(stock.pipeline.model, f)}
    assert changed == {"cull_alpha_thresh": 0.005, "densify_grad_thresh": 0.0005}  # nerfstudio 1.1.5
    for name, base_name in (("splatfacto-argp-big", "splatfacto-argp"), ("splatfacto-safeguard-big", "splatfacto-safeguard")):
        cfg, base = methods[name], methods[base_name]
        assert cfg.method_name == name and type(cfg.pipeline.model) is type(base.pipeline.model)
        for field, value in changed.items():
            assert getattr(cfg.pipeline.model, field) == value
        for key, opt in big.optimizers.items():
            assert cfg.optimizers[key]["optimizer"].lr == opt["optimizer"].lr, key
        assert base.optimizers["bilateral_grid"]["optimizer"].lr == stock.optimizers["bilateral_grid"]["optimizer"].lr
        assert cfg.max_num_iterations == big.max_num_iterations
    assert methods["splatfacto-argp-big"].pipeline.model.reset_opacity_value == 2 * 0.005  # splatfacto-big's reset
    # AOP's floor is each base's own absolute cull: splatfacto's 0.1, splatfacto-big's 0.005
    assert methods["splatfacto-argp"].pipeline.model.aop_opacity_floor == stock.pipeline.model.cull_alpha_thresh == 0.1
    assert methods["splatfacto-argp-big"].pipeline.model.aop_opacity_floor == big.pipeline.model.cull_alpha_thresh
    out = subprocess.run(["ns-train", "--help"], capture_output=True, text=True, check=True).stdout
    assert "splatfacto-argp-big" in out and "splatfacto-safeguard-big" in out


# --- end to end on the CPU: ns-train and argp-ns prune with a budget ----------------------------------------------
@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    """The demo scene, smaller than the e2e tests' (32 px, 8 train / 2 test views, 400 seed points): three score
    passes per run on the twin stay short."""
    from argp_ns.demo_scene import make_demo_scene

    return make_demo_scene(tmp_path_factory.mktemp("small"), size=32, n_train=8, n_test=2, n_points=400)


def final_count(config) -> int:
    ckpt = torch.load(sorted((config.parent / "nerfstudio_models").glob("*.ckpt"))[-1], map_location="cpu")
    return ckpt["pipeline"]["_model.gauss_params.means"].shape[0]


@pytest.mark.slow
def test_argp_budget_run_lands_on_budget(small_scene, tmp_path):
    from test_e2e_cpu import train

    config, log = train("splatfacto-argp", small_scene, tmp_path, extra=["--pipeline.model.budget=150", "--pipeline.model.report-psnr=off"])
    assert "budget 150 from" in log and "recover ratio" in log, log[-2000:]
    assert log.count("irp removed") == 2 and "kept 150\n" in log
    assert final_count(config) == 150


@pytest.mark.slow
def test_argp_with_a_safeguard_final_round_lands_on_budget(small_scene, tmp_path):
    from test_e2e_cpu import train

    config, log = train("splatfacto-argp", small_scene, tmp_path, extra=[
        "--pipeline.model.budget=150", "--pipeline.model.final-round=safeguard", "--pipeline.model.report-psnr=off"])
    assert log.count("irp removed") == 1 and "safeguard removed" in log and "kept 150\n" in log, log[-2000:]
    assert final_count(config) == 150


@pytest.fixture(scope="module")
def safeguard_budget_run(small_scene, tmp_path_factory):
    from test_e2e_cpu import train

    out = tmp_path_factory.mktemp("sg")
    return train("splatfacto-safeguard", small_scene, out, extra=["--pipeline.model.budget=150", "--pipeline.model.report-psnr=off"])


@pytest.mark.slow
def test_safeguard_budget_run_lands_on_budget(safeguard_budget_run):
    config, log = safeguard_budget_run
    assert "safeguard removed" in log and "kept 150\n" in log, log[-2000:]
    assert final_count(config) == 150


@pytest.mark.slow
def test_posthoc_prune_budget_lands_and_refuses(safeguard_budget_run, tmp_path):
    from test_e2e_cpu import ENV

    config, _ = safeguard_budget_run
    prune = lambda out, *flags: subprocess.run(  # noqa: E731
        ["argp-ns", "prune", "--load-config", str(config), "--output-dir", str(out), "--score-backend", "torch", *flags],
        env=ENV, capture_output=True, text=True)
    for flags, text in ((("--budget", "150"), "budget 150 is not below the current count 150"),
                        (("--budget", "-2"), "--budget must be a positive integer (0: off), got -2")):
        proc = prune(tmp_path / "refused", *flags)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert text in proc.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "refused").exists()
    proc = prune(tmp_path / "pruned", "--method", "efficientgs", "--budget", "100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "150 -> 100 Gaussians" in proc.stdout
    assert final_count(next((tmp_path / "pruned").rglob("config.yml"))) == 100
