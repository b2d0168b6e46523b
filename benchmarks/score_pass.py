"""The score pass on one trained run: gsplat's forward render vs the CUDA pass vs the PyTorch twin.

    python -m benchmarks.score_pass --load-config outputs/.../config.yml [--case 1:safeguard --case 4:57 ...]
        [--recovery] [--views N] [--check-views M]

Times the same training views three ways (synchronised, after one warm-up each): (a) gsplat's forward
rasterization, (b) ``argp_ns.cuda`` (top-k + scene sums, + recovery with ``--recovery``), (c) the twin on the
same device. Each ``--case K:SCORE`` is one top-k pass (SCORE: a name, a bitmask code or factors, see
``ScoreSpec.parse``); the first case is timed three ways on all views, the others (and ``--recovery``, a
k = 1 safeguard pass with the recovery score) compare kernel and twin on the first ``--check-views`` views.
Each case reports whether both keep the same Gaussians and the largest difference of the scene-level sums
(a budget's wins and sum_score among them) and of the recovery score over their largest value. Writes
``benchmarks/results/score-pass.json`` {gpu, date, command, gaussians, views, render_ms, then the first case's
numbers, cases: [...]}, rewritten after every case so that a run cut short keeps what it measured. Without a
GPU kernel, kernel numbers are null.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from argp_ns import cuda as kernel
from argp_ns.posthoc import load_run
from argp_ns.render import rasterize
from argp_ns.scores import ScoreSpec
from argp_ns.scoring import ScorePassResult, score_views

SUMS = ("sum_w", "max_w", "hits", "sum_opacity", "wins", "sum_score")


def timed(fn, cuda: bool, warmup=None) -> Tuple[float, Any]:
    """(milliseconds of fn() after one warm-up call (``warmup``, else fn itself), synchronised; its result)."""
    (warmup or fn)()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0), out


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) if b.numel() else 0.0


def compare(k_res: ScorePassResult, t_res: ScorePassResult, recovery: bool) -> Dict[str, Any]:
    """Kept sets identical?, kept counts, and the max relative difference of each scene-level sum."""
    out: Dict[str, Any] = {"kept_identical": bool(torch.equal(k_res.totals["keep"], t_res.totals["keep"])),
                           "kept": int(t_res.totals["keep"].sum())}
    out["sums_max_rel"] = {s: max_rel(k_res.totals[s], t_res.totals[s]) for s in SUMS}
    out["recovery_max_diff_over_max"] = max_rel(k_res.totals["recovery"], t_res.totals["recovery"]) if recovery else None
    return out


def parse_case(text: str) -> Tuple[int, ScoreSpec]:
    """'K:SCORE' -> (k, spec); k >= 1."""
    k, _, score = text.partition(":")
    if not k.isdigit() or int(k) < 1 or not score:
        raise argparse.ArgumentTypeError(f"--case expects K:SCORE with K >= 1 (e.g. 4:safeguard), got {text!r}")
    return int(k), ScoreSpec.parse(score)


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load-config", type=Path, required=True)
    p.add_argument("--case", type=parse_case, action="append", default=None,
                   help="K:SCORE, repeatable (default 1:safeguard); the first is timed on all views")
    p.add_argument("--recovery", action="store_true", help="also check the ARGP recovery score (k = 1 safeguard pass)")
    p.add_argument("--views", type=int, default=None, help="use only the first N training views (default: all)")
    p.add_argument("--check-views", type=int, default=None, help="views for the cases after the first (default: all)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score-pass.json")
    args = p.parse_args(argv)
    cases = [(k, spec, False) for k, spec in (args.case or [parse_case("1:safeguard")])]
    if args.recovery:
        cases.append((1, ScoreSpec.parse("safeguard"), True))
    _, pipeline, _, _, loop = load_run(args.load_config)
    model = pipeline.model
    views = list(itertools.islice(loop.training_views(), args.views))
    check = views[: args.check_views]
    cuda = model.means.is_cuda
    has_kernel = cuda and kernel.available()
    sh = model.config.sh_degree
    coeffs = torch.cat((model.features_dc[:, None], model.features_rest), 1).detach()
    g = dict(means=model.means.detach(), quats=model.quats.detach(), scales=torch.exp(model.scales.detach()),
             opacities=torch.sigmoid(model.opacities.detach()).squeeze(-1))

    def render(on):
        def run():
            with torch.no_grad():
                for v in on:
                    rasterize(**g, colors=coeffs, viewmats=v.viewmat[None], Ks=v.K[None], width=v.width, height=v.height,
                              packed=False, sh_degree=sh, backgrounds=v.background[None])
        return run

    def score(backend, on, k, spec, recovery):
        return lambda: score_views(g["means"], g["quats"], g["scales"], g["opacities"], coeffs, sh, on, spec,
                                   k=k, recovery=recovery, backend=backend)

    n = model.num_points
    result: Dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if cuda else "cpu", "date": datetime.date.today().isoformat(),
        "command": "python -m benchmarks.score_pass " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "gaussians": n, "views": len(views), "render_ms": round(timed(render(views), cuda)[0], 3), "cases": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, (k, spec, recovery) in enumerate(cases):
        on = views if i == 0 else check
        case: Dict[str, Any] = {"top_k": k, "score": spec.name, "code": spec.code, "recovery": recovery, "views": len(on)}
        if i > 0:
            case["render_ms"] = round(timed(render(on), cuda)[0], 3)
        render_ms = result["render_ms"] if i == 0 else case["render_ms"]
        kernel_ms = None
        if has_kernel:
            kernel_ms, k_res = timed(score("cuda", on, k, spec, recovery), cuda)
        torch_ms, t_res = timed(score("torch", on, k, spec, recovery), cuda, warmup=score("torch", on[:1], k, spec, recovery))
        case.update({"kernel_ms": None if kernel_ms is None else round(kernel_ms, 3), "torch_ms": round(torch_ms, 3),
                     "kernel_over_render": None if kernel_ms is None else round(kernel_ms / render_ms, 3),
                     "torch_over_kernel": None if kernel_ms is None else round(torch_ms / kernel_ms, 2),
                     "kernel_ms_per_million_per_view": None if kernel_ms is None else round(kernel_ms / len(on) / (n / 1e6), 3)})
        case.update(compare(k_res, t_res, recovery) if has_kernel else {"kept": int(t_res.totals["keep"].sum())})
        result["cases"].append(case)
        if i == 0:
            result.update({key: v for key, v in case.items() if key != "views"})
        args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps(case), flush=True)
    print(json.dumps({key: v for key, v in result.items() if key != "cases"}, indent=1))
    return result


if __name__ == "__main__":
    main()
