"""Benchmark splatfacto against the pruning methods through nerfstudio's own trainer, one GPU, any scene.

    python -m benchmarks.run --scene fox --data <fox> --protocol quick --scale 0.5 \
        --methods splatfacto,splatfacto-argp,splatfacto-safeguard --repeats 3 [--parallel 3] [--time-budget 540] \
        [--variant "argp-hidden=splatfacto-argp:--pipeline.model.irp-mode hidden"]
    python -m benchmarks.run --scene mine --data <folder> --dataparser colmap --colmap-path sparse/0 --methods ...
    python -m benchmarks.run --scene fox --data <fox> --budgets 0.1,0.2,0.3 [--rules argp,safeguard,...] --repeats 2

Each run is trained by ``nerfstudio.engine.trainer.Trainer`` from the registered method config (periodic
evaluation and the viewer off) in a fresh spawned process (``--parallel K``: K at once, recorded as not timed),
then evaluated with the pipeline's own metrics (and per held-out view), timed for rendering, and exported with
``ns-export gaussian-splat``'s exporter. Every run is appended to ``benchmarks/results/<scene>-<protocol>.json``
(format: ../shared spec, see benchmarks/README.md) as soon as it finishes, with a markdown table and a
PSNR-vs-Gaussians plot beside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import datetime
import multiprocessing
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from argp_ns.pruning import eval_pairs
from benchmarks import scenes
from benchmarks.report import (BUDGET_FLAG, FINAL_FLAG, RULE_FLAG, load_results, merge_run, stock_mean_count, table,
                               write_outputs)

REPO = Path(__file__).resolve().parents[1]

# step-based schedules scaled by the quick protocol: (config path, applies to)
SCALED = ("max_num_iterations", "warmup_length", "stop_split_at", "stop_screen_size_at", "resolution_schedule",
          "sh_degree_interval", "reset_alpha_every", "irp_start", "irp_every", "irp_last", "prune_step")
NEVER = 10**9
# every MARK_EVERY steps a run records [seconds since the first step, Gaussians] (its "step_marks")
MARK_EVERY = 500
# mesh libraries nerfstudio's exporter script imports at its top; ExportGaussianSplat never calls them
EXPORTER_OPTIONAL = ("open3d", "pymeshlab", "xatlas", "mediapy")


# the pruning rules of the same-count table: rule -> (method, the ns-train flags that select the rule)
RULES: Dict[str, Tuple[str, List[str]]] = {
    "argp": ("splatfacto-argp", []),
    **{rule: ("splatfacto-safeguard", [RULE_FLAG, rule])
       for rule in ("safeguard", "efficientgs", "lightgaussian", "minisplatting", "radsplat")},
    "argp+safeguard": ("splatfacto-argp", [FINAL_FLAG, "safeguard"]),
    "mcmc": ("splatfacto-mcmc", []),
}


def budget_counts(text: str, stock_count: Optional[float]) -> List[int]:
    """The final counts asked for by ``--budgets``: a value in (0, 1) is that fraction of ``stock_count`` (stock
    splatfacto's mean final count), a whole number >= 1 is a count. One-line SystemExit on anything else."""
    counts = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            value = float(item)
        except ValueError:
            raise SystemExit(f"benchmarks: --budgets takes fractions in (0, 1) or whole counts >= 1, got {item!r}") from None
        if 0.0 < value < 1.0:
            if stock_count is None:
                raise SystemExit("benchmarks: a --budgets fraction needs stock splatfacto's mean count: no stock run in "
                                 "the results file; give --budget-base N or run --methods splatfacto first")
            counts.append(max(1, round(value * stock_count)))
        elif value >= 1.0 and value == int(value):
            counts.append(int(value))
        else:
            raise SystemExit(f"benchmarks: --budgets takes fractions in (0, 1) or whole counts >= 1, got {item!r}")
    if not counts:
        raise SystemExit("benchmarks: --budgets is empty")
    return counts


def budget_jobs(counts: List[int], rules: List[str]) -> List[Tuple[str, str, List[str]]]:
    """(method, variant, flags) of every rule at every count: variant ``<rule>-b<N>``, flags the rule's and
    ``--pipeline.model.budget N``."""
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise SystemExit(f"benchmarks: unknown rule {unknown[0]!r}: one of {', '.join(RULES)}")
    return [(RULES[rule][0], f"{rule}-b{n}", [*RULES[rule][1], BUDGET_FLAG, str(n)])
            for n in counts for rule in rules]


def parse_variant(text: str) -> Tuple[str, str, List[str]]:
    """'name=method:flags' -> (name, method, flags)."""
    name, rest = text.split("=", 1)
    method, _, flags = rest.partition(":")
    return name, method, shlex.split(flags)


class Job(NamedTuple):
    """One run to do: the method, its variant label and ns-train flags, and the folder it trains in."""

    method: str
    variant: Optional[str]
    flags: List[str]
    workdir: Path


def check_methods(methods: List[str], device: str) -> None:
    """One-line SystemExit for a method nerfstudio does not know, or stock splatfacto on the CPU."""
    from nerfstudio.configs.method_configs import all_methods

    for method in methods:
        if method not in all_methods:
            raise SystemExit(f"benchmarks: unknown method {method!r}")
        if device == "cpu" and method == "splatfacto":
            raise SystemExit("benchmarks: stock splatfacto needs a GPU (gsplat has no CPU rasterizer)")


def build_config(method: str, flags: List[str], opts: scenes.SceneOptions, data: Path, scale: float, device: str,
                 out: Path, steps: Optional[int]):
    """The registered method's TrainerConfig with the protocol's scaling, the variant's flags and the scene."""
    import tyro
    from nerfstudio.configs.method_configs import all_methods

    cfg = copy.deepcopy(all_methods[method])
    model = cfg.pipeline.model
    for name in SCALED:
        for obj in (cfg, model):
            if getattr(obj, name, 0):  # 0 means off and stays 0
                setattr(obj, name, max(1, int(round(getattr(obj, name) * scale))))
    if steps is not None:
        cfg.max_num_iterations = steps
    for opt in cfg.optimizers.values():
        if opt["scheduler"] is not None and hasattr(opt["scheduler"], "max_steps"):
            opt["scheduler"].max_steps = cfg.max_num_iterations
    if flags:
        cfg = tyro.cli(type(cfg), default=cfg, args=flags, config=(tyro.conf.FlagConversionOff,))  # booleans as on ns-train
    cfg.pipeline.datamanager.dataparser = scenes.dataparser_config(opts, data)
    if opts.background != "auto":
        cfg.pipeline.model.background_color = opts.background  # for every method alike (lego, demo: white)
    cfg.pipeline.datamanager.data = data
    cfg.machine.device_type = device
    cfg.vis = "tensorboard"
    cfg.steps_per_eval_image = cfg.steps_per_eval_batch = cfg.steps_per_eval_all_images = NEVER
    cfg.steps_per_save = NEVER
    cfg.output_dir = out
    cfg.timestamp = "run"
    return cfg


def train(cfg) -> Dict[str, Any]:
    """Train with nerfstudio's Trainer; time first-to-last step and track the peak Gaussian count."""
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    cuda = cfg.machine.device_type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg.save_config()  # config.yml, as ns-train writes it (the exporter loads it)
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    model = trainer.pipeline.model
    track: Dict[str, Any] = {"first": None, "last": None, "peak": model.num_points, "marks": {}}

    def before(step: int) -> None:
        if track["first"] is None:
            if cuda:
                torch.cuda.synchronize()
            track["first"] = time.perf_counter()

    def after(step: int) -> None:
        track["peak"] = max(track["peak"], model.num_points)
        done = step + 1
        if done % MARK_EVERY == 0 or step == cfg.max_num_iterations - 1:
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            track["marks"][str(done)] = [round(now - track["first"], 3), model.num_points]
            if step == cfg.max_num_iterations - 1:
                track["last"] = now

    trainer.callbacks += [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before),
                          TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after)]
    trainer.train()
    seconds = (track["last"] or time.perf_counter()) - track["first"]
    return {"trainer": trainer, "seconds": seconds, "peak": track["peak"], "marks": track["marks"],
            "mem": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


@torch.no_grad()
def render_ms(pipeline, warmup: int = 3) -> Optional[float]:
    """Median milliseconds of a synchronised forward render of the held-out views, after warm-up."""
    pairs = eval_pairs(pipeline.datamanager)
    if not pairs:
        return None
    model = pipeline.model
    model.eval()
    cuda = next(model.parameters()).is_cuda
    times = []
    for i in range(warmup + len(pairs)):
        camera = pairs[i % len(pairs)][0]
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.get_outputs_for_camera(camera)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


@torch.no_grad()
def per_view_metrics(pipeline) -> Dict[str, List[float]]:
    """PSNR (and LPIPS where the model has it) of each held-out view in order, computed as nerfstudio's
    ``get_average_eval_image_metrics`` does for its mean."""
    model = pipeline.model
    model.eval()
    psnr, lpips = [], []
    for camera, batch in eval_pairs(pipeline.datamanager):
        metrics = model.get_image_metrics_and_images(model.get_outputs_for_camera(camera), batch)[0]
        psnr.append(round(float(metrics["psnr"]), 4))
        if "lpips" in metrics:
            lpips.append(round(float(metrics["lpips"]), 5))
    return {"per_view_psnr": psnr, **({"per_view_lpips": lpips} if lpips else {})}


def warm_extensions(device: str) -> None:
    """Load gsplat's CUDA backend and the project's kernel before the timer starts (a first use compiles them)."""
    if device != "cuda":
        return
    from gsplat.cuda._backend import _C  # noqa: F401

    from argp_ns import cuda as kernel

    print(f"benchmarks: argp_ns kernel {'ready' if kernel.available() else 'unavailable: ' + str(kernel.unavailable_reason())}")


def exporter_class():
    """nerfstudio's ``ExportGaussianSplat``. Where a mesh library its script imports (and the splat export never
    uses) is not installed, an empty stand-in module is registered for it so that the real exporter runs."""
    for _ in range(len(EXPORTER_OPTIONAL) + 1):
        try:
            from nerfstudio.scripts.exporter import ExportGaussianSplat

            return ExportGaussianSplat
        except ImportError as err:
            if err.name not in EXPORTER_OPTIONAL or err.name in sys.modules:
                raise
            print(f"benchmarks: {err.name} is not installed; a stand-in module lets the exporter import")
            sys.modules[err.name] = types.ModuleType(err.name, "stand-in registered by benchmarks/run.py")
    raise ImportError("nerfstudio.scripts.exporter cannot be imported")


def ply_bytes(config_path: Path, out: Path) -> Optional[int]:
    """Size of ns-export gaussian-splat's PLY; None when the exporter cannot run here."""
    try:
        exporter = exporter_class()
    except ImportError as err:
        print(f"benchmarks: PLY size absent: the exporter cannot be imported ({err})")
        return None
    exporter(load_config=config_path, output_dir=out).main()
    return (out / "splat.ply").stat().st_size


def host() -> str:
    """This machine: hostname, CPU model and boot id (training at this scale is bound by the host's per-step
    overhead, so times are compared between runs of one machine; the boot id tells lent machines apart)."""
    def read(path: str) -> str:
        return Path(path).read_text() if Path(path).exists() else ""

    cpu = next((line.split(":", 1)[1].strip() for line in read("/proc/cpuinfo").splitlines() if line.startswith("model name")),
               platform.processor())
    return f"{socket.gethostname()} / {cpu} / boot {read('/proc/sys/kernel/random/boot_id').strip()[:8]}"


def source_commit(root: Path = REPO) -> Optional[str]:
    """The project's commit: ``git rev-parse --short HEAD``, plus "+dirty" where tracked files outside
    benchmarks/results differ from it; the ARGP_NS_COMMIT variable first where it is set (a copied tree may carry
    a stale .git); else None."""
    if os.environ.get("ARGP_NS_COMMIT"):
        return os.environ["ARGP_NS_COMMIT"]
    if (root / ".git").exists():
        def git(*cmd: str) -> str:
            return subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True, check=True).stdout.strip()

        try:
            dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
            return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            pass
    return None


