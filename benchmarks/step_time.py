"""One training step of stock splatfacto against ours, at a fixed Gaussian count, timed and profiled.

    python -m benchmarks.step_time --data <fox> --downscales 2,1 --train-steps 3000 --steps 300

A stock ``splatfacto`` trainer trains ``--train-steps`` steps of the quick protocol (schedules x``--scale``) on
the scene at the first downscale, so that the model has a real count and SH; its Gaussians are then copied into
a fresh stock trainer and a ``splatfacto-argp`` trainer (scored prunes off) for every downscale, both with fresh
optimizers and the same camera order. Growing, pruning and opacity resets are switched off, so the count stays
fixed. Per case and phase (``densify``: gsplat's per-step statistics update on, as before refine_stop; ``refine``:
off, as after it) each trainer runs ``--warmup`` steps, then ``--trials`` timed trials of ``--steps`` steps
between two synchronisations, alternating stock and ours after one untimed alternating trial (the median wall ms
per step is reported). Once every case is timed, each is installed again and runs ``--profile-steps`` steps under
torch.profiler (no timing follows a profile in the process: the cases timed after one ran slower): GPU-busy ms per
step (kernel time), kernel launches and host synchronisations per step, and the top CPU-side and GPU-side costs,
then as many steps timed part by part on the host (:func:`host_breakdown`: datamanager, render, loss, backward, optimizer, scheduler,
callbacks). ``--fractions 1,0.3,0.15`` repeats every case with a random subset of the Gaussians (the count sweep).
The step is nerfstudio's own: ``Trainer.train_iteration`` with the trainer's callbacks before and after it.
Writes ``benchmarks/results/step-time.json`` (format: ../shared spec benchmark.md) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

STOCK, OURS = "splatfacto", "splatfacto-argp"
START = 20000  # step numbers of the timed steps: full SH degree and full resolution, as late in training
LAUNCH = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaLaunchCooperativeKernel")
SYNC = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def trainer_for(method: str, data: Path, downscale: int, scale: float, out: Path):
    """A set-up nerfstudio Trainer of ``method`` as the harness builds it (:func:`benchmarks.run.build_config`: quick
    protocol schedules, no viewer, evaluation or checkpoints) on a nerfstudio-data scene at ``downscale``; ours
    with its scored prunes and PSNR report off."""
    from benchmarks.run import build_config
    from benchmarks.scenes import SceneOptions

    flags = ["--pipeline.model.scored-prune", "False", "--pipeline.model.report-psnr", "off"] if method == OURS else []
    cfg = build_config(method, flags, SceneOptions("nerfstudio-data", downscale=downscale), data, scale, "cuda", out, None)
    cfg.timestamp = f"{method}-{downscale}"
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def run_steps(trainer, start: int, n: int) -> None:
    """n training steps as nerfstudio's Trainer.train runs them (callbacks, train_iteration, callbacks)."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation as Loc

    for step in range(start, start + n):
        trainer.pipeline.train()
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=Loc.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=Loc.AFTER_TRAIN_ITERATION)


# the host-side parts of one step that :func:`host_breakdown` times: name -> (owner path from the trainer, method)
BREAKDOWN = {"datamanager": ("pipeline.datamanager", "next_train"), "render": ("pipeline.model", "get_outputs"),
             "metrics": ("pipeline.model", "get_metrics_dict"), "loss": ("pipeline.model", "get_loss_dict"),
             "zero_grad": ("optimizers", "zero_grad_some"), "backward": ("", "backward"),
             "optimizer": ("optimizers", "optimizer_scaler_step_some"), "scheduler": ("optimizers", "scheduler_step_all")}


@contextlib.contextmanager
def timed_calls(targets: Dict[str, Tuple[Any, str]], seconds: Dict[str, float]) -> Iterator[Dict[str, float]]:
    """While open, each ``(owner, method)`` of ``targets`` is replaced by a wrapper that adds its wall seconds to
    ``seconds[name]``; the originals are put back after (an owner's own attribute, or its class's again)."""
    saved = []
    for name, (owner, attr) in targets.items():
        fn: Callable = getattr(owner, attr)

        def timed(*args, _fn=fn, _name=name, **kwargs):
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                seconds[_name] = seconds.get(_name, 0.0) + time.perf_counter() - t0

        saved.append((owner, attr, attr in vars(owner), fn))
        setattr(owner, attr, timed)
    try:
        yield seconds
    finally:
        for owner, attr, own, fn in reversed(saved):
            setattr(owner, attr, fn) if own else delattr(owner, attr)


