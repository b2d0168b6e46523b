"""The benchmark harness on a tiny CPU run: results format, merging, table and plot."""

import json

import pytest

from benchmarks import report, run

FLAGS = ("--pipeline.model.warmup-length 20 --pipeline.model.refine-every 10 --pipeline.model.stop-split-at 60 "
         "--pipeline.model.irp-start 60 --pipeline.model.irp-every 20 --pipeline.model.irp-last 100 "
         "--pipeline.model.resolution-schedule 40 --pipeline.model.reset-alpha-every 3")


@pytest.fixture(scope="module")
def results(demo_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    path = run.main(["--scene", "demo", "--data", str(demo_scene), "--device", "cpu", "--steps", "120", "--out", str(out),
                     "--variant", f"argp=splatfacto-argp:{FLAGS}"])
    return path


def test_results_file_follows_the_schema(results):
    data = json.loads(results.read_text())
    report.validate(data)
    (r,) = data["runs"]
    assert r["method"] == "splatfacto-argp" and r["variant"] == "argp" and data["gpu"] == "cpu"
    assert r["prune_events"] and r["gaussians_peak"] >= r["gaussians_final"] and r["ply_bytes"] > 0
    assert r["lpips"] is None and r["peak_gpu_mem_mb"] is None and r["render_ms"] > 0
    assert "python -m benchmarks.run" in data["command"] and r["host"] == run.host()
    marks = {int(k): v for k, v in r["step_marks"].items()}
    assert sorted(marks) == [120] and marks[120][1] == r["gaussians_final"] and marks[120][0] > 0
    assert results.with_suffix(".md").read_text().count("| splatfacto-argp (argp) |") == 1
    assert results.with_suffix(".png").stat().st_size > 0


def test_merge_keeps_other_runs_and_replaces_same():
    data = report.load_results(pytest.importorskip("pathlib").Path("/nonexistent.json"), "demo", "quick", 0.5, "cpu")
    a = {"method": "splatfacto-argp", "variant": "a", "psnr": 1.0}
    report.merge_run(data, a, "cmd1", "2026-01-01")
    report.merge_run(data, {"method": "splatfacto-argp", "variant": "b", "psnr": 2.0}, "cmd2", "2026-01-02")
    report.merge_run(data, {**a, "psnr": 3.0}, "cmd1", "2026-01-03")
    assert sorted((r["variant"], r["psnr"]) for r in data["runs"]) == [("a", 3.0), ("b", 2.0)]
    assert data["command"] == "cmd1 && cmd2" and data["date"] == "2026-01-03"


def test_other_gpu_is_refused_and_left_unchanged(results):
    before = results.read_text()
    with pytest.raises(SystemExit, match="not merged"):
        report.load_results(results, "demo", "quick", 0.5, "NVIDIA H100 80GB HBM3")
    assert results.read_text() == before


def test_variant_parsing():
    assert run.parse_variant("x=splatfacto-argp:--pipeline.model.irp-mode hidden") == (
        "x", "splatfacto-argp", ["--pipeline.model.irp-mode", "hidden"])


def _run(variant, seconds, host, psnr=30.0, n=100, marks=None):
    """A results entry with what table() reads."""
    return {"method": "splatfacto" if variant.startswith("stock") else "splatfacto-argp", "variant": variant,
            "config": {"max_num_iterations": 300}, "psnr": psnr, "ssim": 0.9, "lpips": None, "gaussians_final": n,
            "gaussians_peak": n, "train_seconds": seconds, "steps_per_second": 300 / seconds, "peak_gpu_mem_mb": None,
            "render_ms": None, "fps": None, "ply_bytes": None, "prune_events": [], "host": host, "step_marks": marks or {}}


def test_table_pairs_speed_with_the_same_host_and_shows_the_spread():
    marks = {"100": [1.0, 50], "200": [3.0, 50], "300": [4.0, 20]}
    data = {"scene": "demo", "protocol": "quick", "scale": 0.5, "gpu": "g", "date": "2026-01-01", "command": "c",
            "runs": [_run("stock-a", 20.0, "h1", 29.0), _run("stock-b", 10.0, "h2", 31.0),
                     _run("m1", 16.0, "h1", n=20, marks=marks), _run("m2", 16.0, "h3", n=20)]}
    rows = {line.split(" | ")[0]: line.split(" | ") for line in report.table(data).splitlines() if line.startswith("| splat")}
    assert rows["| splatfacto-argp (m1)"][8] == "1.25x"  # against h1's stock run (20 s)
    assert rows["| splatfacto-argp (m2)"][8] == "0.62x*"  # no stock run on h3: against the fastest (10 s)
    assert rows["| splatfacto-argp (m1)"][6] == "20.0"  # Gaussians against the fastest stock run (100)
    assert rows["| splatfacto-argp (m1)"][10] == "100 / 50 / 100"  # it/s by third from the step marks
    assert "Stock splatfacto over 2 runs: 10-20 s, 29.00-31.00 dB" in report.table(data)
