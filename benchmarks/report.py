"""The results file of benchmark.md: load/merge/validate, the markdown table and the PSNR-vs-Gaussians plot.

    python -m benchmarks.report render benchmarks/results/fox-quick.json     # rewrite the .md and .png beside it
    python -m benchmarks.report merge INTO.json FROM.json                    # append FROM's runs to INTO

Runs with a budget (``--pipeline.model.budget N`` among their flags, however they were launched) also form the
same-count table: one row per (budget, rule, training), the rule read from the method and its ``prune-method`` flag.

A row of the table is one (method, flags, training): every figure is a mean over its runs with the sample standard
deviation (n - 1) and n. A run's training is its commit, unless the file's ``alike`` list puts that commit in a group
of commits that train identically for the same flags (all methods, or its ``methods`` only); a group may also state,
per commit and method, the defaults of the flags whose default changed within it, so that a run is read as the flags
it would take at the group's last commit (``--pipeline.model.aop-opacity-floor 0.1`` given at an older commit is the
newer default, no flag)::

    "alike": [{"commits": ["c1", "c2"], "why": "c2 changed a default",
               "defaults": {"c1": {"splatfacto-argp": "--pipeline.model.aop-opacity-floor 0"},
                            "c2": {"splatfacto-argp": "--pipeline.model.aop-opacity-floor 0.1"}}},
              {"commits": ["c0", "c1", "c2"], "methods": ["splatfacto"], "why": "stock splatfacto is nerfstudio's own"}]

A row never pools runs of commits that no group declares alike, nor runs whose flags differ once so read. Speed
figures (train s, speed-up, it/s, render ms, FPS) use timed runs only. "Stock" runs are ``splatfacto`` runs without
ns-train flags (whatever their variant label); the Gaussian share is against their mean count, and a speed-up is the
ratio of the mean training time of the stock runs of a host to the row's mean on that same host, or, where the row
has no timed run on a host with a timed stock run, against the stock host with the lowest mean (marked *).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

SCHEMA = json.loads((Path(__file__).parent / "schema.json").read_text())
Run = Dict[str, Any]
Flags = Dict[str, str]
# a row: (method, flags as the group's last commit reads them, the training: a commit or an alike group's commits)
RowKey = Tuple[str, str, str]


class ResultsMismatch(SystemExit):
    """An existing results file from another GPU kind or scale: merging is refused."""


def normalize(results: Dict[str, Any]) -> Dict[str, Any]:
    """Give every run a ``repeat`` (its index among the runs of its method/variant, in file order) where a file
    written before repeats existed lacks it. Returns ``results``."""
    seen: Dict[Tuple[str, Optional[str]], int] = {}
    for r in results["runs"]:
        key = (r["method"], r.get("variant"))
        r.setdefault("repeat", seen.get(key, 0))
        seen[key] = seen.get(key, 0) + 1
    return results


def load_results(path: Path, scene: str, protocol: str, scale: float, gpu: str) -> Dict[str, Any]:
    """The existing results of this scene/protocol, or a new empty file's content. Refuses to mix GPU kinds
    or scales (one line, nothing written)."""
    if path.exists():
        results = normalize(json.loads(path.read_text()))
        if results["gpu"] != gpu or results["scale"] != scale:
            raise ResultsMismatch(f"benchmarks: {path} holds runs on {results['gpu']} at scale {results['scale']}; "
                                  f"this run is {gpu} at scale {scale}: not merged (use another --out)")
        return results
    return {"scene": scene, "protocol": protocol, "scale": scale, "gpu": gpu, "date": "", "command": "", "runs": []}


def merge_run(results: Dict[str, Any], entry: Run, command: str, date: str) -> None:
    """Append the run (numbered as the next ``repeat`` of its method/variant), record the command and date."""
    key = (entry["method"], entry.get("variant"))
    entry["repeat"] = sum((r["method"], r.get("variant")) == key for r in results["runs"])
    results["runs"].append(entry)
    commands = [c for c in results["command"].split(" && ") if c]
    for c in command.split(" && "):
        if c not in commands:
            commands.append(c)
    results["command"] = " && ".join(commands)
    results["date"] = max(results["date"], date)


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


def is_timed(run: Run) -> bool:
    """Whether the run trained alone (runs written before ``timed`` existed all did)."""
    return run.get("timed", True)


def commit_of(run: Run) -> str:
    """The run's source commit, "unknown" where none was recorded."""
    return run.get("commit") or "unknown"


