"""Benchmark splatfacto against the pruning methods through nerfstudio's own trainer, one GPU, one scene.

    python -m benchmarks.run --scene fox --data <fox> --protocol quick --scale 0.5 \
        --methods splatfacto,splatfacto-argp,splatfacto-safeguard \
        [--variant "argp-hidden=splatfacto-argp:--pipeline.model.irp-mode hidden"]

Each run is trained by ``nerfstudio.engine.trainer.Trainer`` from the registered method config (periodic
evaluation and the viewer off), then evaluated with the pipeline's own metrics, timed for rendering,
and exported with ``ns-export gaussian-splat``'s exporter. Results merge into
``benchmarks/results/<scene>-<protocol>.json`` (format: ../shared spec, see benchmarks/README.md),
written after every run, with a markdown table and a PSNR-vs-Gaussians plot beside it.
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
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from argp_ns.model import eval_pairs
from benchmarks.report import load_results, merge_run, write_outputs

# step-based schedules scaled by the quick protocol: (config path, applies to)
SCALED = ("max_num_iterations", "warmup_length", "stop_split_at", "stop_screen_size_at", "resolution_schedule",
          "sh_degree_interval", "reset_alpha_every", "irp_start", "irp_every", "irp_last", "prune_step")
NEVER = 10**9
# every MARK_EVERY steps a run records [seconds since the first step, Gaussians] (its "step_marks")
MARK_EVERY = 500
# mesh libraries nerfstudio's exporter script imports at its top; ExportGaussianSplat never calls them
EXPORTER_OPTIONAL = ("open3d", "pymeshlab", "xatlas", "mediapy")


def parse_variant(text: str) -> Tuple[str, str, List[str]]:
    """'name=method:flags' -> (name, method, flags)."""
    name, rest = text.split("=", 1)
    method, _, flags = rest.partition(":")
    return name, method, shlex.split(flags)


def dataparser(scene: str, data: Path):
    """The scene's dataparser, as benchmark.md fixes it."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    if scene == "fox":
        return NerfstudioDataParserConfig(data=data, downscale_factor=2, eval_mode="interval", eval_interval=8)
    if scene == "lego":
        return BlenderDataParserConfig(data=data)
    if scene == "demo":
        return BlenderDataParserConfig(data=data, ply_path=Path("points3d.ply"))
    raise SystemExit(f"benchmarks: unknown scene {scene!r} (fox, lego, demo)")


def build_config(method: str, flags: List[str], scene: str, data: Path, scale: float, device: str, out: Path, steps: Optional[int]):
    """The registered method's TrainerConfig with the protocol's scaling, the variant's flags and the scene."""
    import tyro
    from nerfstudio.configs.method_configs import all_methods

    if method not in all_methods:
        raise SystemExit(f"benchmarks: unknown method {method!r}")
    cfg = copy.deepcopy(all_methods[method])
    model = cfg.pipeline.model
    for name in SCALED:
        for obj in (cfg, model):
            if hasattr(obj, name):
                setattr(obj, name, max(1, int(round(getattr(obj, name) * scale))))
    if steps is not None:
        cfg.max_num_iterations = steps
    for opt in cfg.optimizers.values():
        if opt["scheduler"] is not None and hasattr(opt["scheduler"], "max_steps"):
            opt["scheduler"].max_steps = cfg.max_num_iterations
    if flags:
        cfg = tyro.cli(type(cfg), default=cfg, args=flags)
    cfg.pipeline.datamanager.dataparser = dataparser(scene, data)
    if scene in ("lego", "demo"):
        model.background_color = "white"  # Blender scenes: the usual white-background protocol, for every method
    cfg.pipeline.datamanager.data = data
    cfg.machine.device_type = device
    cfg.vis = "tensorboard"
    cfg.steps_per_eval_image = cfg.steps_per_eval_batch = cfg.steps_per_eval_all_images = NEVER
    cfg.steps_per_save = NEVER
    cfg.output_dir = out
    cfg.timestamp = "run"
    if device == "cpu" and method == "splatfacto":
        raise SystemExit("benchmarks: stock splatfacto needs a GPU (gsplat has no CPU rasterizer)")
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