def run_one(job: Job, args, commit: Optional[str]) -> Dict[str, Any]:
    """Train, evaluate, time and export one run; the results entry of benchmark.md (``repeat`` is set on merge)."""
    method, variant, flags, workdir = job
    cfg = build_config(method, flags, args.scene_options, args.data, args.scale, args.device, workdir, args.steps)
    warm_extensions(args.device)
    res = train(cfg)
    trainer = res["trainer"]
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    metrics = pipeline.get_average_eval_image_metrics(step=cfg.max_num_iterations, output_path=None, get_std=False)
    views = per_view_metrics(pipeline)
    ms = render_ms(pipeline)
    final = model.num_points
    config_path = trainer.base_dir / "config.yml"
    n_bytes = ply_bytes(config_path, workdir / "export")
    psnr = float(metrics["psnr"])
    entry = {
        "method": method, "config": {"flags": " ".join(flags), "scale": args.scale, "max_num_iterations": cfg.max_num_iterations,
                                     "scene": args.scene_options.as_dict()},
        "psnr": psnr, "ssim": float(metrics["ssim"]), "lpips": float(metrics["lpips"]) if "lpips" in metrics else None,
        "gaussians_final": int(final), "gaussians_peak": int(res["peak"]), "train_seconds": round(res["seconds"], 2),
        "steps_per_second": round(cfg.max_num_iterations / res["seconds"], 2),
        "peak_gpu_mem_mb": None if res["mem"] is None else round(res["mem"], 1),
        "render_ms": None if ms is None else round(ms, 3), "fps": None if not ms else round(1000.0 / ms, 1),
        "ply_bytes": n_bytes, "psnr_per_million": round(psnr / max(final, 1) * 1e6, 3),
        "step_marks": res["marks"], "host": host(), "timed": args.parallel == 1, "commit": commit, **views,
        "prune_events": [{k: e[k] for k in ("step", "rule", "removed", "kept")} for e in getattr(model, "prune_events", [])],
    }
    if variant:
        entry["variant"] = variant
    del trainer, pipeline, model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return entry