def is_stock(run: Run) -> bool:
    """Stock splatfacto: the method without ns-train flags (a variant name is only a label)."""
    return run["method"] == "splatfacto" and not run["config"].get("flags")


def stock_mean_count(results: Dict[str, Any]) -> Optional[float]:
    """Stock splatfacto's mean final count over the file's stock runs (None without one)."""
    counts = [r["gaussians_final"] for r in results["runs"] if is_stock(r)]
    return statistics.fmean(counts) if counts else None


def parse_flags(text: str) -> Flags:
    """ns-train flags as {flag: value} (``--a b`` and ``--a=b``; a flag without a value maps to "")."""
    words, out, i = shlex.split(text or ""), {}, 0
    while i < len(words):
        flag, eq, value = words[i].partition("=")
        if not eq and i + 1 < len(words) and not words[i + 1].startswith("--"):
            value, i = words[i + 1], i + 1
        out[flag] = value
        i += 1
    return out


def flag_values(run: Run) -> Flags:
    """The run's own ns-train flags as {flag: value}."""
    return parse_flags(run["config"].get("flags") or "")


def alike_group(results: Dict[str, Any], run: Run) -> Optional[Dict[str, Any]]:
    """The first ``alike`` group of the results file that names the run's commit (and its method, where the group is
    limited to ``methods``), None where none does."""
    return next((g for g in results.get("alike", [])
                 if commit_of(run) in g["commits"] and run["method"] in g.get("methods", [run["method"]])), None)


def training_of(results: Dict[str, Any], run: Run) -> Tuple[str, Flags]:
    """(training, flags) of a run: the training is its commit, or its ``alike`` group's commits joined by "+"; the flags
    are ``defaults[commit][method]`` overridden by the run's own flags, less those equal to the group's last commit's
    defaults (so they read as that commit would take them)."""
    commit = commit_of(run)
    group = alike_group(results, run)
    if group is None:
        return commit, flag_values(run)
    defaults = group.get("defaults", {})
    own = {**parse_flags(defaults.get(commit, {}).get(run["method"], "")), **flag_values(run)}
    last = parse_flags(defaults.get(group["commits"][-1], {}).get(run["method"], ""))
    return "+".join(group["commits"]), {k: v for k, v in own.items() if last.get(k) != v}


def flags_text(flags: Flags) -> str:
    """The flags as one short string, ``--pipeline.model.`` left out: "aop-opacity-floor 0 irp-mode hidden"."""
    return " ".join(f"{k.removeprefix('--pipeline.model.')} {v}".strip() for k, v in flags.items())


def commits_of(runs: Sequence[Run]) -> str:
    """The commits the runs come from, in file order, joined by "+"."""
    return "+".join(dict.fromkeys(commit_of(r) for r in runs))


BUDGET_FLAG, RULE_FLAG, FINAL_FLAG = "--pipeline.model.budget", "--pipeline.model.prune-method", "--pipeline.model.final-round"


def budget_of(run: Run) -> Optional[int]:
    """The final count the run was asked for (its budget flag), None without one (or 0: off)."""
    value = flag_values(run).get(BUDGET_FLAG)
    return int(value) if value and int(value) > 0 else None


def rule_of(run: Run, flags: Optional[Flags] = None) -> str:
    """The pruning rule of a budget run: ``argp`` for splatfacto-argp(-big) (``argp+safeguard`` with a safeguard final
    round), ``mcmc`` for splatfacto-mcmc, else its prune-method (default safeguard); a ``-big`` method and any other flags (``flags``: the run's own
    unless given) are appended, so runs that train differently never share a row."""
    flags = flag_values(run) if flags is None else flags
    if run["method"].startswith("splatfacto-argp"):
        final = flags.get(FINAL_FLAG, "irp")
        rule, own = "argp" + ("" if final == "irp" else "+" + final), (BUDGET_FLAG, FINAL_FLAG)
    elif run["method"] == "splatfacto-mcmc":
        rule, own = "mcmc", (BUDGET_FLAG,)
    else:
        rule, own = flags.get(RULE_FLAG, "safeguard"), (BUDGET_FLAG, RULE_FLAG)
    rest = flags_text({k: v for k, v in flags.items() if k not in own})
    return rule + (" (big)" if run["method"].endswith("-big") else "") + (f" [{rest}]" if rest else "")


