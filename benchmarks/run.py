"""Benchmark stock splatfacto against the pruning methods through nerfstudio's own Trainer (one device, one scene).

    python -m benchmarks.run --scene fox --data <fox dir> --protocol quick --scale 0.5 \\
        --methods splatfacto,splatfacto-argp,splatfacto-safeguard \\
        [--variant 'argp-frozen=splatfacto-argp:--pipeline.model.irp-mode frozen' ...] \\
        [--out benchmarks/results] [--device cuda|cpu] [--max-steps-override N] [--keep-runs DIR]

Each run: the registered method's TrainerConfig (deep copy), its step schedules scaled by the protocol, the
variant's ns-train flags on top, periodic evaluation and the viewer off; trained in-process by
``nerfstudio.engine.trainer.Trainer``; then evaluated with the pipeline's own metrics on the held-out views,
timed for rendering, and exported with ``ns-export gaussian-splat``'s exporter for the PLY size.
Each finished run merges into ``<out>/<scene>-<protocol>.json`` at once (a killed command keeps the runs it
finished), with a markdown table and a PSNR-vs-Gaussians plot beside it. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import enum
import gc
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from benchmarks.report import load_results, merge_run, write_outputs

SCENES = ("fox", "lego", "demo")
# Step-based schedules the quick protocol multiplies by --scale (every method that has the field).
# refine_every (100) and reset_alpha_every (30, counted in refine intervals) are NOT scaled.
SCALED_TRAINER = ("max_num_iterations",)
SCALED_MODEL = ("warmup_length", "stop_split_at", "stop_screen_size_at", "resolution_schedule", "sh_degree_interval",
                "irp_start", "irp_every", "irp_last", "prune_step")
SCALED_SCHEDULER = ("max_steps", "warmup_steps")
NEVER = 10**9  # "every NEVER steps": periodic evaluation and saving off
# modules that nerfstudio's exporter script imports at its top but ExportGaussianSplat never uses
EXPORTER_OPTIONAL = ("open3d", "pymeshlab", "xatlas", "mediapy")


def log(msg: str) -> None:
    print(f"benchmarks: {msg}", flush=True)


# --- configuration ----------------------------------------------------------------------------------
def parse_variant(text: str) -> Tuple[str, str, List[str]]:
    """'name=method:flags' -> (name, method, [flags]); flags as on ns-train's command line."""
    name, eq, rest = text.partition("=")
    method, _, flags = rest.partition(":")
    if not eq or not name.strip() or not method.strip():
        raise SystemExit(f"benchmarks: --variant {text!r}: expected NAME=METHOD[:FLAGS]")
    return name.strip(), method.strip(), shlex.split(flags)


