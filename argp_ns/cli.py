"""``argp-ns``: the project's command line.

``argp-ns prune`` prunes a finished run (see :mod:`argp_ns.posthoc`).
``argp-ns demo`` makes the embedded demo scene and runs the main job on it through nerfstudio's own
tools: ``ns-train splatfacto-argp`` (a short schedule on the CPU, the normal one on a GPU),
``ns-eval``, ``ns-export gaussian-splat``, then prints a summary.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import tyro

# a short schedule that still runs every phase (densify, AOP, every IRP round, the SafeguardGS prune) on a tiny CPU
# scene; each method is given the flags it has (demo_flags)
CPU_SCHEDULE = {
    "max-num-iterations": 300,
    "pipeline.model.warmup-length": 50,
    "pipeline.model.refine-every": 25,
    "pipeline.model.reset-alpha-every": 4,
    "pipeline.model.stop-split-at": 150,
    "pipeline.model.irp-start": 150,
    "pipeline.model.irp-every": 50,
    "pipeline.model.irp-last": 250,
    "pipeline.model.resolution-schedule": 100,
    "pipeline.model.sh-degree-interval": 50,
    "pipeline.model.prune-step": 200,
}


def demo_flags(method: str, schedule: Optional[Dict[str, Any]] = None) -> List[str]:
    """The flags of ``schedule`` (default: the CPU schedule) that ``method``'s model has (each method takes only its
    own), as ns-train flags; one-line SystemExit for a method that is not one of this plugin's."""
    import dataclasses

    from nerfstudio.configs.method_configs import all_methods

    from argp_ns.model import LeanModelConfig

    def model_of(name: str):  # None for nerfstudio's placeholders of uninstalled external methods too
        return getattr(getattr(all_methods.get(name), "pipeline", None), "model", None)

    if not isinstance(model_of(method), LeanModelConfig):
        ours = sorted(m for m in all_methods if isinstance(model_of(m), LeanModelConfig))
        raise SystemExit(f"argp-ns demo: --method must be one of {', '.join(ours)}, got {method!r}")
    fields = {f.name for f in dataclasses.fields(model_of(method))}
    model = "pipeline.model."
    return [f"--{k}={v}" for k, v in (CPU_SCHEDULE if schedule is None else schedule).items()
            if not k.startswith(model) or k[len(model):].replace("-", "_") in fields]