def same_count_rows(results: Dict[str, Any]) -> Dict[Tuple[int, str, str], List[Run]]:
    """Budget runs grouped by (budget, rule, training), budgets ascending, rules in order of their first run."""
    out: Dict[Tuple[int, str, str], List[Run]] = {}
    for r in results["runs"]:
        n = budget_of(r)
        if n is not None:
            training, flags = training_of(results, r)
            out.setdefault((n, rule_of(r, flags), training), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: kv[0][0]))


def same_count_table(results: Dict[str, Any]) -> Optional[str]:
    """Markdown table of the budget runs (None without any): per budget, each rule's mean ± std PSNR (and its
    difference from stock's mean), SSIM, final count and its distance from the budget, training time and render
    time (timed runs only), rules by mean PSNR within a budget."""
    grouped = same_count_rows(results)
    if not grouped:
        return None
    stock_count = stock_mean_count(results)
    stock_psnr = mean_std([r["psnr"] for r in results["runs"] if is_stock(r)])[0]
    trainings = len({k[2] for k in grouped})
    head = ("| budget | % of splatfacto | rule | n | PSNR | vs stock dB | SSIM | Gaussians | off budget | train s | "
            "render ms |\n" + "|---" * 11 + "|")
    lines = []
    for (n, rule, _), runs in sorted(grouped.items(), key=lambda kv: (kv[0][0], -statistics.fmean(r["psnr"] for r in kv[1]))):
        timed = [r for r in runs if is_timed(r)]
        psnr = statistics.fmean(r["psnr"] for r in runs)
        final = statistics.fmean(r["gaussians_final"] for r in runs)
        lines.append(
            f"| {n:,} | {'–' if stock_count is None else format(100.0 * n / stock_count, '.0f')} | "
            f"{rule}{f' @{commits_of(runs)}' if trainings > 1 else ''} | {len(runs)} | {pm([r['psnr'] for r in runs], '.2f')} | "
            f"{'–' if stock_psnr is None else format(psnr - stock_psnr, '+.2f')} | {pm([r['ssim'] for r in runs], '.3f')} | "
            f"{pm([r['gaussians_final'] for r in runs], ',.0f')} | {100.0 * (final - n) / n:+.1f} % | "
            f"{pm([r['train_seconds'] for r in timed], '.0f')} | {pm([r['render_ms'] for r in timed], '.2f')} |")
    notes = ["", "Runs with --pipeline.model.budget N, by budget; within a budget the rules by mean PSNR. \"vs stock\": "
                 "the row's mean PSNR minus stock splatfacto's mean; \"off budget\": (mean final count - N) / N; train s "
                 "and render ms over timed runs only."]
    return "\n".join(["#### Same count", "", head, *lines, *notes])


def row_key(results: Dict[str, Any], run: Run) -> RowKey:
    """The table row of a run: method, flags, training (a row never mixes commits that are not declared alike)."""
    training, flags = training_of(results, run)
    return run["method"], flags_text(flags), training