def host_breakdown(trainer, start: int, n: int) -> Dict[str, float]:
    """Wall ms per step of each part of :data:`BREAKDOWN`, of the callbacks before and after the iteration, and the
    rest (``other``: nerfstudio's glue, the loss sum, the grad scaler), over n steps with no synchronisation of our
    own: the GPU runs behind, so each figure is host time, except that a part which synchronises (``syncs_per_step``
    of the profile) also holds the GPU time it waits for."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation as Loc

    def owner(path: str) -> Any:
        obj = trainer
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part)
        return obj

    targets = {name: (owner(path) if path else torch.autograd, attr) for name, (path, attr) in BREAKDOWN.items()}
    seconds: Dict[str, float] = {}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t_start = time.perf_counter()
    with timed_calls(targets, seconds):
        for step in range(start, start + n):
            trainer.pipeline.train()
            t0 = time.perf_counter()
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=Loc.BEFORE_TRAIN_ITERATION)
            t1 = time.perf_counter()
            trainer.train_iteration(step)
            t2 = time.perf_counter()
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=Loc.AFTER_TRAIN_ITERATION)
            seconds["callbacks_before"] = seconds.get("callbacks_before", 0.0) + t1 - t0
            seconds["callbacks_after"] = seconds.get("callbacks_after", 0.0) + time.perf_counter() - t2
    total = time.perf_counter() - t_start
    sync()
    seconds["other"] = total - sum(seconds.values())
    return {name: round(1000.0 * value / n, 3) for name, value in seconds.items()}


def subset(gaussians: Dict[str, torch.Tensor], fraction: float, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A random ``fraction`` of the Gaussians (the same rows of every parameter), for the count sweep."""
    n = next(iter(gaussians.values())).shape[0]
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: max(1, round(fraction * n))]
    keep = keep.sort().values.to(next(iter(gaussians.values())).device)
    return {name: value[keep] for name, value in gaussians.items()}


def install(trainer, gaussians: Dict[str, torch.Tensor], phase: str) -> None:
    """Give ``trainer`` these Gaussians with fresh optimizers and schedulers (the dicts its callbacks hold are
    updated in place), a fresh strategy state, the camera order from the sampler's seed, and no growing, pruning
    or opacity reset; ``phase`` densify keeps gsplat's per-step statistics update, refine skips it."""
    from nerfstudio.engine.optimizers import Optimizers

    from benchmarks.run import NEVER

    model = trainer.pipeline.model
    for name, value in gaussians.items():
        model.gauss_params[name] = torch.nn.Parameter(value.detach().clone())
    fresh = Optimizers(trainer.config.optimizers.copy(), trainer.pipeline.get_param_groups())
    for old, new in ((trainer.optimizers.optimizers, fresh.optimizers), (trainer.optimizers.schedulers, fresh.schedulers)):
        old.clear()
        old.update(new)
    if hasattr(model, "rebind_optimizers"):
        model.rebind_optimizers(trainer.optimizers.optimizers)
    strategy = model.strategy
    strategy.refine_every = strategy.reset_every = NEVER
    strategy.refine_stop_iter = NEVER if phase == "densify" else 0
    model.strategy_state = strategy.initialize_state(scene_scale=1.0)
    dm = trainer.pipeline.datamanager
    dm.random_generator = random.Random(dm.config.train_cameras_sampling_seed)
    dm.train_unseen_cameras = dm.sample_train_cameras()