def dataparser(scene: str, data: Path):
    """The scene's dataparser, as shared/spec/benchmark.md fixes it."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    if scene == "fox":  # fox has no point cloud: load_3D_points only warns and splatfacto starts from random points
        return NerfstudioDataParserConfig(data=data, downscale_factor=2, eval_mode="interval", eval_interval=8,
                                          load_3D_points=True)
    if scene == "lego":
        return BlenderDataParserConfig(data=data)
    if scene == "demo":
        return BlenderDataParserConfig(data=data, ply_path=Path("points3d.ply"))
    raise SystemExit(f"benchmarks: unknown scene {scene!r} (one of {', '.join(SCENES)})")


def _scaled(value: int, scale: float) -> int:
    return value if value <= 0 else max(1, int(round(value * scale)))


def scale_schedules(cfg, scale: float) -> None:
    """Multiply every step-based schedule by ``scale`` (see SCALED_*), in place."""
    for name in SCALED_TRAINER:
        setattr(cfg, name, _scaled(getattr(cfg, name), scale))
    model = cfg.pipeline.model
    for name in SCALED_MODEL:
        if hasattr(model, name):
            setattr(model, name, _scaled(getattr(model, name), scale))
    for opt in cfg.optimizers.values():
        sched = opt.get("scheduler")
        for name in SCALED_SCHEDULER:
            if sched is not None and hasattr(sched, name):
                setattr(sched, name, _scaled(getattr(sched, name), scale))


def override_steps(cfg, steps: int) -> None:
    """--max-steps-override: the run's length, and the schedulers' horizon with it (tiny CPU checks)."""
    cfg.max_num_iterations = steps
    for opt in cfg.optimizers.values():
        sched = opt.get("scheduler")
        if sched is not None and hasattr(sched, "max_steps"):
            sched.max_steps = steps


def apply_harness(cfg, scene: str, data: Path, device: str, out: Path) -> None:
    """The settings every run shares: scene, device, no periodic evaluation, no viewer, save at the end only."""
    cfg.pipeline.datamanager.dataparser = dataparser(scene, data)
    cfg.pipeline.datamanager.data = data
    cfg.machine.device_type = device
    cfg.machine.num_devices = 1
    cfg.vis = "tensorboard"
    cfg.viewer.quit_on_train_completion = True
    cfg.steps_per_eval_image = cfg.steps_per_eval_batch = cfg.steps_per_eval_all_images = NEVER
    cfg.steps_per_save = NEVER  # the trainer still saves the final checkpoint (the exporter loads it)
    cfg.logging.local_writer.enable = False  # progress comes from our callback, one line per 10 %
    cfg.load_dir = cfg.load_checkpoint = None
    cfg.output_dir = out
    cfg.experiment_name = scene
    cfg.timestamp = "run"
    if hasattr(cfg.pipeline.model, "report_psnr"):
        cfg.pipeline.model.report_psnr = "off"  # eval-view PSNR around prunes is periodic evaluation too


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted leaves of a nested config (dataclasses and dicts), skipping private fields like ``_target``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if not f.name.startswith("_"):
                out.update(flatten(getattr(obj, f.name), f"{prefix}{f.name}."))
        return out
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def config_diff(cfg, reference) -> Dict[str, Any]:
    """The fields where ``cfg`` differs from ``reference`` (dotted path -> value): the protocol's scaling,
    the step override and the variant's flags; the harness's shared settings are in both and drop out."""
    new, ref = flatten(cfg), flatten(reference)
    diff = {}
    for key in sorted(new):
        try:
            same = key in ref and bool(new[key] == ref[key])
        except Exception:  # noqa: BLE001  (values that do not compare: record them)
            same = False
        if not same:
            diff[key] = _jsonable(new[key])
    return diff


def build_config(method: str, flags: List[str], scene: str, data: Path, scale: float, device: str, out: Path,
                 max_steps: Optional[int] = None):
    """(TrainerConfig to train, its non-default settings as a dict) for one run."""
    from nerfstudio.configs.method_configs import all_methods

    if method not in all_methods:
        raise SystemExit(f"benchmarks: unknown method {method!r} (not registered with nerfstudio)")
    reference = copy.deepcopy(all_methods[method])
    apply_harness(reference, scene, data, device, out)
    cfg = copy.deepcopy(all_methods[method])
    scale_schedules(cfg, scale)
    if max_steps is not None:
        override_steps(cfg, max_steps)
    apply_harness(cfg, scene, data, device, out)
    if flags:  # ns-train flags, parsed by tyro against this config, as absolute values (after the scaling)
        import tyro

        cfg = tyro.cli(type(cfg), default=cfg, args=flags)
    return cfg, config_diff(cfg, reference)


def check_runnable(method: str, device: str) -> None:
    """One-line refusal of what cannot run here, before anything trains."""
    from nerfstudio.configs.method_configs import all_methods

    if method not in all_methods:
        raise SystemExit(f"benchmarks: unknown method {method!r} (not registered with nerfstudio)")
    if device == "cpu":
        from argp_ns.model import PruningModelConfig

        if not isinstance(all_methods[method].pipeline.model, PruningModelConfig):
            raise SystemExit(f"benchmarks: {method} cannot run with --device cpu (stock splatfacto needs gsplat's CUDA "
                             "rasterizer; only the argp_ns methods have a CPU twin): leave it out or use a GPU")


# --- one run ------------------------------------------------------------------------------------------
def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def reset_nerfstudio_globals() -> None:
    """nerfstudio keeps its event writers and profilers in module lists that every Trainer.setup appends to;
    empty them so that one process can train several runs."""
    from nerfstudio.utils import profiler, writer

    for w in writer.EVENT_WRITERS:
        tb = getattr(w, "tb_writer", None)
        if tb is not None:
            tb.close()
    writer.EVENT_WRITERS.clear()
    writer.EVENT_STORAGE.clear()
    profiler.PROFILER.clear()


def train(cfg) -> Dict[str, Any]:
    """Train with nerfstudio's Trainer. Times the steps (first step's start to last step's end, synchronised),
    tracks the peak Gaussian count after every step and the peak GPU memory of the whole training."""
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    cuda = cfg.machine.device_type == "cuda"
    reset_nerfstudio_globals()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg.save_config()  # config.yml, as ns-train writes it (the exporter loads it)
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    model = trainer.pipeline.model
    total = cfg.max_num_iterations
    every = max(1, total // 10)
    t: Dict[str, Any] = {"first": None, "last": None, "steps": 0, "peak": model.num_points}

    def before(step: int) -> None:
        if t["first"] is None:
            _sync(cuda)
            t["first"] = time.perf_counter()

    def after(step: int) -> None:
        t["peak"] = max(t["peak"], model.num_points)
        t["steps"] += 1
        if t["steps"] == total:
            _sync(cuda)
            t["last"] = time.perf_counter()
        elif t["steps"] % every == 0:
            rate = t["steps"] / max(time.perf_counter() - t["first"], 1e-9)
            log(f"  step {t['steps']:,}/{total:,}: {model.num_points:,} Gaussians, {rate:.1f} it/s")

    trainer.callbacks += [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before),
                          TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after)]
    trainer.train()
    if t["last"] is None:  # the loop stopped early
        _sync(cuda)
        t["last"] = time.perf_counter()
    mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return {"trainer": trainer, "seconds": t["last"] - t["first"], "steps": t["steps"], "peak": t["peak"], "mem": mem}


@torch.no_grad()
def render_ms(pipeline, warmup: int = 3, rounds: int = 3) -> Optional[float]:
    """Median milliseconds of one synchronised forward render (``get_outputs_for_camera``: gsplat on CUDA, the
    twin on the CPU) over the held-out views, each rendered ``rounds`` times, after ``warmup`` renders."""
    pairs = pipeline.datamanager.fixed_indices_eval_dataloader  # a property in nerfstudio 1.1.5
    pairs = pairs() if callable(pairs) else pairs
    if not pairs:
        return None
    cameras = [camera for camera, _ in pairs]
    model = pipeline.model
    model.eval()
    cuda = model.device.type == "cuda"
    for i in range(warmup):
        model.get_outputs_for_camera(cameras[i % len(cameras)])
    times = []
    for _ in range(rounds):
        for camera in cameras:
            _sync(cuda)
            t0 = time.perf_counter()
            model.get_outputs_for_camera(camera)
            _sync(cuda)
            times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


def exporter_class():
    """nerfstudio's ``ExportGaussianSplat``. Its script imports mesh libraries at its top (open3d, pymeshlab,
    xatlas, mediapy) that the Gaussian-splat export never calls; where one is not installed (offline GPU
    images), an empty stand-in module is registered for it so that the real exporter still runs."""
    for _ in range(len(EXPORTER_OPTIONAL) + 1):
        try:
            from nerfstudio.scripts.exporter import ExportGaussianSplat

            return ExportGaussianSplat
        except ImportError as err:
            if err.name not in EXPORTER_OPTIONAL or err.name in sys.modules:
                raise
            log(f"{err.name} is not installed: a stand-in module lets nerfstudio's exporter import "
                "(ExportGaussianSplat does not use it)")
            sys.modules[err.name] = _missing_module(err.name)
    raise ImportError("nerfstudio.scripts.exporter cannot be imported")


def _missing_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name, f"stand-in for the absent {name} (benchmarks/run.py)")

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"{name} is not installed (only a stand-in was registered for the PLY export)")

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return mod


def ply_bytes(config_path: Path, out: Path) -> int:
    """Size of the ``splat.ply`` that ``ns-export gaussian-splat --load-config CONFIG`` writes for the run."""
    exporter = exporter_class()
    exporter(load_config=config_path, output_dir=out).main()
    return (out / "splat.ply").stat().st_size


def run_one(method: str, variant: Optional[str], flags: List[str], args: argparse.Namespace) -> Dict[str, Any]:
    """Train, evaluate, time and export one run; its entry of the results file."""
    if args.keep_runs is not None:
        workdir = Path(args.keep_runs) / f"{args.scene}-{args.protocol}" / (variant or method)
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="argp-bench-"))
    try:
        cfg, config = build_config(method, flags, args.scene, args.data, args.scale, args.device, workdir,
                                   args.max_steps_override)
        res = train(cfg)
        trainer = res.pop("trainer")
        pipeline = trainer.pipeline
        model = pipeline.model
        final = int(model.num_points)
        events = [{"step": int(e["step"]), "rule": str(e.get("rule", "")), "removed": int(e["removed"]),
                   "kept": int(e["kept"])} for e in getattr(model, "prune_events", [])]
        log(f"  trained {res['steps']:,} steps in {res['seconds']:.1f} s; {final:,} Gaussians (peak {res['peak']:,}); "
            "evaluating")
        metrics = pipeline.get_average_eval_image_metrics(step=trainer.step, output_path=None, get_std=False)
        ms = render_ms(pipeline)
        config_path = trainer.base_dir / "config.yml"
        del trainer, pipeline, model
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        n_bytes = ply_bytes(config_path, workdir / "export")
    finally:
        if args.keep_runs is None:
            shutil.rmtree(workdir, ignore_errors=True)
        reset_nerfstudio_globals()
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()

    metric = lambda k: float(metrics[k]) if k in metrics else None  # noqa: E731  (absent stays null)
    psnr = metric("psnr")
    entry: Dict[str, Any] = {"method": method}
    if variant:
        entry["variant"] = variant
    entry.update({
        "config": config,
        "psnr": psnr, "ssim": metric("ssim"), "lpips": metric("lpips"),
        "gaussians_final": final, "gaussians_peak": int(res["peak"]),
        "train_seconds": round(res["seconds"], 3),
        "steps_per_second": round(res["steps"] / res["seconds"], 3),
        "peak_gpu_mem_mb": None if res["mem"] is None else round(res["mem"], 1),
        "render_ms": None if ms is None else round(ms, 3),
        "fps": None if not ms else round(1000.0 / ms, 2),
        "ply_bytes": int(n_bytes),
        "psnr_per_million": None if psnr is None or final == 0 else round(psnr / (final / 1e6), 3),
        "prune_events": events,
    })
    return entry


# --- command line -------------------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", required=True, choices=SCENES)
    p.add_argument("--data", required=True, type=Path, help="the scene's folder")
    p.add_argument("--protocol", choices=("quick", "paper"), default="quick")
    p.add_argument("--scale", type=float, default=None,
                   help="step-schedule factor of the quick protocol (default 0.5); the paper protocol is 1")
    p.add_argument("--methods", default="", help="comma-separated ns-train method names")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD:FLAGS",
                   help="a named run of METHOD with extra ns-train flags (repeatable)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results folder")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda where available")
    p.add_argument("--max-steps-override", "--steps", dest="max_steps_override", type=int, default=None,
                   help="run length (and scheduler horizon) instead of the protocol's; for tiny CPU checks")
    p.add_argument("--keep-runs", type=Path, default=None,
                   help="keep each run's nerfstudio output (config, checkpoint, splat.ply) under this folder")
    args = p.parse_args(argv)
    if args.protocol == "paper":
        if args.scale not in (None, 1.0):
            p.error("the paper protocol is scale 1")
        args.scale = 1.0
    elif args.scale is None:
        args.scale = 0.5
    if args.scale <= 0:
        p.error("--scale must be > 0")
    if args.max_steps_override is not None and args.max_steps_override < 1:
        p.error("--max-steps-override must be >= 1")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: Optional[List[str]] = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["TORCHDYNAMO_DISABLE"] = "1"  # nerfstudio torch.compiles get_viewmat: slow and useless on the CPU
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks: --device cuda but torch sees no CUDA device")
    if not args.data.exists():
        raise SystemExit(f"benchmarks: no dataset at {args.data}")
    todo: List[Tuple[str, Optional[str], List[str]]] = [(m.strip(), None, []) for m in args.methods.split(",") if m.strip()]
    todo += [(m, n, f) for n, m, f in map(parse_variant, args.variant)]
    if not todo:
        raise SystemExit("benchmarks: nothing to run (give --methods and/or --variant)")
    for method, _, _ in todo:
        check_runnable(method, args.device)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    path = args.out / f"{args.scene}-{args.protocol}.json"
    results = load_results(path, args.scene, args.protocol, args.scale, gpu)  # refuses a mismatch before training
    command = "python -m benchmarks.run " + shlex.join(argv)
    table = ""
    for i, (method, variant, flags) in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {args.scene} {args.protocol} x{args.scale} on {gpu}: {method}"
            + (f" / {variant} {shlex.join(flags)}" if variant else ""))
        entry = run_one(method, variant, flags, args)
        merge_run(results, entry, command, datetime.date.today().isoformat())
        table = write_outputs(results, path)
        log(f"  written to {path}")
    print(table, flush=True)
    return path


if __name__ == "__main__":
    main()
