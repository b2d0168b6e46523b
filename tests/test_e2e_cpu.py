"""End to end on the CPU: ns-train (twin rasterizer), ns-eval, ns-export gaussian-splat, resume."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from plyfile import PlyData

from argp_ns.cli import demo_flags

ENV = dict(os.environ, TORCHDYNAMO_DISABLE="1")


def train(method: str, scene: Path, out: Path, extra=(), steps: int = 300, timestamp: str = "t"):
    flags = [f for f in demo_flags(method) if not f.startswith("--max-num-iterations")]
    cmd = ["ns-train", method, "--machine.device-type", "cpu", "--vis", "tensorboard", "--output-dir", str(out),
           "--timestamp", timestamp, f"--max-num-iterations={steps}", "--steps-per-eval-all-images=1000000",
           "--steps-per-save=100", "--pipeline.model.background-color=white", *flags, *extra,
           "blender-data", "--data", str(scene), "--ply-path", "points3d.ply"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob(f"*/{method}/{timestamp}/config.yml")), proc.stdout


def test_bad_flag_fails_at_start_with_one_line(demo_scene, tmp_path):
    cmd = ["ns-train", "splatfacto-argp", "--machine.device-type", "cpu", "--vis", "tensorboard", "--output-dir",
           str(tmp_path), "--pipeline.model.irp-preset", "earlier", "--pipeline.model.mark-ratio", "1.5",
           "blender-data", "--data", str(demo_scene), "--ply-path", "points3d.ply"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "argp_ns: mark_ratio must be in (0, 1), got 1.5"
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.fixture(scope="module")
def argp_run(demo_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config, log = train("splatfacto-argp", demo_scene, out, extra=["--save-only-latest-checkpoint=False"])
    return out, config, log


@pytest.mark.slow
def test_train_logs_every_prune_rule(argp_run):
    _, _, log = argp_run
    assert "aop removed" in log
    assert log.count("irp removed") == 2  # rounds at 200 and 250 (150 only marks)


@pytest.mark.slow
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


@pytest.mark.slow
def test_resume_continues_with_live_optimizers(argp_run, demo_scene):
    out, config, _ = argp_run
    _, log = train("splatfacto-argp", demo_scene, out, extra=["--load-dir", str(config.parent / "nerfstudio_models")],
                   steps=330, timestamp="resumed")
    assert "irp removed" not in log  # every round happened before the checkpoint at step 299


@pytest.mark.slow
def test_resume_mid_schedule_matches_the_uninterrupted_run(argp_run, demo_scene):
    """Resume from the checkpoint at step 200 (after the IRP round at 200, before the one at 250): the events so far
    come back from the checkpoint, the next round lands at the same step on the same population, and the count
    arithmetic after it is that of the uninterrupted run."""
    out, config, _ = argp_run
    ckpts = config.parent / "nerfstudio_models"
    assert (ckpts / "step-000000200.ckpt").is_file()
    resumed, log = train("splatfacto-argp", demo_scene, out, extra=["--load-dir", str(ckpts), "--load-step", "200"],
                         steps=99, timestamp="mid")
    full = json.loads((config.parent / "pruning_report.json").read_text())["events"]
    again = json.loads((resumed.parent / "pruning_report.json").read_text())["events"]
    key = lambda e: (e["step"], e["rule"], e["removed"], e["kept"])  # noqa: E731
    assert [key(e) for e in again if e["step"] <= 200] == [key(e) for e in full if e["step"] <= 200]
    (a,) = [e for e in full if e["step"] > 200]
    (b,) = [e for e in again if e["step"] > 200]
    assert (b["step"], b["rule"], b["removed"] + b["kept"]) == (a["step"], a["rule"], a["removed"] + a["kept"]) == (250, "irp", a["removed"] + a["kept"])
    assert abs(b["kept"] - a["kept"]) <= max(2, a["kept"] // 20)  # same candidates; only the scores' training views order differs
    assert log.count("irp removed") == 1


@pytest.mark.slow
def test_safeguard_prunes_inside_the_run(demo_scene, tmp_path):
    _, log = train("splatfacto-safeguard", demo_scene, tmp_path, steps=220)
    assert "safeguard removed" in log
    kept = int(log.split("top-1 keeps ")[1].split(" (pixel scope)")[0].replace(",", ""))
    assert f"kept {kept:,}" in log  # the prune keeps exactly the pass's pixel-scope survivors


@pytest.mark.slow
def test_safeguard_tile_scope_reports_both_scopes(demo_scene, tmp_path):
    _, log = train("splatfacto-safeguard", demo_scene, tmp_path, steps=220, extra=["--pipeline.model.topk-scope=tile"])
    counts = log.split("top-1 keeps ")[1].split(" of ")[0]
    pixel = int(counts.split(" (pixel scope)")[0].replace(",", ""))
    tile = int(counts.split(", ")[1].split(" (tile scope)")[0].replace(",", ""))
    assert f"kept {tile:,}" in log and tile != pixel


@pytest.mark.slow
def test_pruning_report_written(argp_run):
    _, config, log = argp_run
    report = json.loads((config.parent / "pruning_report.json").read_text())
    rules = [e["rule"] for e in report["events"]]
    assert rules.count("irp") == 2 and "aop" in rules
    irp = [e for e in report["events"] if e["rule"] == "irp"]
    assert all(e["psnr_before"] is not None and e["psnr_after"] is not None for e in irp)
    assert report["final_gaussians"] == irp[-1]["kept"] and report["counts"][-1][1] == report["final_gaussians"]
    assert (config.parent / "pruning_report.png").stat().st_size > 0
    assert "prune events" in log


@pytest.mark.slow
def test_posthoc_prune_writes_a_loadable_run(argp_run, tmp_path):
    _, config, _ = argp_run
    out = tmp_path / "pruned"
    proc = subprocess.run(["argp-ns", "prune", "--load-config", str(config), "--output-dir", str(out), "--method", "safeguard"],
                          env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Gaussians" in proc.stdout and "eval PSNR" in proc.stdout
    new_config = next(out.glob("*/splatfacto-safeguard/pruned/config.yml"))
    # the pruned checkpoint keeps the run's Adam moments, sliced to the kept Gaussians, and its schedulers
    (ckpt,) = new_config.parent.glob("nerfstudio_models/*.ckpt")
    state = torch.load(ckpt, map_location="cpu")
    n = state["pipeline"]["_model.gauss_params.means"].shape[0]
    for name in ("means", "opacities", "features_dc"):
        moments = state["optimizers"][name]["state"][0]
        assert moments["exp_avg"].shape[0] == moments["exp_avg_sq"].shape[0] == n
    assert state["schedulers"]
    subprocess.run(["ns-eval", "--load-config", str(new_config), "--output-path", str(tmp_path / "m.json")], env=ENV, check=True)
    again = subprocess.run(["argp-ns", "prune", "--load-config", str(config), "--output-dir", str(out)], env=ENV, capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_posthoc_refuses_other_methods_and_missing_data(argp_run, tmp_path):
    from nerfstudio.configs.method_configs import all_methods

    other = all_methods["nerfacto"]
    other.output_dir = tmp_path
    other.timestamp = "x"
    other.save_config()
    cfg = next(tmp_path.glob("**/config.yml"))
    proc = subprocess.run(["argp-ns", "prune", "--load-config", str(cfg), "--output-dir", str(tmp_path / "o")], env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0 and "not a splatfacto method" in proc.stderr
    _, config, _ = argp_run
    import yaml

    cfg = yaml.load(config.read_text(), Loader=yaml.Loader)
    cfg.pipeline.datamanager.data = cfg.pipeline.datamanager.dataparser.data = tmp_path / "nowhere"
    moved = tmp_path / "moved.yml"
    moved.write_text(yaml.dump(cfg))
    proc = subprocess.run(["argp-ns", "prune", "--load-config", str(moved), "--output-dir", str(tmp_path / "o")], env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0 and "nowhere is not there (moved or deleted?)" in proc.stderr and not (tmp_path / "o").exists()
    inside = config.parent / "pruned"  # a later run there could overwrite its source
    proc = subprocess.run(["argp-ns", "prune", "--load-config", str(config), "--output-dir", str(inside)], env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0 and not inside.exists()
    assert proc.stderr.strip().splitlines()[-1] == (f"argp-ns prune: output directory {inside} is inside the source run "
                                                    f"{config.parent}; a later run there could overwrite its source: "
                                                    "choose a folder outside it")


@pytest.mark.slow
def test_score_pass_benchmark_on_a_trained_run(argp_run, tmp_path):
    from benchmarks import score_pass

    _, config, _ = argp_run
    result = score_pass.main(["--load-config", str(config), "--out", str(tmp_path / "sp.json"), "--case", "1:safeguard",
                              "--case", "4:57", "--recovery", "--check-views", "2"])
    assert result["gpu"] == "cpu" and result["kernel_ms"] is None and result["torch_ms"] > 0 and result["render_ms"] > 0
    assert 0 < result["kept"] <= result["gaussians"] and json.loads((tmp_path / "sp.json").read_text()) == result
    first, k4, rec = result["cases"]
    assert (first["top_k"], first["views"], first["kept"]) == (1, result["views"], result["kept"])
    assert (k4["top_k"], k4["code"], k4["views"]) == (4, 57, 2) and rec["recovery"] and rec["views"] == 2
    with pytest.raises(SystemExit):
        score_pass.main(["--load-config", str(config), "--case", "0:safeguard"])


@pytest.mark.slow
def test_posthoc_finetune_resumes_the_pruned_run(argp_run, tmp_path):
    _, config, _ = argp_run
    out = tmp_path / "tuned"
    proc = subprocess.run(["argp-ns", "prune", "--load-config", str(config), "--output-dir", str(out), "--method", "radsplat",
                           "--radsplat-threshold", "0.05", "--finetune-steps", "4"], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pruned = int(proc.stdout.split(" -> ")[1].split(" Gaussians")[0].replace(",", ""))
    tuned = int(proc.stdout.split("fine-tuned 4 steps: ")[1].split(" Gaussians")[0].replace(",", ""))
    assert tuned == pruned  # no densification, no second prune
    new_config = next(out.glob("*/splatfacto-safeguard/pruned/config.yml"))
    steps = sorted(int(p.stem.split("-")[1]) for p in new_config.parent.glob("nerfstudio_models/*.ckpt"))
    assert steps[-1] == 299 + 4, steps  # the demo run ends at step 299; four more steps
    subprocess.run(["ns-eval", "--load-config", str(new_config), "--output-path", str(tmp_path / "m.json")], env=ENV, check=True)
    bad = subprocess.run(["argp-ns", "prune", "--load-config", str(config), "--output-dir", str(tmp_path / "x"), "--finetune-steps", "-1"],
                         env=ENV, capture_output=True, text=True)
    assert bad.returncode != 0 and "finetune-steps" in bad.stderr.strip().splitlines()[-1] and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_resume_binds_the_checkpoint_state_to_the_live_parameters(argp_run, tmp_path):
    """nerfstudio's Trainer resuming from step 200: every Gaussian parameter, every Adam moment and the IRP candidates
    are the checkpoint's, each optimizer holds the live Parameter, and the next prune is the round at 250."""
    import yaml

    _, config, _ = argp_run
    cfg = yaml.load(config.read_text(), Loader=yaml.Loader)
    cfg.load_dir, cfg.load_step = config.parent / "nerfstudio_models", 200
    cfg.output_dir, cfg.timestamp, cfg.vis = tmp_path, "resume", "tensorboard"
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    saved = torch.load(cfg.load_dir / "step-000000200.ckpt", map_location="cpu")
    model = trainer.pipeline.model
    assert trainer._start_step == 201
    for name, param in model.gauss_params.items():
        assert torch.equal(param.detach(), saved["pipeline"][f"_model.gauss_params.{name}"]), name
        opt = trainer.optimizers.optimizers[name]
        assert opt.param_groups[0]["params"][0] is param
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[param][key], saved["optimizers"][name]["state"][0][key]), (name, key)
    cand = model.strategy_state["irp_candidates"]
    assert cand.shape[0] == model.num_points and cand.any()
    assert model.strategy.next_prune(201) == (250, "irp")