def profile(trainer, start: int, n: int) -> Dict[str, Any]:
    """torch.profiler over n steps: GPU-busy ms, launches and host syncs per step, top CPU and GPU costs."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_steps(trainer, start, n)
        torch.cuda.synchronize()
    events = prof.events()
    device_us = lambda e: getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0)  # noqa: E731
    # kernels and copies; user annotations (e.g. "Optimizer.step#Adam.step") span kernels on the GPU timeline too
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and "#" not in e.name and not getattr(e, "is_user_annotation", False)]
    gpu_ms = sum(device_us(e) for e in kernels) / 1000.0 / n
    launches = sum(1 for e in events if e.name in LAUNCH) / n
    syncs = sum(1 for e in events if e.name in SYNC) / n
    by_cpu: Dict[str, float] = {}
    by_gpu: Dict[str, float] = {}
    for e in kernels:
        by_gpu[e.name] = by_gpu.get(e.name, 0.0) + device_us(e)
    for e in events:
        if e.device_type != DeviceType.CUDA and (e.name.startswith("aten::") or e.name.startswith("cuda")):
            by_cpu[e.name] = by_cpu.get(e.name, 0.0) + e.self_cpu_time_total
    top = lambda d: [[k[:80], round(v / 1000.0 / n, 4)] for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:10]]  # noqa: E731
    return {"gpu_ms": round(gpu_ms, 3), "launches_per_step": round(launches, 1), "syncs_per_step": round(syncs, 2),
            "top_cpu_ms": top(by_cpu), "top_gpu_ms": top(by_gpu)}


def start_case(trainer, gaussians: Dict[str, torch.Tensor], phase: str, warmup: int) -> int:
    """:func:`install` these Gaussians and run ``warmup`` steps from START; returns the next step number."""
    install(trainer, gaussians, phase)
    run_steps(trainer, START, warmup)
    return START + warmup


def time_steps(trainer, start: int, n: int) -> float:
    """Wall milliseconds per step over n steps between two synchronisations."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run_steps(trainer, start, n)
    torch.cuda.synchronize()
    return 1000.0 * (time.perf_counter() - t0) / n


def measure(args) -> Dict[str, Any]:
    """Train the base model, then time and profile stock and ours for every downscale and phase."""
    from benchmarks.run import host, source_commit, warm_extensions

    warm_extensions("cuda")
    out = Path(args.work)
    base = trainer_for(STOCK, args.data, args.downscales[0], args.scale, out)
    run_steps(base, 0, args.train_steps)
    gaussians = {k: v.detach().clone() for k, v in base.pipeline.model.gauss_params.items()}
    del base
    torch.cuda.empty_cache()
    cases: List[Dict[str, Any]] = []
    for d in args.downscales:
        trainers = {name: trainer_for(name, args.data, d, args.scale, out) for name in (STOCK, OURS)}
        dm = trainers[STOCK].pipeline.datamanager
        height, width = dm.cached_train[0]["image"].shape[:2]  # after undistortion's crop
        timed = []
        # every case is timed before any is profiled: the 118a9f3 sweep profiled each case right after timing it, and
        # its later (smaller) cases were 17-34 % slower than the first, stock too; timed first (bdfc480) they are not
        for phase, fraction in [(ph, f) for ph in args.phases for f in args.fractions]:
            these = subset(gaussians, fraction) if fraction < 1.0 else gaussians
            case: Dict[str, Any] = {"scene": args.scene, "downscale": d, "width": int(width), "height": int(height),
                                    "gaussians": int(these["means"].shape[0]), "fraction": fraction, "steps": args.steps,
                                    "phase": phase}
            for name in (STOCK, OURS):
                step = start_case(trainers[name], these, phase, args.warmup)
            trials: Dict[str, List[float]] = {"stock": [], "ours": []}
            # one untimed alternating round first: the first case of a process measured 6.75 and then 8.19 ms in
            # two runs while stock stayed put; alternate, so that a drift of the machine reaches both alike
            for i in range(args.trials + 1):
                for key, name in (("stock", STOCK), ("ours", OURS)):
                    ms = time_steps(trainers[name], step, args.steps)
                    if i:
                        trials[key].append(round(ms, 3))
                step += args.steps
            case["trials_ms"] = trials
            for key in ("stock", "ours"):
                case[f"{key}_ms"] = statistics.median(trials[key])
            case["speedup"] = round(case["stock_ms"] / case["ours_ms"], 3)
            timed.append((case, these))
        for case, these in timed:
            for key, name in (("stock", STOCK), ("ours", OURS)):
                tr = trainers[name]
                step = start_case(tr, these, case["phase"], args.warmup)
                prof = profile(tr, step, args.profile_steps)
                case[f"{key}_gpu_ms"] = prof.pop("gpu_ms")
                prof["host_ms"] = host_breakdown(tr, step + args.profile_steps, args.profile_steps)
                case.setdefault("profile", {})[key] = prof
                assert tr.pipeline.model.num_points == case["gaussians"], "the count changed during the timed steps"
            cases.append(case)
            print(f"step_time: {args.scene} x{d} {case['phase']} {case['gaussians']:,}: stock {case['stock_ms']:.2f} ms (GPU {case['stock_gpu_ms']:.2f}), "
                  f"ours {case['ours_ms']:.2f} ms (GPU {case['ours_gpu_ms']:.2f}), {case['speedup']:.2f}x", flush=True)
        del trainers
        torch.cuda.empty_cache()
    return {"gpu": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(), "host": host(),
            "commit": source_commit(), "train_steps": args.train_steps, "cases": cases}