def workdir_for(args, label: str) -> Path:
    """The folder a run trains in: DIR/<scene>-<protocol>/<label>/<first free number> under --keep-runs, else a
    fresh temporary folder."""
    if args.keep_runs is None:
        return Path(tempfile.mkdtemp(prefix="argp-bench-"))
    parent = args.keep_runs / f"{args.scene}-{args.protocol}" / label
    parent.mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        try:
            (parent / str(i)).mkdir()
            return parent / str(i)
        except FileExistsError:
            i += 1


def expected_seconds(took: Dict[str, float], label: str) -> float:
    """How long a run of ``label`` will take: its longest finished run, else the longest of any label (0 before any)."""
    return took.get(label, max(took.values(), default=0.0))


def run_all(todo: List[Tuple[str, Optional[str], List[str]]], args, commit: Optional[str],
            finish: Callable[[Dict[str, Any]], None]) -> int:
    """Do the runs, at most ``args.parallel`` at once, each in its own spawned process (no state such as CUDA
    caches or compiled kernels leaks from one run into another's time); ``finish(entry)`` after each. No run starts
    once the time used plus its expected length would pass ``args.time_budget``: the longest finished run of the
    same method and variant, else the longest finished run. Returns the number of runs that failed."""
    spawn = multiprocessing.get_context("spawn")
    start, failed = time.perf_counter(), 0
    took: Dict[str, float] = {}  # label -> its longest finished run, seconds
    pending = list(todo)
    running: Dict[concurrent.futures.Future, Tuple[concurrent.futures.ProcessPoolExecutor, float, str]] = {}

    def fits(label: str) -> bool:
        return args.time_budget is None or time.perf_counter() - start + expected_seconds(took, label) <= args.time_budget

    while pending or running:
        while pending and len(running) < args.parallel and fits(pending[0][1] or pending[0][0]):
            method, variant, flags = pending.pop(0)
            label = variant or method
            print(f"benchmarks: {args.scene} {args.protocol} x{args.scale}: {method}{' / ' + variant if variant else ''}"
                  f"{' (not timed: ' + str(args.parallel) + ' at once)' if args.parallel > 1 else ''}", flush=True)
            pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn)
            future = pool.submit(run_one, Job(method, variant, flags, workdir_for(args, label)), args, commit)
            running[future] = (pool, time.perf_counter(), label)
        if not running:
            print(f"benchmarks: time budget of {args.time_budget:.0f} s: {len(pending)} runs not started "
                  f"(runs took up to {max(took.values(), default=0.0):.0f} s)", flush=True)
            return failed
        done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            pool, began, label = running.pop(future)
            pool.shutdown()
            took[label] = max(took.get(label, 0.0), time.perf_counter() - began)
            try:
                finish(future.result())
            except (Exception, SystemExit) as err:  # one failed run does not cost the others
                failed += 1
                print(f"benchmarks: the {label} run failed: {err!r}", flush=True)
    return failed


