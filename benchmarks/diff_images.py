"""Where two trained runs differ on the held-out views: renders, error images and per-view PSNR.

    python -m benchmarks.diff_images --runs <stock>/config.yml <pruned>/config.yml --views 0,12,24 --out <dir>

Each run is loaded with nerfstudio's ``eval_setup`` (as ``ns-eval`` loads it) and renders the held-out views of the
first run's dataset (their cameras and images must be the same in every run: the same scene and split). Per view it
writes one PNG, a row per run (ground truth, render, error), and under them the signed difference of the last run's
error and the first's (red: the last run is worse there; blue: better). The error of a pixel is its mean absolute
difference over RGB, ``e = mean_c |render_c - gt_c|`` (shown x4, clipped at 1), the signed difference
``d = e_last - e_first`` (shown x8). ``diff-images.json`` holds each run's PSNR per view and the share of the view's
pixels where the last run's error is larger by more than 0.02 (about 5 levels of 255).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

WORSE = 0.02
"""A pixel counts as worse in the last run when its error is larger by more than this (about 5 levels of 255)."""


def load(config: Path):
    """The run's pipeline, loaded for evaluation (nerfstudio's ``eval_setup``, test split)."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(Path(config), test_mode="test")
    return pipeline


@torch.no_grad()
def render_views(pipeline, views: Sequence[int]) -> List[Dict[str, np.ndarray]]:
    """For each held-out view index: the ground truth and the render [H, W, 3] in [0, 1], composited as ns-eval does."""
    model = pipeline.model
    dataset = pipeline.datamanager.eval_dataset
    cameras = dataset.cameras.to(model.device)
    out = []
    for i in views:
        rendered = model.get_outputs_for_camera(cameras[i : i + 1])
        gt = dataset.get_image_float32(i).to(model.device)
        gt = model.composite_with_background(model.get_gt_img(gt), rendered["background"])
        out.append({"gt": gt[..., :3].clamp(0, 1).cpu().numpy(), "render": rendered["rgb"].clamp(0, 1).cpu().numpy()})
    return out


def error(render: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-pixel mean absolute error over RGB [H, W]."""
    return np.abs(render - gt).mean(-1)


def psnr(render: np.ndarray, gt: np.ndarray) -> float:
    mse = float(((render - gt) ** 2).mean())
    return -10.0 * math.log10(max(mse, 1e-10))


def signed_rgb(d: np.ndarray, gain: float = 8.0) -> np.ndarray:
    """Signed map to RGB: red where d > 0 (worse), blue where d < 0 (better), black at 0."""
    v = np.clip(d * gain, -1.0, 1.0)
    return np.stack([np.clip(v, 0, 1), np.zeros_like(v), np.clip(-v, 0, 1)], -1)


def view_sheet(rows: List[Dict[str, np.ndarray]], errors: List[np.ndarray]) -> np.ndarray:
    """One image: per run (gt, render, its error x4), then the signed difference of the last run's error and the first's."""
    lines = []
    for r, e in zip(rows, errors):
        e = np.clip(e * 4.0, 0, 1)
        lines.append(np.concatenate([r["gt"], r["render"], np.repeat(e[..., None], 3, -1)], 1))
    d = errors[-1] - errors[0]
    blank = np.zeros_like(rows[0]["gt"])
    lines.append(np.concatenate([blank, signed_rgb(d), blank], 1))
    return np.concatenate(lines, 0)


def compare(configs: Sequence[Path], views: Optional[Sequence[int]], out: Path) -> Dict[str, Any]:
    """Render ``views`` (default: every held-out view) of each run, write a sheet per view and the summary."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    renders = []
    for config in configs:
        pipeline = load(config)
        n = len(pipeline.datamanager.eval_dataset)
        views = list(range(n)) if views is None else list(views)
        bad = [v for v in views if not 0 <= v < n]
        if bad:
            raise SystemExit(f"diff_images: views {bad} are not held-out views of {config} (it has {n})")
        renders.append(render_views(pipeline, views))
        del pipeline
    summary: Dict[str, Any] = {"runs": [str(c) for c in configs], "views": []}
    for j, v in enumerate(views):
        rows = [r[j] for r in renders]
        if any(r["gt"].shape != rows[0]["gt"].shape or not np.allclose(r["gt"], rows[0]["gt"], atol=1 / 255) for r in rows):
            raise SystemExit(f"diff_images: view {v} has another image in some run; compare runs of one scene and split")
        errors = [error(r["render"], r["gt"]) for r in rows]
        d = errors[-1] - errors[0]
        path = out / f"view-{v:03d}.png"
        Image.fromarray((view_sheet(rows, errors) * 255 + 0.5).astype(np.uint8)).save(path)
        summary["views"].append({"view": v, "psnr": [round(psnr(r["render"], r["gt"]), 3) for r in rows],
                                 "worse_share": round(float((d > WORSE).mean()), 4), "image": path.name})
    (out / "diff-images.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="config.yml of each run (the first is the reference)")
    p.add_argument("--views", default=None, help="comma-separated held-out view indices (default: all)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    missing = [c for c in args.runs if not c.is_file()]
    if missing:
        raise SystemExit(f"diff_images: no config.yml at {', '.join(map(str, missing))}")
    views = [int(v) for v in args.views.split(",")] if args.views else None
    summary = compare(args.runs, views, args.out)
    for row in summary["views"]:
        print(f"view {row['view']}: PSNR " + " / ".join(f"{x:.2f}" for x in row["psnr"]) + f", worse on {100 * row['worse_share']:.1f} % of pixels")
    return summary


if __name__ == "__main__":
    main()