def rows(results: Dict[str, Any]) -> Dict[RowKey, List[Run]]:
    """Runs without a budget grouped by row, rows in order of their first run (budget runs have the same-count
    table and plot)."""
    out: Dict[RowKey, List[Run]] = {}
    for r in results["runs"]:
        if budget_of(r) is None:
            out.setdefault(row_key(results, r), []).append(r)
    return out


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (None where there are too few values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def pm(values: Sequence[Optional[float]], fmt: str) -> str:
    """ "mean ± std" of the values that are not None ("mean" for one value, "–" for none)."""
    mean, std = mean_std([v for v in values if v is not None])
    if mean is None:
        return "–"
    return format(mean, fmt) + ("" if std is None else " ± " + format(std, fmt))


def thirds(run: Run) -> Optional[List[float]]:
    """Steps per second in each third of training, from the run's ``step_marks``."""
    marks = {int(k): v[0] for k, v in run.get("step_marks", {}).items()}
    n = run["config"].get("max_num_iterations")
    if not marks or not n:
        return None
    cuts = [0] + [min(marks, key=lambda s: abs(s - n * i / 3)) for i in (1, 2, 3)]
    at = lambda s: 0.0 if s == 0 else marks[s]  # noqa: E731
    return [(b - a) / max(at(b) - at(a), 1e-9) for a, b in zip(cuts, cuts[1:])]


def mean_thirds(runs: Sequence[Run]) -> str:
    """Mean steps per second by third over runs with step marks, e.g. "71 / 80 / 95"."""
    per_run = [t for t in map(thirds, runs) if t]
    if not per_run:
        return "–"
    return " / ".join(f"{statistics.fmean(col):.0f}" for col in zip(*per_run))


def by_host(runs: Sequence[Run]) -> Dict[str, List[float]]:
    """Training seconds of timed runs, by host (runs without a host are left out)."""
    out: Dict[str, List[float]] = {}
    for r in runs:
        if is_timed(r) and r.get("host"):
            out.setdefault(r["host"], []).append(r["train_seconds"])
    return out


def speed_up(own: Sequence[Run], stock: Sequence[Run]) -> str:
    """Mean stock training time over the row's mean on the same host, one ratio per shared host (most runs
    first); with no shared host, against the stock host (or host-less stock run) of lowest mean, marked *."""
    own_timed = [r["train_seconds"] for r in own if is_timed(r)]
    stock_hosts = by_host(stock)
    groups = list(stock_hosts.values()) + [[r["train_seconds"]] for r in stock if is_timed(r) and not r.get("host")]
    if not own_timed or not groups:
        return "–"
    own_hosts = by_host(own)
    shared = sorted((h for h in own_hosts if h in stock_hosts), key=lambda h: -len(own_hosts[h]))
    if shared:
        return " / ".join(f"{statistics.fmean(stock_hosts[h]) / statistics.fmean(own_hosts[h]):.2f}x" for h in shared)
    fastest = min(map(statistics.fmean, groups))
    return f"{fastest / statistics.fmean(own_timed):.2f}x*"


def shared_variant(runs: Sequence[Run]) -> Optional[str]:
    """The variant label all the runs carry, None where they carry none or several."""
    variants = {r.get("variant") for r in runs}
    return variants.pop() if len(variants) == 1 else None


def row_name(key: RowKey, runs: Sequence[Run], trainings: int) -> str:
    """ "method (variant) [flags] @commits": the variant label where all the row's runs carry the same one, the
    commits only where the file holds more than one training."""
    method, flags, _ = key
    variant = shared_variant(runs)
    return (method + (f" ({variant})" if variant else "") + (f" [{flags}]" if flags else "")
            + (f" @{commits_of(runs)}" if trainings > 1 else ""))


def table(results: Dict[str, Any]) -> str:
    """Markdown table: one row per (method, flags, training), mean ± std and n (see the module's docstring)."""
    stock = [r for r in results["runs"] if is_stock(r)]
    stock_count = stock_mean_count(results)
    grouped = rows(results)
    trainings = len({k[2] for k in grouped})
    head = ("| method | n | timed | PSNR | SSIM | LPIPS | Gaussians | % of splatfacto | peak | train s | speed-up | "
            "it/s by third | render ms | FPS | peak MB | PLY MB |\n" + "|---" * 16 + "|")
    lines = []
    for key, runs in grouped.items():
        timed = [r for r in runs if is_timed(r)]
        final = [r["gaussians_final"] for r in runs]
        share = "–" if stock_count is None else f"{100.0 * statistics.fmean(final) / stock_count:.1f}"
        ms = mean_std([r["render_ms"] for r in timed if r.get("render_ms")])[0]
        ply = [None if r["ply_bytes"] is None else r["ply_bytes"] / 2**20 for r in runs]
        lines.append(
            f"| {row_name(key, runs, trainings)} | {len(runs)} | {len(timed)} | {pm([r['psnr'] for r in runs], '.2f')} | "
            f"{pm([r['ssim'] for r in runs], '.3f')} | {pm([r['lpips'] for r in runs], '.3f')} | {pm(final, ',.0f')} | "
            f"{share} | {pm([r['gaussians_peak'] for r in runs], ',.0f')} | {pm([r['train_seconds'] for r in timed], '.0f')} | "
            f"{speed_up(runs, stock)} | {mean_thirds(timed)} | {pm([r['render_ms'] for r in timed], '.2f')} | "
            f"{'–' if not ms else format(1000.0 / ms, '.0f')} | {pm([r['peak_gpu_mem_mb'] for r in runs], '.0f')} | "
            f"{pm(ply, '.1f')} |")
    title = f"{results['scene']}, {results['protocol']} protocol (scale {results['scale']}), {results['gpu']}, {results['date']}"
    notes = ["", "Mean ± sample standard deviation over the row's n runs; train s, speed-up, it/s, render ms and FPS "
                 "over its timed runs only (runs that shared the GPU are not timed)."]
    if stock:
        notes.append(f"Stock splatfacto (no flags) over {len(stock)} runs: {pm([r['psnr'] for r in stock], '.2f')} dB "
                     f"({min(r['psnr'] for r in stock):.2f}-{max(r['psnr'] for r in stock):.2f}), "
                     f"{stock_count:,.0f} Gaussians: the 100 % of the share column. Speed-ups: mean stock time over "
                     "the row's mean on the same host (one ratio per host), else (*) against the fastest stock host.")
    present = {commit_of(r) for r in results["runs"]}
    for group in results.get("alike", []):
        if present & set(group["commits"]):
            of = f" ({', '.join(group['methods'])})" if "methods" in group else ""
            notes.append(f"Commits {', '.join(group['commits'])} train alike{of} ({group['why']}): their runs share "
                         "rows, each read with the flags it would take at the last of them.")
    same = same_count_table(results)
    return "\n".join([f"### {title}", "", head, *lines, *notes, *(["", same] if same else []), "",
                      f"Command: `{results['command']}`"])


def _axes(width: float = 6.5):
    """A fresh figure and axes for the PSNR-vs-count plots (matplotlib without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, 4.2))


def _stock_band(ax, results: Dict[str, Any], point: bool = False) -> bool:
    """Stock splatfacto's mean ± std PSNR as a horizontal band with its mean dashed (``point``: also a star at its
    mean ± std count); False without stock runs."""
    runs = [r for r in results["runs"] if is_stock(r)]
    if not runs:
        return False
    mean, std = mean_std([r["psnr"] for r in runs])
    ax.axhspan(mean - (std or 0.0), mean + (std or 0.0), color="0.85", zorder=0,
               label=f"stock splatfacto {mean:.2f} ± {std or 0.0:.2f} dB (n={len(runs)})")
    ax.axhline(mean, color="0.5", lw=0.8, ls="--", zorder=1)
    if point:
        x, dx = mean_std([r["gaussians_final"] for r in runs])
        ax.errorbar(x, mean, xerr=dx or 0.0, yerr=std or 0.0, fmt="*", ms=12, color="black", capsize=3, zorder=3)
    return True


def _save(fig, ax, results: Dict[str, Any], path: Path, legend: bool, what: str = "", outside: bool = False) -> None:
    """Log count axis, labels, title and legend; write ``path``."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    # minor ticks labelled at 2 and 5 x 10^n only: every one of them overlaps its neighbours
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:,.0f}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
    ax.set_xlabel("final Gaussians (mean ± std)")
    ax.set_ylabel("PSNR (dB, mean ± std)")
    ax.set_title(f"{results['scene']}{what} ({results['protocol']}, x{results['scale']}, {results['gpu']})", fontsize=9)
    ax.grid(alpha=0.3)
    if legend and outside:  # many curves: the legend beside the axes, not over the points
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    elif legend:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: Dict[str, Any], path: Path) -> None:
    """PSNR against final Gaussian count: one point per row with std error bars on both axes, stock splatfacto's
    mean ± std PSNR as a horizontal band."""
    fig, ax = _axes()
    stock = _stock_band(ax, results)
    grouped = rows(results)
    trainings = len({k[2] for k in grouped})
    for key, runs in grouped.items():
        (x, dx), (y, dy) = mean_std([r["gaussians_final"] for r in runs]), mean_std([r["psnr"] for r in runs])
        base = all(is_stock(r) for r in runs)
        ax.errorbar(x, y, xerr=dx or 0.0, yerr=dy or 0.0, fmt="*" if base else "o", ms=12 if base else 6,
                    color="black" if base else None, capsize=3, zorder=3)
        name = shared_variant(runs) or key[0] + (f" [{key[1]}]" if key[1] else "")  # the short label where there is one
        label = name + (f" @{commits_of(runs)}" if trainings > 1 else "") + f" (n={len(runs)})"
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    _save(fig, ax, results, path, stock)