def main(argv: Optional[List[str]] = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", required=True, help=f"results name; a preset ({', '.join(scenes.PRESETS)}) sets the scene options")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--dataparser", choices=scenes.DATAPARSERS, default=None, help="required unless --scene is a preset")
    p.add_argument("--downscale", type=int, default=None, help="image downscale factor (nerfstudio-data, colmap)")
    p.add_argument("--colmap-path", default=None, help="COLMAP model folder relative to --data (colmap; nerfstudio's default colmap/sparse/0)")
    p.add_argument("--eval-interval", type=int, default=None, help="hold out every Nth image (nerfstudio-data, colmap; default 8)")
    p.add_argument("--background", choices=scenes.BACKGROUNDS, default=None, help="model background (default auto: the method's own)")
    p.add_argument("--ply-path", default=None, help="seed points relative to --data (blender-data; default random init)")
    p.add_argument("--protocol", choices=("quick", "paper"), default="quick")
    p.add_argument("--scale", type=float, default=None, help="quick protocol's schedule factor (default 0.5; paper: 1)")
    p.add_argument("--methods", default="", help="comma-separated ns-train method names")
    p.add_argument("--variant", action="append", default=[], help="name=method:flags (flags as on ns-train)")
    p.add_argument("--budgets", default=None,
                   help="same-count runs: comma-separated final counts, or fractions in (0, 1) of stock splatfacto's mean "
                        "count in the results file (or of --budget-base); every --rules rule runs at each")
    p.add_argument("--rules", default=",".join(RULES), help=f"rules of --budgets (default all: {','.join(RULES)})")
    p.add_argument("--budget-base", type=float, default=None,
                   help="the count --budgets fractions are taken of (default: stock splatfacto's mean in the results file)")
    p.add_argument("--flags", default="", help="ns-train flags for every run of the command, before each run's own")
    p.add_argument("--repeats", type=int, default=3, help="runs of every method and variant (default 3)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once on the one GPU; above 1 they are not timed")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: start no run once elapsed time plus its expected length (the longest finished run "
                        "of its method and variant, else of any) would pass it")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="override max_num_iterations (tiny CPU checks)")
    p.add_argument("--keep-runs", type=Path, default=None,
                   help="keep each trained run (config.yml, checkpoint) under DIR/<scene>-<protocol>/<variant or method>/<i>")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.parallel < 1:
        raise SystemExit("benchmarks: --repeats and --parallel must be at least 1")
    args.scene_options = scenes.resolve(args.scene, {
        "dataparser": args.dataparser, "downscale": args.downscale, "colmap_path": args.colmap_path,
        "eval_interval": args.eval_interval, "background": args.background, "ply_path": args.ply_path})
    scenes.check_data(args.scene_options, args.data)
    args.scale = 1.0 if args.protocol == "paper" else (args.scale or 0.5)
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1" if args.device == "cpu" else "0")
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    path = args.out / f"{args.scene}-{args.protocol}.json"
    results = load_results(path, args.scene, args.protocol, args.scale, gpu)  # refuses a mismatch before training
    todo = [(m, None, []) for m in args.methods.split(",") if m] + [(m, n, f) for n, m, f in map(parse_variant, args.variant)]
    if args.budgets is not None:
        if args.budget_base is not None and args.budget_base <= 0:
            raise SystemExit(f"benchmarks: --budget-base must be positive, got {args.budget_base:g}")
        base = args.budget_base if args.budget_base is not None else stock_mean_count(results)
        todo += budget_jobs(budget_counts(args.budgets, base), [r.strip() for r in args.rules.split(",") if r.strip()])
    if not todo:
        raise SystemExit("benchmarks: nothing to run: give --methods, --variant or --budgets")
    todo = [(m, v, shlex.split(args.flags) + f) for m, v, f in todo]
    check_methods([m for m, _, _ in todo], args.device)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    commit = source_commit()

    def finish(entry: Dict[str, Any]) -> None:
        merge_run(results, entry, command, datetime.date.today().isoformat())
        write_outputs(results, path)  # after every run: a command killed at its time limit keeps the finished ones

    # repeat-major order: a cut-short command still holds about as many runs of every method
    failed = run_all([job for _ in range(args.repeats) for job in todo], args, commit, finish)
    if results["runs"]:
        print(table(results))
    if failed:
        raise SystemExit(f"benchmarks: {failed} of {args.repeats * len(todo)} runs failed; the finished ones are in {path}")
    return path

if __name__ == "__main__":
    main()