def table(result: Dict[str, Any]) -> str:
    """Markdown table of the cases."""
    rows = ["| scene | size | phase | Gaussians | stock ms | ours ms | speed-up | stock GPU ms | ours GPU ms | launches stock/ours | syncs stock/ours |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in result["cases"]:
        p = c.get("profile", {})
        rows.append(f"| {c['scene']} | {c['width']}x{c['height']} | {c.get('phase', '')} | {c['gaussians']:,} | {c['stock_ms']:.2f} | "
                    f"{c['ours_ms']:.2f} | {c['stock_ms'] / c['ours_ms']:.2f}x | {c['stock_gpu_ms']:.2f} | {c['ours_gpu_ms']:.2f} | "
                    f"{p.get('stock', {}).get('launches_per_step', '–')}/{p.get('ours', {}).get('launches_per_step', '–')} | "
                    f"{p.get('stock', {}).get('syncs_per_step', '–')}/{p.get('ours', {}).get('syncs_per_step', '–')} |")
    return "\n".join(rows)


def breakdown_table(result: Dict[str, Any]) -> str:
    """Markdown table of the host ms per step of each part (:func:`host_breakdown`), per case and method."""
    parts = list(BREAKDOWN) + ["callbacks_before", "callbacks_after", "other"]
    rows = ["| case | method | wall ms | GPU ms | " + " | ".join(parts) + " |", "| --- " * (len(parts) + 4) + "|"]
    for c in result["cases"]:
        for key in ("stock", "ours"):
            host = c.get("profile", {}).get(key, {}).get("host_ms", {})
            rows.append(f"| {c['phase']} {c['width']}x{c['height']} {c['gaussians']:,} | {key} | {c[key + '_ms']:.2f} | "
                        f"{c[key + '_gpu_ms']:.2f} | " + " | ".join(f"{host.get(n, float('nan')):.2f}" for n in parts) + " |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="a nerfstudio-data scene (transforms.json)")
    p.add_argument("--scene", default="fox")
    p.add_argument("--downscales", default="2,1", help="comma-separated downscale factors; the first trains the base model")
    p.add_argument("--phases", default="densify,refine")
    p.add_argument("--fractions", default="1", help="comma-separated fractions of the base model's Gaussians, each a case (a random subset)")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--scale", type=float, default=0.5, help="quick protocol's schedule factor for the base model")
    p.add_argument("--steps", type=int, default=300, help="steps of one timed trial")
    p.add_argument("--trials", type=int, default=3, help="timed trials per method and case, alternating; the median is reported")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--profile-steps", type=int, default=50)
    p.add_argument("--work", default="/tmp/argp-step-time")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "step-time.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("step_time: needs a CUDA GPU (stock splatfacto has no CPU rasterizer)")
    if not (args.data / "transforms.json").exists():
        raise SystemExit(f"step_time: no transforms.json in {args.data}")
    args.downscales = [int(x) for x in args.downscales.split(",")]
    args.phases = [x for x in args.phases.split(",") if x]
    args.fractions = [float(x) for x in args.fractions.split(",") if x]
    if not all(0.0 < f <= 1.0 for f in args.fractions):
        raise SystemExit(f"step_time: --fractions must be in (0, 1], got {args.fractions}")
    result = measure(args)
    result["command"] = "python -m benchmarks.step_time " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(breakdown_table(result))
    return args.out


if __name__ == "__main__":
    main()
