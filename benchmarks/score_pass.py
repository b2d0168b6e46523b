"""The score pass on one trained run: gsplat's forward render vs the CUDA pass vs the PyTorch twin.

    python -m benchmarks.score_pass --load-config outputs/.../config.yml [--top-k 1] [--score safeguard] [--recovery]

Times the same training views three ways (synchronised, after one warm-up each): (a) gsplat's forward
rasterization, (b) ``argp_ns.cuda`` (top-k + scene sums, + recovery with ``--recovery``), (c) the twin on the
same device. Checks that (b) and (c) keep the same Gaussians, and writes ``benchmarks/results/score-pass.json``
{gpu, date, command, gaussians, views, render_ms, kernel_ms, torch_ms, ...} (totals over the views). Where the
kernel cannot run (no GPU), ``kernel_ms`` is null.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch

from argp_ns import cuda as kernel
from argp_ns.posthoc import load_run
from argp_ns.render import rasterize
from argp_ns.scores import ScoreSpec
from argp_ns.scoring import score_views


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


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load-config", type=Path, required=True)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--score", default="safeguard")
    p.add_argument("--recovery", action="store_true")
    p.add_argument("--views", type=int, default=None, help="time only the first N training views (default: all)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score-pass.json")
    args = p.parse_args(argv)
    _, pipeline, _, _ = load_run(args.load_config)
    model = pipeline.model
    views = model.training_views()[: args.views]
    cuda = model.means.is_cuda
    spec = ScoreSpec.parse(args.score)
    sh = model.config.sh_degree
    coeffs = torch.cat((model.features_dc[:, None], model.features_rest), 1).detach()
    g = dict(means=model.means.detach(), quats=model.quats.detach(), scales=torch.exp(model.scales.detach()),
             opacities=torch.sigmoid(model.opacities.detach()).squeeze(-1))

    def render_all():
        with torch.no_grad():
            for v in views:
                rasterize(**g, colors=coeffs, viewmats=v.viewmat[None], Ks=v.K[None], width=v.width, height=v.height,
                          packed=False, sh_degree=sh, backgrounds=v.background[None])

    def score(backend, on=views):
        return lambda: score_views(g["means"], g["quats"], g["scales"], g["opacities"], coeffs, sh, on, spec,
                                   k=args.top_k, recovery=args.recovery, backend=backend)

    render_ms, _ = timed(render_all, cuda)
    torch_ms, twin_res = timed(score("torch"), cuda, warmup=score("torch", views[:1]))
    kernel_ms, same, rel = None, None, None
    if cuda and kernel.available():
        kernel_ms, k_res = timed(score("cuda"), cuda)
        same = bool(torch.equal(k_res.totals["keep"], twin_res.totals["keep"]))
        if args.recovery:
            a, b = k_res.totals["recovery"], twin_res.totals["recovery"]
            rel = float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
    n, nv = model.num_points, len(views)
    result = {
        "gpu": torch.cuda.get_device_name() if cuda else "cpu", "date": datetime.date.today().isoformat(),
        "command": "python -m benchmarks.score_pass " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "gaussians": n, "views": nv, "render_ms": round(render_ms, 3),
        "kernel_ms": None if kernel_ms is None else round(kernel_ms, 3), "torch_ms": round(torch_ms, 3),
        "kernel_over_render": None if kernel_ms is None else round(kernel_ms / render_ms, 3),
        "torch_over_kernel": None if kernel_ms is None else round(torch_ms / kernel_ms, 2),
        "kernel_ms_per_million_per_view": None if kernel_ms is None else round(kernel_ms / nv / (n / 1e6), 3),
        "kept_identical": same, "kept": int(twin_res.totals["keep"].sum()), "top_k": args.top_k, "score": spec.name,
        "recovery": args.recovery, "recovery_max_diff_over_max": rel,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