def pareto_curves(results: Dict[str, Any]) -> Dict[str, List[Tuple[str, List[Run]]]]:
    """Per rule, its (training, runs) at each budget, budgets ascending: the rule's newest training at that budget
    (the training of its last run there in file order; older trainings stay in the table). Only rules as their
    method's defaults give them: ablations (runs with further flags) and ``-big`` methods are left out."""
    order = {id(r): i for i, r in enumerate(results["runs"])}
    newest: Dict[Tuple[int, str], Tuple[int, str, List[Run]]] = {}
    for (budget, rule, training), runs in same_count_rows(results).items():
        last = max(order[id(r)] for r in runs)
        if " [" not in rule and "(big)" not in rule and ((budget, rule) not in newest or last > newest[budget, rule][0]):
            newest[budget, rule] = (last, training, runs)
    curves: Dict[str, List[Tuple[str, List[Run]]]] = {}
    for (_, rule), (_, training, runs) in sorted(newest.items(), key=lambda kv: kv[0][0]):
        curves.setdefault(rule, []).append((training, runs))
    return curves


def plot_same_count(results: Dict[str, Any], path: Path) -> bool:
    """The same-count (Pareto) plot: one curve per rule of :func:`pareto_curves`, mean ± std PSNR against mean ± std
    final count at each budget, over stock splatfacto's band and its point; the legend names the last commit of
    every training a curve draws from. False (nothing written) without such budget runs."""
    import matplotlib

    curves = pareto_curves(results)
    if not curves:
        return False
    fig, ax = _axes(11.0)
    ax.set_prop_cycle(color=matplotlib.colormaps["tab20"].colors)  # up to 20 curves in distinct colours
    _stock_band(ax, results, point=True)
    for rule, points in curves.items():
        xs, dxs, ys, dys = zip(*(mean_std([r["gaussians_final"] for r in runs]) + mean_std([r["psnr"] for r in runs])
                                 for _, runs in points))
        commits = ", ".join(dict.fromkeys(training.split("+")[-1] for training, _ in points))
        ax.errorbar(xs, ys, xerr=[d or 0.0 for d in dxs], yerr=[d or 0.0 for d in dys], fmt="o-", ms=5, capsize=3, lw=1,
                    zorder=3, label=f"{rule} @{commits}")
    _save(fig, ax, results, path, True, ", same count", outside=True)
    return True


