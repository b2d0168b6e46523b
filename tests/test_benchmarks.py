"""The benchmark harness (benchmarks/) on the CPU: two tiny in-process runs through nerfstudio's Trainer on a
small demo scene, then the results format, merging, refusals, table and plot. About a minute in all."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["TORCHDYNAMO_DISABLE"] = "1"  # before nerfstudio is imported: it torch.compiles get_viewmat

import pytest

from benchmarks import report, run

# 120 steps: densify (and AOP) at 30, 40, 50; IRP marks at 60 and scores/deletes at 90
FLAGS = ("--pipeline.model.warmup-length 20 --pipeline.model.refine-every 10 --pipeline.model.stop-split-at 60 "
         "--pipeline.model.stop-screen-size-at 60 --pipeline.model.resolution-schedule 40 "
         "--pipeline.model.sh-degree-interval 30 --pipeline.model.irp-start 60 --pipeline.model.irp-every 30 "
         "--pipeline.model.irp-last 90 --pipeline.model.background-color white")
ROOT = Path(__file__).resolve().parents[1]


def harness(scene: Path, out: Path, *extra: str) -> Path:
    return run.main(["--scene", "demo", "--data", str(scene), "--device", "cpu", "--max-steps-override", "120",
                     "--out", str(out), *extra])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from argp_ns.demo_scene import make_demo_scene

    return make_demo_scene(tmp_path_factory.mktemp("bench-demo"), size=40, n_train=12, n_test=3, n_points=600)


@pytest.fixture(scope="module")
def runs(scene, tmp_path_factory):
    """Two invocations into one results folder: variant 'tiny', then variant 'tiny-frozen'."""
    out = tmp_path_factory.mktemp("bench-results")
    path = harness(scene, out, "--variant", f"tiny=splatfacto-argp:{FLAGS}")
    first = json.loads(path.read_text())
    assert harness(scene, out, "--variant", f"tiny-frozen=splatfacto-argp:{FLAGS} --pipeline.model.irp-mode frozen") == path
    return path, first, json.loads(path.read_text())


def test_run_follows_the_schema_and_reports_every_number(runs):
    path, first, _ = runs
    assert path.name == "demo-quick.json"
    report.validate(path)
    assert report.schema_errors(first, report.SCHEMA) == []  # the hand check agrees with jsonschema
    assert (first["scene"], first["protocol"], first["scale"], first["gpu"]) == ("demo", "quick", 0.5, "cpu")
    assert first["command"].startswith("python -m benchmarks.run --scene demo")
    (r,) = first["runs"]
    assert r["method"] == "splatfacto-argp" and r["variant"] == "tiny"
    for key in ("psnr", "ssim", "train_seconds", "steps_per_second", "render_ms", "fps", "psnr_per_million"):
        assert isinstance(r[key], float) and r[key] > 0, key
    for key in ("gaussians_final", "gaussians_peak", "ply_bytes"):
        assert isinstance(r[key], int) and r[key] > 0, key
    assert r["lpips"] is None  # no pretrained AlexNet offline: absent, never faked
    assert r["peak_gpu_mem_mb"] is None  # CPU
    assert r["gaussians_peak"] >= r["gaussians_final"]
    assert abs(r["steps_per_second"] * r["train_seconds"] - 120) < 0.5
    assert r["psnr_per_million"] == pytest.approx(r["psnr"] / r["gaussians_final"] * 1e6, rel=1e-3)
    assert r["fps"] == pytest.approx(1000 / r["render_ms"], rel=1e-2)
    # the exporter's PLY: a header and 62 float32 properties (sh_degree 3) per exported Gaussian
    assert 62 * 4 <= r["ply_bytes"] <= 4096 + 62 * 4 * r["gaussians_final"]


def test_prune_events_come_from_the_model(runs):
    (r,) = runs[1]["runs"]
    events = r["prune_events"]
    assert events and set(events[0]) == {"step", "rule", "removed", "kept"}
    assert {"aop", "irp"} <= {e["rule"] for e in events}
    irp = [e for e in events if e["rule"] == "irp"]
    assert [e["step"] for e in irp] == [90]
    assert irp[-1]["kept"] == r["gaussians_final"]  # nothing densifies after the last round


def test_config_records_the_non_default_settings(runs):
    (r,) = runs[1]["runs"]
    c = r["config"]
    assert c["max_num_iterations"] == 120 and c["optimizers.means.scheduler.max_steps"] == 120
    assert c["pipeline.model.irp_start"] == 60 and c["pipeline.model.irp_last"] == 90
    assert c["pipeline.model.background_color"] == "white"
    assert "pipeline.model.irp_mode" not in c  # default, not recorded
    assert "pipeline.model.refine_every" in c and "pipeline.model.reset_alpha_every" not in c


def test_second_invocation_merges(runs):
    path, first, merged = runs
    assert [(r["method"], r.get("variant")) for r in merged["runs"]] == [
        ("splatfacto-argp", "tiny"), ("splatfacto-argp", "tiny-frozen")]
    assert merged["runs"][0] == first["runs"][0]  # the first run is kept as it was
    assert merged["runs"][1]["config"]["pipeline.model.irp_mode"] == "frozen"
    assert merged["command"].count("python -m benchmarks.run") == 2 and " && " in merged["command"]
    report.validate(merged)


def test_table_and_plot_are_written_beside(runs):
    path = runs[0]
    md = path.with_suffix(".md").read_text()
    assert md.count("| splatfacto-argp (tiny) |") == 1 and md.count("| splatfacto-argp (tiny-frozen) |") == 1
    assert "No splatfacto run" in md
    png = path.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@pytest.mark.parametrize("gpu,scale", [("NVIDIA H100 80GB HBM3", 0.5), ("cpu", 1.0)])
def test_other_gpu_or_scale_is_refused_and_left_unchanged(scene, tmp_path, capsys, gpu, scale):
    existing = {"scene": "demo", "protocol": "quick", "scale": scale, "gpu": gpu, "date": "2026-01-01",
                "command": "python -m benchmarks.run ...", "runs": []}
    path = tmp_path / "demo-quick.json"
    path.write_text(json.dumps(existing))
    before = path.read_bytes()
    with pytest.raises(SystemExit, match="not merged") as err:
        harness(scene, tmp_path, "--variant", f"x=splatfacto-argp:{FLAGS}")
    assert "\n" not in str(err.value.code)  # one line
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-quick.json"]  # no .md/.png either
    assert "benchmarks: [1/1]" not in capsys.readouterr().out  # refused before training


def test_stock_splatfacto_is_refused_on_cpu(scene, tmp_path):
    with pytest.raises(SystemExit, match="splatfacto cannot run with --device cpu"):
        harness(scene, tmp_path, "--methods", "splatfacto-argp,splatfacto")
    assert not list(tmp_path.iterdir())


def test_bad_invocations_fail_in_one_line(scene, tmp_path):
    with pytest.raises(SystemExit, match="unknown method"):
        harness(scene, tmp_path, "--methods", "no-such-method")
    with pytest.raises(SystemExit, match="nothing to run"):
        harness(scene, tmp_path)
    with pytest.raises(SystemExit, match="NAME=METHOD"):
        harness(scene, tmp_path, "--variant", "splatfacto-argp")
    with pytest.raises(SystemExit):
        run.main(["--scene", "demo", "--data", str(scene), "--protocol", "paper", "--scale", "0.5"])


def test_quick_protocol_scales_every_step_schedule(tmp_path):
    from nerfstudio.configs.method_configs import all_methods

    cfg, diff = run.build_config("splatfacto-argp", [], "demo", tmp_path, 0.5, "cpu", tmp_path)
    m = cfg.pipeline.model
    assert cfg.max_num_iterations == 15000 and cfg.optimizers["means"]["scheduler"].max_steps == 15000
    assert (m.stop_split_at, m.irp_start, m.irp_every, m.irp_last) == (6000, 6000, 1500, 13500)
    assert (m.warmup_length, m.stop_screen_size_at, m.resolution_schedule, m.sh_degree_interval) == (250, 2000, 1500, 500)
    assert (m.refine_every, m.reset_alpha_every) == (100, 30)  # not scaled
    assert m.report_psnr == "off" and cfg.steps_per_eval_image >= 10**9 and cfg.vis == "tensorboard"
    assert diff["pipeline.model.irp_every"] == 1500 and "pipeline.model.report_psnr" not in diff
    cfg, _ = run.build_config("splatfacto-safeguard", ["--pipeline.model.top-k", "4"], "lego", tmp_path, 0.5, "cuda", tmp_path)
    assert cfg.pipeline.model.prune_step == 10000 and cfg.pipeline.model.top_k == 4
    base, diff = run.build_config("splatfacto", [], "fox", tmp_path, 1.0, "cuda", tmp_path)
    assert base.max_num_iterations == 30000 and diff == {}
    dp = base.pipeline.datamanager.dataparser
    assert (dp.downscale_factor, dp.eval_mode, dp.eval_interval, dp.load_3D_points) == (2, "interval", 8, True)
    assert all_methods["splatfacto"].max_num_iterations == 30000  # the registered config is untouched


def test_merge_replaces_same_key_in_place_and_keeps_others():
    data = report.new_results("demo", "quick", 0.5, "cpu")
    report.merge_run(data, {"method": "splatfacto-argp", "variant": "a", "psnr": 1.0}, "cmd1", "2026-01-01")
    report.merge_run(data, {"method": "splatfacto", "psnr": 2.0}, "cmd2", "2026-01-02")
    report.merge_run(data, {"method": "splatfacto-argp", "variant": "a", "psnr": 3.0}, "cmd1", "2026-01-03")
    assert [(r["method"], r.get("variant"), r["psnr"]) for r in data["runs"]] == [
        ("splatfacto-argp", "a", 3.0), ("splatfacto", None, 2.0)]
    assert data["command"] == "cmd1 && cmd2" and data["date"] == "2026-01-03"


def fake_run(method, variant=None, **kw):
    r = {"method": method, "config": {}, "psnr": 30.0, "ssim": 0.9, "lpips": None, "gaussians_final": 100_000,
         "gaussians_peak": 200_000, "train_seconds": 300.0, "steps_per_second": 50.0, "peak_gpu_mem_mb": 1000.0,
         "render_ms": 4.0, "fps": 250.0, "ply_bytes": 24_800_000, "psnr_per_million": 300.0, "prune_events": []}
    if variant:
        r["variant"] = variant
    r.update(kw)
    return r


def test_table_shows_ratios_against_splatfacto(tmp_path):
    data = report.new_results("fox", "quick", 0.5, "NVIDIA H100 80GB HBM3")
    data.update(date="2026-01-01", command="python -m benchmarks.run ...")
    data["runs"] = [fake_run("splatfacto"),
                    fake_run("splatfacto-argp", gaussians_final=25_000, psnr=29.5, train_seconds=240.0, ply_bytes=6_200_000,
                             prune_events=[{"step": 6000, "rule": "irp", "removed": 10, "kept": 25_000}])]
    text = report.write_outputs(data, tmp_path / "fox-quick.json")
    row = next(line for line in text.splitlines() if line.startswith("| splatfacto-argp"))
    assert "25,000 (0.25×)" in row and "29.50 (-0.50)" in row and "240.0 (0.80×)" in row and "(0.25×)" in row
    assert "In brackets" in text
    assert (tmp_path / "fox-quick.png").stat().st_size > 1000
    assert report.validate(tmp_path / "fox-quick.json") == data


def test_validation_rejects_bad_files():
    good = report.new_results("fox", "quick", 0.5, "cpu")
    good.update(date="2026-01-01", command="c", runs=[fake_run("splatfacto")])
    assert report.schema_errors(good, report.SCHEMA) == []
    for mutate in (lambda d: d.pop("gpu"), lambda d: d.update(date="yesterday"), lambda d: d.update(protocol="slow"),
                   lambda d: d["runs"][0].pop("ply_bytes"), lambda d: d["runs"][0].update(gaussians_final=1.5),
                   lambda d: d["runs"][0].update(psnr="30"), lambda d: d["runs"][0].update(prune_events=[{"step": 1}])):
        bad = copy.deepcopy(good)
        mutate(bad)
        assert report.schema_errors(bad, report.SCHEMA), bad
        with pytest.raises(Exception):
            report.validate(bad)


def test_exporter_imports_without_mesh_libraries():
    """The GPU image lacks open3d, pymeshlab, xatlas and mediapy: the harness still gets the real exporter."""
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('open3d', 'pymeshlab', 'xatlas', 'mediapy'):\n"
            "            raise ModuleNotFoundError(name, name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from benchmarks.run import exporter_class\n"
            "print(exporter_class().__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TORCHDYNAMO_DISABLE="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ExportGaussianSplat")
    assert "open3d is not installed" in proc.stdout