def run_one(method: str, variant: Optional[str], flags: List[str], args) -> Dict[str, Any]:
    """Train, evaluate, time and export one run; the results entry of benchmark.md."""
    if args.keep_runs is not None:
        workdir = args.keep_runs / f"{args.scene}-{args.protocol}" / (variant or method)
        if workdir.exists():
            raise SystemExit(f"benchmarks: {workdir} exists; choose another --keep-runs folder")
    else:
        workdir = Path(tempfile.mkdtemp(prefix="argp-bench-"))
    cfg = build_config(method, flags, args.scene, args.data, args.scale, args.device, workdir, args.steps)
    warm_extensions(args.device)
    res = train(cfg)
    trainer = res["trainer"]
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    metrics = pipeline.get_average_eval_image_metrics(step=cfg.max_num_iterations, output_path=None, get_std=False)
    ms = render_ms(pipeline)
    final = model.num_points
    config_path = trainer.base_dir / "config.yml"
    n_bytes = ply_bytes(config_path, workdir / "export")
    psnr = float(metrics["psnr"])
    entry = {
        "method": method, "config": {"flags": " ".join(flags), "scale": args.scale, "max_num_iterations": cfg.max_num_iterations},
        "psnr": psnr, "ssim": float(metrics["ssim"]), "lpips": float(metrics["lpips"]) if "lpips" in metrics else None,
        "gaussians_final": int(final), "gaussians_peak": int(res["peak"]), "train_seconds": round(res["seconds"], 2),
        "steps_per_second": round(cfg.max_num_iterations / res["seconds"], 2),
        "peak_gpu_mem_mb": None if res["mem"] is None else round(res["mem"], 1),
        "render_ms": None if ms is None else round(ms, 3), "fps": None if not ms else round(1000.0 / ms, 1),
        "ply_bytes": n_bytes, "psnr_per_million": round(psnr / max(final, 1) * 1e6, 3),
        "step_marks": res["marks"], "host": host(),
        "prune_events": [{k: e[k] for k in ("step", "rule", "removed", "kept")} for e in getattr(model, "prune_events", [])],
    }
    if variant:
        entry["variant"] = variant
    del trainer, pipeline, model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return entry


def main(argv: Optional[List[str]] = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", required=True)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--protocol", choices=("quick", "paper"), default="quick")
    p.add_argument("--scale", type=float, default=None, help="quick protocol's schedule factor (default 0.5; paper: 1)")
    p.add_argument("--methods", default="", help="comma-separated ns-train method names")
    p.add_argument("--variant", action="append", default=[], help="name=method:flags (flags as on ns-train)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="override max_num_iterations (tiny CPU checks)")
    p.add_argument("--keep-runs", type=Path, default=None,
                   help="keep each trained run (config.yml, checkpoint) under DIR/<scene>-<protocol>/<variant or method>")
    args = p.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"benchmarks: no dataset at {args.data}")
    args.scale = 1.0 if args.protocol == "paper" else (args.scale or 0.5)
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1" if args.device == "cpu" else "0")
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    path = args.out / f"{args.scene}-{args.protocol}.json"
    results = load_results(path, args.scene, args.protocol, args.scale, gpu)  # refuses a mismatch before training
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    todo = [(m, None, []) for m in args.methods.split(",") if m] + [(m, n, f) for n, m, f in map(parse_variant, args.variant)]
    for method, variant, flags in todo:
        print(f"benchmarks: {args.scene} {args.protocol} x{args.scale}: {method}{' / ' + variant if variant else ''}", flush=True)
        # each run in a fresh process: no state (CUDA caches, writers, compiled kernels) leaks into the next one's time
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            entry = pool.submit(run_one, method, variant, flags, args).result()
        merge_run(results, entry, command, datetime.date.today().isoformat())
        table = write_outputs(results, path)
    print(table)
    return path


if __name__ == "__main__":
    main()