def write_outputs(results: Dict[str, Any], path: Path) -> str:
    """Validate, then write the JSON, the markdown table and the plot; returns the table."""
    validate(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return render(results, path)


def render(results: Dict[str, Any], path: Path) -> str:
    """Write the markdown table and the plot beside the JSON ``path`` (and ``<name>-same-count.png`` where the file
    holds budget runs); returns the table."""
    text = table(results)
    path.with_suffix(".md").write_text(text + "\n")
    plot(results, path.with_suffix(".png"))
    plot_same_count(results, path.with_name(path.stem + "-same-count.png"))
    return text


def merge_files(into: Path, source: Path) -> None:
    """Append every run of ``source`` to ``into`` (same scene, protocol, GPU kind and scale, else refused)."""
    src = normalize(json.loads(source.read_text()))
    results = load_results(into, src["scene"], src["protocol"], src["scale"], src["gpu"])
    if (results["scene"], results["protocol"]) != (src["scene"], src["protocol"]):
        raise ResultsMismatch(f"benchmarks: {into} is {results['scene']}/{results['protocol']}, {source} is "
                              f"{src['scene']}/{src['protocol']}: not merged")
    for r in src["runs"]:
        merge_run(results, {k: v for k, v in r.items() if k != "repeat"}, src["command"], src["date"])
    write_outputs(results, into)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description="Render or merge benchmark results files.")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("render", help="rewrite the .md table and .png plot of results files").add_argument("files", nargs="+", type=Path)
    m = sub.add_parser("merge", help="append the runs of FROM to INTO (refused across GPU kinds or scales)")
    m.add_argument("into", type=Path)
    m.add_argument("source", type=Path)
    args = p.parse_args(argv)
    if args.action == "merge":
        merge_files(args.into, args.source)
        return
    for f in args.files:
        print(render(normalize(json.loads(f.read_text())), f))

if __name__ == "__main__":
    main()
