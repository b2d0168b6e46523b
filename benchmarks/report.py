"""The results file of benchmark.md: load/merge/validate, the markdown table and the PSNR-vs-Gaussians plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

SCHEMA = json.loads((Path(__file__).parent / "schema.json").read_text())


class ResultsMismatch(SystemExit):
    """An existing results file from another GPU kind or scale: merging is refused."""


def load_results(path: Path, scene: str, protocol: str, scale: float, gpu: str) -> Dict[str, Any]:
    """The existing results of this scene/protocol, or a new empty file's content. Refuses to mix GPU kinds
    or scales (one line, nothing written)."""
    if path.exists():
        results = json.loads(path.read_text())
        if results["gpu"] != gpu or results["scale"] != scale:
            raise ResultsMismatch(f"benchmarks: {path} holds runs on {results['gpu']} at scale {results['scale']}; "
                                  f"this run is {gpu} at scale {scale}: not merged (use another --out)")
        return results
    return {"scene": scene, "protocol": protocol, "scale": scale, "gpu": gpu, "date": "", "command": "", "runs": []}


def merge_run(results: Dict[str, Any], entry: Dict[str, Any], command: str, date: str) -> None:
    """Replace the run of the same (method, variant), keep the others, record the command and date."""
    key = (entry["method"], entry.get("variant"))
    results["runs"] = [r for r in results["runs"] if (r["method"], r.get("variant")) != key] + [entry]
    commands = [c for c in results["command"].split(" && ") if c]
    if command not in commands:
        commands.append(command)
    results["command"] = " && ".join(commands)
    results["date"] = date


def validate(results: Dict[str, Any]) -> None:
    """Raise if the results do not follow schema.json (jsonschema when installed, else the required keys)."""
    try:
        import jsonschema
    except ImportError:  # offline GPU machines: check what the format requires by hand
        missing = [k for k in SCHEMA["required"] if k not in results]
        item = SCHEMA["properties"]["runs"]["items"]["required"]
        missing += [f"runs[{i}].{k}" for i, r in enumerate(results["runs"]) for k in item if k not in r]
        if missing:
            raise ValueError(f"results miss {missing}")
        return
    jsonschema.validate(results, SCHEMA)


def thirds(run: Dict[str, Any]) -> Optional[str]:
    """Steps per second in each third of training (from the run's ``step_marks``), e.g. "71 / 80 / 95"."""
    marks = {int(k): v[0] for k, v in run.get("step_marks", {}).items()}
    n = run["config"].get("max_num_iterations")
    if not marks or not n:
        return None
    cuts = [0] + [min(marks, key=lambda s: abs(s - n * i / 3)) for i in (1, 2, 3)]
    at = lambda s: 0.0 if s == 0 else marks[s]  # noqa: E731
    return " / ".join(f"{(b - a) / max(at(b) - at(a), 1e-9):.0f}" for a, b in zip(cuts, cuts[1:]))


def table(results: Dict[str, Any]) -> str:
    """Markdown table, ratios against stock splatfacto when it is present: the speed-up against a stock run
    of the same host when there is one, else (marked *) against the fastest stock run, the most conservative."""
    stock = [r for r in results["runs"] if r["method"] == "splatfacto"]
    base = min(stock, key=lambda r: r["train_seconds"]) if stock else None
    head = ("| method | PSNR | SSIM | LPIPS | Gaussians | peak | % of splatfacto | train s | speed-up | it/s | it/s by third | FPS | peak MB | PLY MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
    rows = []
    for r in results["runs"]:
        name = r["method"] + (f" ({r['variant']})" if r.get("variant") else "")
        share = f(100.0 * r["gaussians_final"] / base["gaussians_final"], ".1f") if base else "–"
        same_host = [b for b in stock if r.get("host") and b.get("host") == r["host"]]
        ref = min(same_host, key=lambda b: b["train_seconds"]) if same_host else base
        speed = f(ref["train_seconds"] / r["train_seconds"], ".2f") + ("x" if same_host else "x*") if base else "–"
        ply = None if r["ply_bytes"] is None else r["ply_bytes"] / 2**20
        rows.append(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {f(r['lpips'], '.3f')} | {r['gaussians_final']:,} | "
                    f"{r['gaussians_peak']:,} | {share} | {r['train_seconds']:.0f} | {speed} | {r['steps_per_second']:.1f} | "
                    f"{thirds(r) or '–'} | {f(r['fps'], '.0f')} | {f(r['peak_gpu_mem_mb'], '.0f')} | {f(ply, '.1f')} |")
    title = f"{results['scene']}, {results['protocol']} protocol (scale {results['scale']}), {results['gpu']}, {results['date']}"
    notes = []
    if len(stock) > 1:
        secs, psnrs = [r["train_seconds"] for r in stock], [r["psnr"] for r in stock]
        notes = ["", f"Stock splatfacto over {len(stock)} runs: {min(secs):.0f}-{max(secs):.0f} s, "
                     f"{min(psnrs):.2f}-{max(psnrs):.2f} dB. Gaussian shares are against the fastest; "
                     "speed-ups against a stock run of the same host, or (*) the fastest stock run."]
    return "\n".join([f"### {title}", "", head, *rows, *notes, "", f"Command: `{results['command']}`"])


def plot(results: Dict[str, Any], path: Path) -> None:
    """PSNR against final Gaussian count, one point per run, splatfacto marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results["runs"]:
        base = r["method"] == "splatfacto"
        ax.scatter(r["gaussians_final"], r["psnr"], marker="*" if base else "o", s=160 if base else 50,
                   color="black" if base else None, zorder=3)
        ax.annotate(r.get("variant") or r["method"], (r["gaussians_final"], r["psnr"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("final Gaussians")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{results['scene']} ({results['protocol']}, x{results['scale']}, {results['gpu']})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: Dict[str, Any], path: Path) -> str:
    """Validate, then write the JSON, the markdown table and the plot; returns the table."""
    validate(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    text = table(results)
    path.with_suffix(".md").write_text(text + "\n")
    plot(results, path.with_suffix(".png"))
    return text