@dataclass
class Demo:
    """Train splatfacto-argp (or another of the plugin's methods) on the embedded demo scene, evaluate, export a PLY,
    print a summary."""

    output_dir: Path = Path("outputs/argp-demo")
    """Where the scene, the run, the metrics and the PLY go."""
    device: Optional[str] = None
    """cpu or cuda; default: cuda when a GPU is present."""
    method: str = "splatfacto-argp"
    """Method to train: any of this plugin's (splatfacto-argp, splatfacto-safeguard, their -big variants, splatfacto-mcmc)."""

    def main(self) -> None:
        from argp_ns.demo_scene import make_demo_scene
        from argp_ns.trainer import RESUME_HINT

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device not in ("cpu", "cuda"):
            sys.exit(f"argp-ns demo: --device must be cpu or cuda, got {device}")
        if device == "cuda" and not torch.cuda.is_available():
            sys.exit("argp-ns demo: --device cuda, but there is no CUDA GPU (torch.cuda.is_available() is False); use --device cpu")
        flags: List[str] = demo_flags(self.method) if device == "cpu" else []
        scene = self.output_dir / "scene"
        made = not (scene / "transforms_train.json").exists()
        if made:
            make_demo_scene(scene)
        env = dict(os.environ, TORCHDYNAMO_DISABLE=os.environ.get("TORCHDYNAMO_DISABLE", "1" if device == "cpu" else "0"))
        env[RESUME_HINT] = "run the same argp-ns demo command again to continue from it"  # ns-train's one line on Ctrl-C
        resume = self.resume_flags(CPU_SCHEDULE["max-num-iterations"] if device == "cpu" else None)
        if resume:
            flags = [f for f in flags if not f.startswith("--max-num-iterations")]
        t0 = time.time()
        try:
            run(["ns-train", self.method, "--machine.device-type", device, "--vis", "tensorboard",
                 "--output-dir", str(self.output_dir / "runs"), "--experiment-name", "demo", "--timestamp", "latest",
                 "--steps-per-eval-all-images", "1000000", "--pipeline.model.background-color", "white", *flags, *resume,
                 "blender-data", "--data", str(scene), "--ply-path", "points3d.ply"], env)
        except SystemExit:
            if made and not (self.output_dir / "runs").exists():  # stopped at its start checks: leave nothing behind
                shutil.rmtree(scene)
                if not any(self.output_dir.iterdir()):
                    self.output_dir.rmdir()
            raise
        train_s = time.time() - t0
        config = self.output_dir / "runs" / "demo" / self.method / "latest" / "config.yml"
        metrics = self.output_dir / "metrics.json"
        run(["ns-eval", "--load-config", str(config), "--output-path", str(metrics)], env)
        run(["ns-export", "gaussian-splat", "--load-config", str(config), "--output-dir", str(self.output_dir / "export")], env)
        results = json.loads(metrics.read_text())["results"]
        from plyfile import PlyData

        ply = self.output_dir / "export" / "splat.ply"
        n = PlyData.read(str(ply))["vertex"].count
        print(f"\nargp-ns demo ({self.method}, {device}): trained in {train_s:.0f} s")
        print(f"  Gaussians exported: {n:,}")
        print(f"  PSNR {results['psnr']:.2f}  SSIM {results['ssim']:.3f}" + (f"  LPIPS {results['lpips']:.3f}" if "lpips" in results else "  (LPIPS absent: no pretrained weights)"))
        print(f"  run: {config.parent}\n  metrics: {metrics}\n  ply: {ply}")

    def resume_flags(self, total: Optional[int]) -> List[str]:
        """``--load-dir`` and the steps left when an earlier demo run of this method stopped before its last step
        (``total`` steps; None: the method's own), from its newest intact checkpoint; [] to start from step 0 (a
        finished or an unusable earlier run is said in one line)."""
        from nerfstudio.configs.method_configs import all_methods

        from argp_ns.checks import ConfigError, resolve_checkpoint

        models = self.output_dir / "runs" / "demo" / self.method / "latest" / "nerfstudio_models"
        if not models.is_dir():
            return []
        total = total or all_methods[self.method].max_num_iterations
        try:
            step, path, _ = resolve_checkpoint(models, None, fall_back=True)
        except ConfigError as err:
            print(f"argp-ns demo: starting over: {err}")
            return []
        if step >= total - 1:
            print(f"argp-ns demo: {models.parent} holds a finished run (step {step}); training again from step 0")
            return []
        print(f"argp-ns demo: continuing the interrupted run from its checkpoint at step {step} ({path})")
        return ["--load-dir", str(models), f"--max-num-iterations={total - step - 1}"]


def run(cmd: List[str], env: dict) -> None:
    """Run a command, stopping with its exit code and a one-line message when it fails. A Ctrl-C goes to the command
    (it shares the terminal) and this process waits for it: ns-train saves its checkpoint, and a rerun of the demo
    continues from it."""
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, env=env)
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted and cmd[0] == "ns-train":
        sys.exit(130)  # ns-train said where its checkpoint is and how to continue, in its one line
    if interrupted:
        sys.exit("argp-ns demo: interrupted; run the same argp-ns demo command again to continue from the checkpoint")
    if code:
        sys.exit(f"argp-ns: `{cmd[0]}` failed with exit code {code}")


def main() -> None:
    from argp_ns.posthoc import Prune

    tyro.extras.subcommand_cli_from_dict({"demo": Demo, "prune": Prune}).main()


if __name__ == "__main__":
    main()
