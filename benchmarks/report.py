"""The results file of shared/spec/benchmark.md: load, merge, validate, and the table and plot beside it.

Nothing here trains or imports nerfstudio, so tests and other tools can call it directly. Also a small CLI:

    python -m benchmarks.report benchmarks/results/fox-quick.json   # validate, rewrite the .md and .png
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

SCHEMA_PATH = Path(__file__).parent / "schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
BASELINE = "splatfacto"


class ResultsMismatch(SystemExit):
    """An existing results file holds runs from another GPU kind or scale: merging is refused (exit code 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


# --- load / merge -------------------------------------------------------------------------------------
def new_results(scene: str, protocol: str, scale: float, gpu: str) -> Dict[str, Any]:
    return {"scene": scene, "protocol": protocol, "scale": scale, "gpu": gpu, "date": "", "command": "", "runs": []}


def load_results(path: Path, scene: str, protocol: str, scale: float, gpu: str) -> Dict[str, Any]:
    """The existing results of this scene and protocol, or a new empty one (nothing is written here).

    Refuses, with one line, a file whose GPU kind or scale differs from this invocation's: absolute
    numbers from different GPUs or schedules must never share a table."""
    path = Path(path)
    if not path.exists():
        return new_results(scene, protocol, scale, gpu)
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ResultsMismatch(f"benchmarks: {path} is not valid JSON ({err}); not merged") from None
    old_gpu, old_scale = results.get("gpu"), results.get("scale")
    if old_gpu != gpu or old_scale is None or float(old_scale) != float(scale):
        raise ResultsMismatch(f"benchmarks: {path} holds runs on {old_gpu!r} at scale {old_scale}; this invocation is "
                              f"{gpu!r} at scale {scale}: not merged, nothing written (use another --out)")
    if results.get("scene") != scene or results.get("protocol") != protocol:
        raise ResultsMismatch(f"benchmarks: {path} is for {results.get('scene')}/{results.get('protocol')}, "
                              f"not {scene}/{protocol}: not merged, nothing written")
    return results


def run_key(run: Dict[str, Any]):
    return run["method"], run.get("variant")


def merge_run(results: Dict[str, Any], entry: Dict[str, Any], command: str, date: str) -> None:
    """Put one finished run into the results: it replaces the run of the same (method, variant) in place,
    other runs stay. ``command`` keeps every contributing command once, joined with " && "."""
    runs: List[Dict[str, Any]] = results["runs"]
    for i, run in enumerate(runs):
        if run_key(run) == run_key(entry):
            runs[i] = entry
            break
    else:
        runs.append(entry)
    commands = [c for c in results.get("command", "").split(" && ") if c]
    if command not in commands:
        commands.append(command)
    results["command"] = " && ".join(commands)
    results["date"] = date


# --- validation -----------------------------------------------------------------------------------------
_TYPES = {"object": dict, "array": list, "string": str, "null": type(None), "boolean": bool}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(value: Any, schema: Dict[str, Any], where: str = "$") -> List[str]:
    """Errors of ``value`` against the subset of JSON Schema that schema.json uses (type, enum, required,
    properties, items, minimum, exclusiveMinimum, minLength, pattern). Used where jsonschema is absent."""
    errors: List[str] = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in types):
            return [f"{where}: {value!r} is not of type {'/'.join(types)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def validate(results: Union[str, Path, Dict[str, Any]]) -> Dict[str, Any]:
    """Check a results file (path) or its content (dict) against schema.json; return the content.

    Raises ``jsonschema.ValidationError`` where jsonschema is installed, else ``ValueError`` listing the errors
    (the same rules, checked by ``schema_errors``)."""
    if not isinstance(results, dict):
        results = json.loads(Path(results).read_text())
    try:
        import jsonschema
    except ImportError:
        errors = schema_errors(results, SCHEMA)
        if errors:
            raise ValueError("results do not follow benchmarks/schema.json: " + "; ".join(errors[:10]))
        return results
    jsonschema.validate(results, SCHEMA)
    return results


# --- table and plot -------------------------------------------------------------------------------------
def baseline(results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Stock splatfacto's run (no variant), the reference of every ratio."""
    return next((r for r in results["runs"] if r["method"] == BASELINE and not r.get("variant")), None)


def run_name(run: Dict[str, Any]) -> str:
    return run["method"] + (f" ({run['variant']})" if run.get("variant") else "")


def _num(value: Optional[float], fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _ratio(value: Optional[float], base: Optional[float], is_base: bool) -> str:
    """' (0.29×)' against the baseline; nothing for the baseline itself or where either is absent."""
    if is_base or value is None or not base:
        return ""
    return f" ({value / base:.2f}×)"


def _delta(value: Optional[float], base: Optional[float], is_base: bool, fmt: str) -> str:
    if is_base or value is None or base is None:
        return ""
    return f" ({value - base:+{fmt}})"


def table(results: Dict[str, Any]) -> str:
    """Markdown table of the runs; where splatfacto ran, each cell adds the ratio (×) or difference (±) to it."""
    base = baseline(results)
    b = base or {}
    head = ["run", "PSNR", "SSIM", "LPIPS", "Gaussians final", "Gaussians peak", "train s", "it/s", "render ms",
            "FPS", "peak GPU MB", "PLY MB", "PSNR per M"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mb = lambda r: None if r.get("ply_bytes") is None else r["ply_bytes"] / 2**20  # noqa: E731
    for r in results["runs"]:
        is_base = r is base
        cells = [
            run_name(r),
            _num(r["psnr"], ".2f") + _delta(r["psnr"], b.get("psnr"), is_base, ".2f"),
            _num(r["ssim"], ".3f") + _delta(r["ssim"], b.get("ssim"), is_base, ".3f"),
            _num(r["lpips"], ".3f") + _delta(r["lpips"], b.get("lpips"), is_base, ".3f"),
            f"{r['gaussians_final']:,}" + _ratio(r["gaussians_final"], b.get("gaussians_final"), is_base),
            f"{r['gaussians_peak']:,}" + _ratio(r["gaussians_peak"], b.get("gaussians_peak"), is_base),
            _num(r["train_seconds"], ".1f") + _ratio(r["train_seconds"], b.get("train_seconds"), is_base),
            _num(r["steps_per_second"], ".1f"),
            _num(r["render_ms"], ".2f"),
            _num(r["fps"], ".0f") + _ratio(r["fps"], b.get("fps"), is_base),
            _num(r["peak_gpu_mem_mb"], ".0f") + _ratio(r["peak_gpu_mem_mb"], b.get("peak_gpu_mem_mb"), is_base),
            _num(mb(r), ".2f") + _ratio(mb(r), mb(b) if base else None, is_base),
            _num(r.get("psnr_per_million"), ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    title = (f"### {results['scene']}, {results['protocol']} protocol (scale {results['scale']}), "
             f"{results['gpu']}, {results['date']}")
    note = ("In brackets: ratio (×) or difference (±) against stock splatfacto from the same file."
            if base else "No splatfacto run in this file: no ratios.")
    return "\n".join([title, "", *lines, "", note, "", f"Command: `{results['command']}`"])


def plot(results: Dict[str, Any], path: Path) -> None:
    """PSNR against the final Gaussian count (log scale), one labelled point per run, splatfacto as a black star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = baseline(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results["runs"]:
        if r["psnr"] is None or r["gaussians_final"] <= 0:
            continue
        x, y = r["gaussians_final"], r["psnr"]
        if r is base:
            ax.scatter(x, y, marker="*", s=220, color="black", zorder=4, label="splatfacto")
            ax.axhline(y, color="black", lw=0.7, ls="--", alpha=0.5)
            ax.axvline(x, color="black", lw=0.7, ls="--", alpha=0.5)
        else:
            ax.scatter(x, y, marker="o", s=50, zorder=3)
        ax.annotate(run_name(r), (x, y), fontsize=7, xytext=(5, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("final Gaussians")
    ax.set_ylabel("PSNR (dB), held-out views")
    ax.set_title(f"{results['scene']}, {results['protocol']} x{results['scale']}, {results['gpu']}, {results['date']}",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if base is not None:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: Dict[str, Any], path: Path) -> str:
    """Validate, then write the JSON, ``.md`` table and ``.png`` plot beside it; returns the table."""
    validate(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)  # a kill mid-write never leaves half a file
    text = table(results)
    path.with_suffix(".md").write_text(text + "\n")
    plot(results, path.with_suffix(".png"))
    return text


def main(argv: Optional[List[str]] = None) -> None:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        raise SystemExit("usage: python -m benchmarks.report RESULTS.json [...]  (validate, rewrite .md and .png)")
    for p in map(Path, paths):
        print(write_outputs(validate(p), p))


if __name__ == "__main__":
    main()