OUR_METHODS = ("splatfacto-argp", "splatfacto-safeguard", "splatfacto-argp-big", "splatfacto-safeguard-big", "splatfacto-mcmc")


@pytest.mark.parametrize("method", OUR_METHODS)
def test_demo_gives_each_method_only_flags_it_takes(method):
    import tyro
    from nerfstudio.configs.method_configs import all_methods

    flags = demo_flags(method)
    base = all_methods[method]
    cfg = tyro.cli(type(base), default=base, args=flags, config=(tyro.conf.FlagConversionOff,))
    assert cfg.max_num_iterations == 300 and cfg.pipeline.model.refine_every == 25
    assert any("prune-step" in f for f in flags) == hasattr(cfg.pipeline.model, "prune_step")
    assert any("irp-" in f for f in flags) == hasattr(cfg.pipeline.model, "irp_start")


def test_demo_refuses_a_method_that_is_not_ours_in_one_line():
    with pytest.raises(SystemExit) as err:
        demo_flags("splatfacto")
    assert str(err.value).startswith("argp-ns demo: --method must be one of splatfacto-argp, splatfacto-argp-big")


@pytest.mark.slow
def test_demo_runs_splatfacto_safeguard(tmp_path):
    proc = subprocess.run(["argp-ns", "demo", "--method", "splatfacto-safeguard", "--device", "cpu", "--output-dir",
                           str(tmp_path)], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "argp-ns demo (splatfacto-safeguard, cpu)" in proc.stdout and "safeguard removed" in proc.stdout


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_the_printed_resume_finishes_the_run(small_scene_for_interrupt, tmp_path):
    """Ctrl-C in ns-train: one line (no traceback), a checkpoint of the last finished step with the pruning state, and
    the resume the line prints ends the run at the step it was going to end at."""
    import re
    import signal
    import time

    scene = small_scene_for_interrupt
    flags = [f for f in demo_flags("splatfacto-argp") if not f.startswith("--max-num-iterations")]
    cmd = ["ns-train", "splatfacto-argp", "--machine.device-type", "cpu", "--vis", "tensorboard", "--output-dir",
           str(tmp_path), "--timestamp", "t", "--max-num-iterations=300", "--steps-per-eval-all-images=1000000",
           "--steps-per-save=160", "--pipeline.model.background-color=white", "--pipeline.model.report-psnr=off", *flags,
           "blender-data", "--data", str(scene), "--ply-path", "points3d.ply"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    models = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # the checkpoint at step 160: IRP's candidates are marked
        found = list(tmp_path.glob("*/splatfacto-argp/t/nerfstudio_models/step-000000160.ckpt"))
        if found:
            models = found[0].parent
            break
        time.sleep(0.5)
    assert models is not None, "no checkpoint at step 160"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err[-2000:]
    line = err.strip().splitlines()[-1]
    match = re.fullmatch(r"argp_ns: interrupted after step (\d+); checkpoint saved in (\S+); resume with the same "
                         r"ns-train command plus --load-dir (\S+) --max-num-iterations (\d+)", line)
    assert match, line
    step, left = int(match.group(1)), int(match.group(4))
    assert 160 <= step < 299 and step + 1 + left == 300
    ckpt = torch.load(models / f"step-{step:09d}.ckpt", map_location="cpu")
    assert ckpt["pipeline"]["_model._extra_state"]["irp_candidates"] is not None  # the pruning state came along
    resumed = subprocess.run([*cmd[:cmd.index("--timestamp")], "--timestamp", "r", f"--max-num-iterations={left}",
                              *cmd[cmd.index("--steps-per-eval-all-images=1000000"):cmd.index("blender-data")],
                              "--load-dir", match.group(3), *cmd[cmd.index("blender-data"):]],
                             env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = sorted(tmp_path.glob("*/splatfacto-argp/r/nerfstudio_models/*.ckpt"))[-1]
    assert final.name == "step-000000299.ckpt"
    metrics = tmp_path / "m.json"  # the resumed run evaluates (its config.yml names no deleted checkpoint)
    subprocess.run(["ns-eval", "--load-config", str(final.parent.parent / "config.yml"), "--output-path", str(metrics)],
                   env=ENV, check=True, capture_output=True)
    assert json.loads(metrics.read_text())["results"]["psnr"] > 10


@pytest.fixture
def small_scene_for_interrupt(tmp_path_factory):
    from argp_ns.demo_scene import make_demo_scene

    return make_demo_scene(tmp_path_factory.mktemp("intr"), size=32, n_train=8, n_test=2, n_points=400)


def test_a_rerun_demo_continues_an_interrupted_run_and_restarts_a_finished_one(tmp_path, capsys):
    from argp_ns.cli import Demo

    demo = Demo(output_dir=tmp_path, method="splatfacto-safeguard")
    assert demo.resume_flags(300) == []  # no earlier run
    models = tmp_path / "runs" / "demo" / "splatfacto-safeguard" / "latest" / "nerfstudio_models"
    models.mkdir(parents=True)
    torch.save({"step": 150}, models / "step-000000150.ckpt")
    assert demo.resume_flags(300) == ["--load-dir", str(models), "--max-num-iterations=149"]
    assert "continuing the interrupted run from its checkpoint at step 150" in capsys.readouterr().out
    torch.save({"step": 299}, models / "step-000000299.ckpt")
    assert demo.resume_flags(300) == []
    assert "holds a finished run (step 299); training again from step 0" in capsys.readouterr().out
