"""End to end on the CPU: ns-train (twin rasterizer), ns-eval, ns-export gaussian-splat, resume."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from plyfile import PlyData

from argp_ns.cli import CPU_SCHEDULE

ENV = dict(os.environ, TORCHDYNAMO_DISABLE="1")


def train(method: str, scene: Path, out: Path, extra=(), steps: int = 300, timestamp: str = "t"):
    flags = [f"--{k}={v}" for k, v in CPU_SCHEDULE.items() if k != "max-num-iterations"]
    if method == "splatfacto-safeguard":
        flags = [f for f in flags if "irp" not in f] + ["--pipeline.model.prune-step=200"]
    cmd = ["ns-train", method, "--machine.device-type", "cpu", "--vis", "tensorboard", "--output-dir", str(out),
           "--timestamp", timestamp, f"--max-num-iterations={steps}", "--steps-per-eval-all-images=1000000",
           "--steps-per-save=100", "--pipeline.model.background-color=white", *flags, *extra,
           "blender-data", "--data", str(scene), "--ply-path", "points3d.ply"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob(f"*/{method}/{timestamp}/config.yml")), proc.stdout


@pytest.fixture(scope="module")
def argp_run(demo_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config, log = train("splatfacto-argp", demo_scene, out)
    return out, config, log


def test_train_logs_every_prune_rule(argp_run):
    _, _, log = argp_run
    assert "aop removed" in log
    assert log.count("irp removed") == 2  # rounds at 200 and 250 (150 only marks)


def test_eval_and_export(argp_run, tmp_path):
    _, config, _ = argp_run
    metrics = tmp_path / "m.json"
    subprocess.run(["ns-eval", "--load-config", str(config), "--output-path", str(metrics)], env=ENV, check=True)
    results = json.loads(metrics.read_text())["results"]
    assert results["psnr"] > 12 and "lpips" not in results
    subprocess.run(["ns-export", "gaussian-splat", "--load-config", str(config), "--output-dir", str(tmp_path)], env=ENV, check=True)
    ply = PlyData.read(str(tmp_path / "splat.ply"))
    ckpt = torch.load(sorted((config.parent / "nerfstudio_models").glob("*.ckpt"))[-1], map_location="cpu")
    logits = ckpt["pipeline"]["_model.gauss_params.opacities"].flatten()
    expected = int(((logits > -5.5373) & torch.isfinite(logits)).sum())
    assert ply["vertex"].count == expected


def test_resume_continues_with_live_optimizers(argp_run, demo_scene):
    out, config, _ = argp_run
    _, log = train("splatfacto-argp", demo_scene, out, extra=["--load-dir", str(config.parent / "nerfstudio_models")],
                   steps=330, timestamp="resumed")
    assert "irp removed" not in log  # every round happened before the checkpoint at step 299


def test_safeguard_prunes_inside_the_run(demo_scene, tmp_path):
    _, log = train("splatfacto-safeguard", demo_scene, tmp_path, steps=220)
    assert "safeguard removed" in log
