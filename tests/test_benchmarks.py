"""The benchmark harness: repeats, parallel runs, any scene (a COLMAP folder end to end on the CPU), the table's
statistics and speed-ups, the results format and its older files."""

import json
import math
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import report, run, scenes

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# a 30-step schedule with AOP and one IRP round (step 25)
FLAGS = ("--pipeline.model.warmup-length 10 --pipeline.model.refine-every 5 --pipeline.model.stop-split-at 20 "
         "--pipeline.model.irp-start 20 --pipeline.model.irp-every 5 --pipeline.model.irp-last 25 "
         "--pipeline.model.resolution-schedule 10 --pipeline.model.reset-alpha-every 3")


def export_colmap(blender: Path, out: Path) -> Path:
    """The demo scene as a user's COLMAP folder: images/ (RGB, composited on white) and a text model in sparse/0
    (one PINHOLE camera, world-to-camera poses in OpenCV axes, the seed points as points3D)."""
    from nerfstudio.data.utils.colmap_parsing_utils import rotmat2qvec
    from PIL import Image
    from plyfile import PlyData

    (out / "images").mkdir(parents=True)
    model = out / "sparse" / "0"
    model.mkdir(parents=True)
    frames = [f for split in ("train", "test") for f in json.loads((blender / f"transforms_{split}.json").read_text())["frames"]]
    fov = json.loads((blender / "transforms_train.json").read_text())["camera_angle_x"]
    lines = []
    for i, frame in enumerate(frames):
        rgba = Image.open(blender / (frame["file_path"] + ".png"))
        rgb = Image.new("RGB", rgba.size, "white")
        rgb.paste(rgba, mask=rgba.split()[3])
        rgb.save(out / "images" / f"view_{i:03d}.png")
        c2w = np.array(frame["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL -> OpenCV camera axes
        w2c = np.linalg.inv(c2w)
        q, t = rotmat2qvec(w2c[:3, :3]), w2c[:3, 3]
        lines += [" ".join(map(str, [i + 1, *q, *t, 1, f"view_{i:03d}.png"])), ""]
    size = rgba.size[0]
    focal = 0.5 * size / math.tan(0.5 * fov)
    (model / "cameras.txt").write_text(f"1 PINHOLE {size} {size} {focal} {focal} {size / 2} {size / 2}\n")
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    v = PlyData.read(str(blender / "points3d.ply"))["vertex"]
    (model / "points3D.txt").write_text("".join(f"{j + 1} {x} {y} {z} {r} {g} {b} 0.5\n" for j, (x, y, z, r, g, b) in
                                                enumerate(zip(v["x"], v["y"], v["z"], v["red"], v["green"], v["blue"]))))
    return out


@pytest.fixture(scope="module")
def colmap_results(demo_scene, tmp_path_factory):
    """Two runs at once and then one alone (a time budget stops its second repeat), through the generic options
    on a COLMAP export of the demo scene (white background: its images are composited on white); returns the
    results file."""
    folder = export_colmap(demo_scene, tmp_path_factory.mktemp("mine"))
    out = tmp_path_factory.mktemp("results")
    common = ["--scene", "mine", "--data", str(folder), "--dataparser", "colmap", "--colmap-path", "sparse/0",
              "--background", "white", "--device", "cpu", "--steps", "30", "--out", str(out), "--variant", f"argp=splatfacto-argp:{FLAGS}"]
    with pytest.MonkeyPatch.context() as mp:  # others may commit between the two commands: pin the commit
        mp.setattr(run, "source_commit", lambda: "abc1234")
        run.main(common + ["--repeats", "2", "--parallel", "2"])
        return run.main(common + ["--repeats", "2", "--time-budget", "1"])


@pytest.mark.slow
def test_a_colmap_folder_benchmarks_with_one_command(colmap_results):
    data = json.loads(colmap_results.read_text())
    report.validate(data)
    runs = data["runs"]
    assert [r["repeat"] for r in runs] == [0, 1, 2]  # the budget kept the last command's second repeat from starting
    assert [r["timed"] for r in runs] == [False, False, True]
    for r in runs:
        assert r["method"] == "splatfacto-argp" and r["variant"] == "argp" and r["config"]["scene"]["dataparser"] == "colmap"
        assert len(r["per_view_psnr"]) == 3  # 20 images, every 8th held out
        assert r["psnr"] > 10.0  # the poses hold: a blank white image scores 7.6-8.2 dB on these views
        assert statistics.fmean(r["per_view_psnr"]) == pytest.approx(r["psnr"], abs=1e-3)
        assert "per_view_lpips" not in r and r["lpips"] is None  # no AlexNet weights offline
        assert r["prune_events"] and r["gaussians_peak"] >= r["gaussians_final"] and r["ply_bytes"] > 0
        assert r["host"] == run.host() and r["commit"] == "abc1234" and r["render_ms"] > 0
    assert data["command"].count("python -m benchmarks.run") == 2 and data["gpu"] == "cpu"
    row = [line for line in colmap_results.with_suffix(".md").read_text().splitlines() if line.startswith("| splatfacto-argp")]
    assert len(row) == 1 and row[0].split(" | ")[1:3] == ["3", "1"]  # n = 3 runs, 1 timed
    assert colmap_results.with_suffix(".png").stat().st_size > 0


def test_colmap_folder_without_a_model_is_one_line(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SystemExit, match="no COLMAP model .* set --colmap-path"):
        run.main(["--scene", "mine", "--data", str(tmp_path), "--dataparser", "colmap", "--methods", "splatfacto-argp"])


def test_presets_are_defaults_of_the_generic_options(tmp_path):
    assert scenes.resolve("fox", {}) == scenes.SceneOptions("nerfstudio-data", downscale=2, eval_interval=8)
    assert scenes.resolve("bonsai", {}) == scenes.SceneOptions("colmap", downscale=1, colmap_path="sparse/0")
    assert scenes.resolve("lego", {"background": None}).background == "white"
    assert scenes.resolve("fox", {"downscale": 4, "eval_interval": 10}) == scenes.SceneOptions("nerfstudio-data", 4, eval_interval=10)
    fox = scenes.dataparser_config(scenes.resolve("fox", {}), tmp_path)
    assert (fox.downscale_factor, fox.eval_mode, fox.eval_interval) == (2, "interval", 8)
    bonsai = scenes.dataparser_config(scenes.resolve("bonsai", {}), tmp_path)
    assert (bonsai.colmap_path, bonsai.downscale_factor, bonsai.eval_interval) == (Path("sparse/0"), 1, 8)
    with pytest.raises(SystemExit, match=r"unknown scene 'garden': use a preset \(fox, lego, bonsai, demo\)"):
        scenes.resolve("garden", {})
    with pytest.raises(SystemExit, match="--downscale does not apply to --dataparser blender-data"):
        scenes.resolve("lego", {"downscale": 2})
    with pytest.raises(SystemExit, match="no dataset at"):
        run.main(["--scene", "fox", "--data", str(tmp_path / "missing"), "--methods", "splatfacto-argp"])


def test_stock_splatfacto_is_refused_on_the_cpu(demo_scene, tmp_path):
    with pytest.raises(SystemExit, match="needs a GPU"):
        run.main(["--scene", "demo", "--data", str(demo_scene), "--device", "cpu", "--methods", "splatfacto", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_commit_from_git_else_the_environment(tmp_path, monkeypatch):
    assert re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?", run.source_commit())
    monkeypatch.setenv("ARGP_NS_COMMIT", "abc1234")
    assert run.source_commit(tmp_path) == "abc1234"  # a copied tree without .git
    monkeypatch.delenv("ARGP_NS_COMMIT")
    assert run.source_commit(tmp_path) is None


def _run(method="splatfacto-argp", variant=None, seconds=100.0, host="h1", psnr=30.0, n=100, timed=True, commit="c1", marks=None):
    """A results entry with what table() reads."""
    entry = {"method": method, "config": {"flags": "", "max_num_iterations": 300}, "psnr": psnr, "ssim": 0.9, "lpips": None,
             "gaussians_final": n, "gaussians_peak": n, "train_seconds": seconds, "steps_per_second": 300 / seconds,
             "peak_gpu_mem_mb": None, "render_ms": seconds / 100, "fps": 100_000 / seconds, "ply_bytes": None,
             "prune_events": [], "host": host, "step_marks": marks or {}, "timed": timed, "commit": commit}
    return {**entry, **({"variant": variant} if variant else {})}


def _results(runs):
    data = report.load_results(Path("/nonexistent.json"), "demo", "quick", 0.5, "g")
    for r in runs:
        report.merge_run(data, r, "cmd", "2026-01-01")
    return data


def _rows(data):
    """Table rows by their first cell."""
    return {line.split(" | ")[0][2:]: line.split(" | ") for line in report.table(data).splitlines() if line.startswith("| splat")}


def test_merge_appends_and_numbers_repeats():
    data = report.load_results(Path("/nonexistent.json"), "demo", "quick", 0.5, "cpu")
    report.merge_run(data, {"method": "splatfacto-argp", "variant": "a", "psnr": 1.0}, "cmd1", "2026-01-01")
    report.merge_run(data, {"method": "splatfacto-argp", "variant": "b", "psnr": 2.0}, "cmd2", "2026-01-03")
    report.merge_run(data, {"method": "splatfacto-argp", "variant": "a", "psnr": 3.0}, "cmd1", "2026-01-02")
    assert [(r["variant"], r["repeat"], r["psnr"]) for r in data["runs"]] == [("a", 0, 1.0), ("b", 0, 2.0), ("a", 1, 3.0)]
    assert data["command"] == "cmd1 && cmd2" and data["date"] == "2026-01-03"


def test_table_mean_std_n_and_same_host_speed_up():
    data = _results([_run("splatfacto", seconds=20.0, psnr=29.0), _run("splatfacto", seconds=22.0, psnr=31.0),
                     _run("splatfacto", seconds=10.0, host="h2", psnr=30.0),
                     _run(seconds=14.0, n=20), _run(seconds=18.0, n=40, psnr=32.0),
                     {**_run(variant="elsewhere", seconds=16.0, host="h3", n=20),
                      "config": {"flags": "--pipeline.model.irp-mode hidden", "max_num_iterations": 300}}])
    rows = _rows(data)
    stock, argp, other = rows["splatfacto"], rows["splatfacto-argp"], rows["splatfacto-argp (elsewhere) [irp-mode hidden]"]
    assert stock[1:4] == ["3", "3", "30.00 ± 1.00"]
    assert argp[1:4] == ["2", "2", "31.00 ± 1.41"] and argp[6] == "30 ± 14"
    assert argp[7] == "30.0"  # 30 Gaussians against the stock mean of 100
    assert argp[9] == "16 ± 3" and argp[10] == "1.31x"  # h1: stock mean 21 s over 16 s
    assert stock[10] == "1.00x / 1.00x"  # each stock host against itself
    assert other[10] == "0.62x*"  # no stock run on h3: against the fastest stock host (h2, 10 s)
    assert "Stock splatfacto (no flags) over 3 runs: 30.00 ± 1.00 dB (29.00-31.00)" in report.table(data)


def test_untimed_runs_enter_no_speed_figure():
    data = _results([_run("splatfacto", seconds=20.0), _run("splatfacto", seconds=5.0, timed=False),
                     _run(seconds=10.0), _run(seconds=1.0, timed=False, psnr=32.0)])
    stock, argp = _rows(data)["splatfacto"], _rows(data)["splatfacto-argp"]
    assert argp[1:4] == ["2", "1", "31.00 ± 1.41"]  # quality over both runs
    assert (argp[9], argp[10], argp[12], argp[13]) == ("10", "2.00x", "0.10", "10000")  # speed over the timed one only
    assert (stock[9], stock[10]) == ("20", "1.00x")
    only_untimed = _results([_run("splatfacto", seconds=20.0), _run(seconds=1.0, timed=False)])
    assert _rows(only_untimed)["splatfacto-argp"][9:11] == ["–", "–"]


def test_commits_never_share_a_row(tmp_path):
    data = _results([_run(commit="c1", psnr=30.0), _run(commit="c2", psnr=20.0), _run(commit="c1", psnr=32.0),
                     {**_run(psnr=25.0), "commit": None}])
    rows = _rows(data)
    assert rows["splatfacto-argp @c1"][1:4] == ["2", "2", "31.00 ± 1.41"]
    assert rows["splatfacto-argp @c2"][1:4] == ["1", "1", "20.00"]
    assert rows["splatfacto-argp @unknown"][1:4] == ["1", "1", "25.00"]
    report.plot(data, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def _flagged(entry, flags):
    return {**entry, "config": {**entry["config"], "flags": flags}}


def test_commits_declared_alike_share_rows_read_at_the_last_commits_defaults(tmp_path):
    floor = "--pipeline.model.aop-opacity-floor"
    data = _results([_run("splatfacto", commit="c1", psnr=29.0), _run("splatfacto", commit="c2", psnr=31.0),
                     _flagged(_run(variant="floor", commit="c1", psnr=30.0), f"{floor} 0.1"),  # c2's default, given
                     _run(commit="c2", psnr=32.0),  # c2's default
                     _run(commit="c1", psnr=20.0),  # c1's default: pure AOP, a flag at c2
                     _run(commit="c3", psnr=25.0),  # not declared alike
                     _flagged(_run(commit="c1", psnr=27.0, n=10), f"{floor} 0.1 --pipeline.model.budget 10"),
                     _flagged(_run(commit="c2", psnr=28.0, n=10), "--pipeline.model.budget 10"),
                     _flagged(_run(commit="c1", psnr=26.0, n=10), "--pipeline.model.budget 10")])
    data["alike"] = [{"commits": ["c1", "c2"], "why": "c2 changed a default",
                      "defaults": {"c1": {"splatfacto-argp": f"{floor} 0"}, "c2": {"splatfacto-argp": f"{floor} 0.1"}}},
                     {"commits": ["c1", "c2", "c3"], "methods": ["splatfacto"], "why": "stock is nerfstudio's"}]
    data["runs"].append(_run("splatfacto", commit="c3", psnr=30.0))
    report.validate(data)
    rows = _rows(data)
    assert set(rows) == {"splatfacto @c1+c2", "splatfacto @c3", "splatfacto-argp @c1+c2",
                         "splatfacto-argp [aop-opacity-floor 0] @c1", "splatfacto-argp @c3"}
    assert rows["splatfacto-argp @c1+c2"][1:4] == ["2", "2", "31.00 ± 1.41"]
    # stock: the first group naming c1 and c2 is the splatfacto-argp one (all methods), so c3's stock run stays apart
    assert rows["splatfacto @c1+c2"][1:4] == ["2", "2", "30.00 ± 1.41"]
    data["alike"].reverse()  # the stock group first: stock pools over all three
    assert _rows(data)["splatfacto @c1+c2+c3"][1:4] == ["3", "3", "30.00 ± 1.00"]
    data["alike"].reverse()
    assert rows["splatfacto-argp [aop-opacity-floor 0] @c1"][3] == "20.00"
    same = [ln.split(" | ") for ln in report.same_count_table(data).splitlines() if ln.startswith("| 10 ")]
    assert [(ln[2], ln[3], ln[4]) for ln in same] == [("argp", "2", "27.50 ± 0.71"), ("argp [aop-opacity-floor 0]", "1", "26.00")]
    assert "Commits c1, c2 train alike (c2 changed a default)" in report.table(data)
    assert "Commits c1, c2, c3 train alike (splatfacto) (stock is nerfstudio's)" in report.table(data)
    del data["alike"]  # undeclared: every commit its own row
    assert {"splatfacto-argp @c1", "splatfacto-argp (floor) [aop-opacity-floor 0.1] @c1", "splatfacto-argp @c2"} <= set(_rows(data))
    report.plot(data, tmp_path / "p.png")


def test_step_marks_give_it_per_second_by_third():
    marks = {"100": [1.0, 50], "200": [3.0, 50], "300": [4.0, 20]}
    data = _results([_run(marks=marks), _run(marks={k: [2 * v[0], v[1]] for k, v in marks.items()})])
    assert _rows(data)["splatfacto-argp"][11] == "75 / 38 / 75"


@pytest.mark.parametrize("name, gpu", [("h100/fox-quick.json", "NVIDIA H100 80GB HBM3"), ("h100/lego-quick.json", "NVIDIA H100 80GB HBM3"),
                                       ("fox-quick.json", "NVIDIA H200"), ("bonsai-quick.json", "NVIDIA H200")])
def test_stored_files_load_validate_and_render(name, gpu, tmp_path):
    path = tmp_path / Path(name).name
    shutil.copy(RESULTS / name, path)
    data = report.load_results(path, *path.stem.split("-"), 0.5, gpu)
    report.validate(data)
    keys = [(r["method"], r.get("variant")) for r in data["runs"]]
    assert [r["repeat"] for r in data["runs"]] == [keys[:i].count(k) for i, k in enumerate(keys)]
    text = report.render(data, path)
    # one main row per (method, flags, training) of the runs without a budget
    main = {report.row_key(data, r) for r in data["runs"] if report.budget_of(r) is None}
    assert text.count("\n| splatfacto") == len(main)
    assert path.with_suffix(".png").stat().st_size > 0
    budgets = {report.budget_of(r) for r in data["runs"]} - {None}
    assert ("#### Same count" in text) == bool(budgets)


def test_report_merges_files_and_refuses_other_gpus(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    report.write_outputs(_results([_run(), _run()]), a)
    report.write_outputs(_results([_run(variant="v")]), b)
    report.main(["merge", str(a), str(b)])
    data = json.loads(a.read_text())
    assert [(r.get("variant"), r["repeat"]) for r in data["runs"]] == [(None, 0), (None, 1), ("v", 0)]
    other = _results([_run()])
    other["gpu"] = "another"
    report.write_outputs(other, b)
    with pytest.raises(SystemExit, match="not merged"):
        report.main(["merge", str(a), str(b)])
    assert len(json.loads(a.read_text())["runs"]) == 3


def test_variant_parsing():
    assert run.parse_variant("x=splatfacto-argp:--pipeline.model.irp-mode hidden") == (
        "x", "splatfacto-argp", ["--pipeline.model.irp-mode", "hidden"])


# --- the same-count table: budget runs -------------------------------------------------------------------------------
def _budget(rule, n, psnr, final, method=None, extra="", **kw):
    """A budget run of ``rule`` at ``n`` (its flags as --budgets writes them)."""
    method = method or run.RULES[rule][0]
    flags = " ".join([*run.RULES[rule][1], "--pipeline.model.budget", str(n)]) + (" " + extra if extra else "")
    entry = _run(method, variant=f"{rule}-b{n}", psnr=psnr, n=final, **kw)
    return {**entry, "config": {**entry["config"], "flags": flags}}


def test_budgets_are_fractions_of_the_stock_mean_or_counts():
    assert run.budget_counts("0.1, 0.25,5000", 1000.4) == [100, 250, 5000]
    for text, err in (("0.1", "needs stock splatfacto's mean count"), ("1.5", "got '1.5'"), ("-3", "got '-3'"),
                      ("x", "got 'x'"), ("", "--budgets is empty")):
        with pytest.raises(SystemExit, match=re.escape(err)):
            run.budget_counts(text, None if text == "0.1" else 1000.0)
    jobs = run.budget_jobs([100, 250], ["argp", "radsplat"])
    assert jobs == [("splatfacto-argp", "argp-b100", ["--pipeline.model.budget", "100"]),
                    ("splatfacto-safeguard", "radsplat-b100", ["--pipeline.model.prune-method", "radsplat", "--pipeline.model.budget", "100"]),
                    ("splatfacto-argp", "argp-b250", ["--pipeline.model.budget", "250"]),
                    ("splatfacto-safeguard", "radsplat-b250", ["--pipeline.model.prune-method", "radsplat", "--pipeline.model.budget", "250"])]
    assert set(run.RULES) == {"argp", "safeguard", "efficientgs", "lightgaussian", "minisplatting", "radsplat", "argp+safeguard",
                              "mcmc"}
    assert report.rule_of(_budget("argp+safeguard", 100, 30.0, 100)) == "argp+safeguard"
    assert run.budget_jobs([100], ["mcmc"]) == [("splatfacto-mcmc", "mcmc-b100", ["--pipeline.model.budget", "100"])]
    assert report.rule_of(_budget("mcmc", 100, 27.0, 100)) == "mcmc"
    with pytest.raises(SystemExit, match="unknown rule 'topk'"):
        run.budget_jobs([100], ["topk"])


def test_budget_fractions_read_the_stock_mean_of_the_results_file(tmp_path, monkeypatch):
    stock = _results([_run("splatfacto", n=1000), _run("splatfacto", n=3000)])
    stock["gpu"] = "cpu"
    report.write_outputs(stock, tmp_path / "demo-quick.json")
    seen = {}
    monkeypatch.setattr(run, "check_methods", lambda methods, device: seen.setdefault("methods", methods))
    monkeypatch.setattr(run, "run_all", lambda todo, *a: seen.setdefault("todo", todo) and 0)
    demo = tmp_path / "scene"
    demo.mkdir()
    (demo / "transforms_train.json").write_text("{}")
    common = ["--scene", "demo", "--data", str(demo), "--out", str(tmp_path), "--device", "cpu", "--repeats", "2"]
    run.main(common + ["--budgets", "0.1,500", "--rules", "argp,lightgaussian", "--flags", "--pipeline.model.report-psnr off"])
    todo = seen["todo"]
    assert len(todo) == 8 and todo[:4] == todo[4:]  # repeat-major
    assert [(m, v) for m, v, _ in todo[:4]] == [("splatfacto-argp", "argp-b200"), ("splatfacto-safeguard", "lightgaussian-b200"),
                                                ("splatfacto-argp", "argp-b500"), ("splatfacto-safeguard", "lightgaussian-b500")]
    assert todo[1][2] == ["--pipeline.model.report-psnr", "off", "--pipeline.model.prune-method", "lightgaussian",
                          "--pipeline.model.budget", "200"]  # --flags first, the rule's own after
    with pytest.raises(SystemExit, match="--budget-base must be positive"):
        run.main(common + ["--budgets", "0.1", "--budget-base", "0"])


def test_same_count_table_ranks_rules_within_a_budget(tmp_path):
    data = _results([_run("splatfacto", psnr=30.0, n=1000), _run("splatfacto", psnr=31.0, n=1000),
                     _budget("argp", 100, 29.0, 100), _budget("argp", 100, 30.0, 100),
                     _budget("radsplat", 100, 30.5, 104, timed=False),
                     _budget("safeguard", 300, 30.2, 300), _budget("argp", 300, 30.6, 297),
                     _budget("argp", 100, 25.0, 100, extra="--pipeline.model.irp-mode hidden"),
                     _budget("safeguard", 300, 28.0, 300, method="splatfacto-safeguard-big")])
    text = report.same_count_table(data)
    lines = [ln.split(" | ") for ln in text.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [(ln[0][2:], ln[2]) for ln in lines] == [
        ("100", "radsplat"), ("100", "argp"), ("100", "argp [irp-mode hidden]"),
        ("300", "argp"), ("300", "safeguard"), ("300", "safeguard (big)")]
    radsplat, argp = lines[0], lines[1]
    assert radsplat[1] == "10" and radsplat[3] == "1" and radsplat[5] == "+0.00"  # stock mean 30.5 dB, 1,000 Gaussians
    assert radsplat[8] == "+4.0 %" and radsplat[9] == "–"  # 104 against 100; its one run shared the GPU: no time
    assert argp[3:6] == ["2", "29.50 ± 0.71", "-1.00"] and argp[8] == "+0.0 %" and argp[9] == "100 ± 0"
    assert lines[3][8] == "-1.0 %"
    assert "#### Same count" in report.table(data)  # the results' markdown carries it
    assert not any("-b100" in name or "-b300" in name for name in _rows(data))  # budget runs: that table only
    report.render(data, tmp_path / "demo-quick.json")
    assert (tmp_path / "demo-quick-same-count.png").stat().st_size > 0 and (tmp_path / "demo-quick.png").exists()
    assert report.same_count_table(_results([_run()])) is None
    report.render(_results([_run()]), tmp_path / "plain.json")
    assert not (tmp_path / "plain-same-count.png").exists()
    ablations = _results([_run("splatfacto", psnr=31.0, n=1000),
                          _budget("argp", 100, 25.0, 100, extra="--pipeline.model.irp-mode hidden")])
    assert not report.plot_same_count(ablations, tmp_path / "ablations.png")  # ablations stay in the table


def test_pareto_curves_take_each_rules_newest_training_per_budget():
    """A rule's point at a budget is its newest training there; a budget only an older training ran keeps that one."""
    data = _results([_run("splatfacto", psnr=31.0, n=1000),
                     _budget("argp", 100, 29.0, 100, commit="old"), _budget("argp", 300, 30.0, 300, commit="old"),
                     _budget("argp", 100, 29.5, 100, commit="new"), _budget("mcmc", 100, 27.0, 100, commit="old"),
                     _budget("argp", 100, 20.0, 100, commit="new", extra="--pipeline.model.irp-mode hidden")])
    curves = report.pareto_curves(data)
    assert list(curves) == ["argp", "mcmc"]
    assert [(training, [r["psnr"] for r in runs]) for training, runs in curves["argp"]] == [("new", [29.5]), ("old", [30.0])]
    assert [training for training, _ in curves["mcmc"]] == ["old"]


def test_budget_flag_forms():
    for flags, n in (("--pipeline.model.budget 50", 50), ("--pipeline.model.budget=50 --x y", 50),
                     ("--pipeline.model.budget 0", None), ("--pipeline.model.irp-mode hidden", None)):
        assert report.budget_of({"config": {"flags": flags}}) == n
    assert report.flag_values({"config": {"flags": "--a --b 2 --c=3"}}) == {"--a": "", "--b": "2", "--c": "3"}


@pytest.mark.slow
def test_a_budget_sweep_lands_through_the_harness(demo_scene, tmp_path, monkeypatch):
    monkeypatch.setattr(run, "source_commit", lambda: "abc1234")
    path = run.main(["--scene", "demo", "--data", str(demo_scene), "--device", "cpu", "--steps", "30", "--out", str(tmp_path),
                     "--repeats", "1", "--budgets", "0.5", "--budget-base", "1000", "--rules", "argp",
                     "--flags", FLAGS + " --pipeline.model.report-psnr off"])
    data = json.loads(path.read_text())
    (r,) = data["runs"]
    assert r["variant"] == "argp-b500" and r["gaussians_final"] == 500
    assert report.budget_of(r) == 500 and "| 500 | – | argp [" in path.with_suffix(".md").read_text()


def test_a_run_is_expected_to_take_as_long_as_its_own_kind():
    """The time budget expects a run to last as long as the longest finished run of its method and variant (a short
    ARGP run after a long stock one still fits), else the longest of any, else nothing."""
    assert run.expected_seconds({}, "splatfacto") == 0.0
    took = {"splatfacto": 175.0, "splatfacto-argp": 95.0}
    assert run.expected_seconds(took, "splatfacto-argp") == 95.0
    assert run.expected_seconds(took, "floor0.1") == 175.0


def test_quick_protocol_scales_step_options_but_leaves_off_switches_off(tmp_path, monkeypatch):
    import copy

    from nerfstudio.configs import method_configs

    opts = scenes.SceneOptions(dataparser="blender-data")
    cfg = run.build_config("splatfacto-argp", [], opts, tmp_path, 0.5, "cpu", tmp_path, None)
    m = cfg.pipeline.model
    assert (cfg.max_num_iterations, m.irp_start, m.irp_last, m.stop_split_at) == (15000, 6000, 11000, 6000)
    off = copy.deepcopy(method_configs.all_methods["splatfacto-argp"])
    off.pipeline.model.stop_screen_size_at = 0  # 0 is "off", not a step to halve into 1
    monkeypatch.setitem(method_configs.all_methods, "splatfacto-argp", off)
    cfg = run.build_config("splatfacto-argp", ["--pipeline.model.irp-last", "9000"], opts, tmp_path, 0.5, "cpu",
                           tmp_path, None)
    assert cfg.pipeline.model.stop_screen_size_at == 0
    assert cfg.pipeline.model.irp_last == 9000  # a flag is taken at the protocol's scale, as given


def test_host_breakdown_times_each_part_of_a_real_step_and_puts_the_methods_back(demo_scene, tmp_path):
    """benchmarks.step_time.host_breakdown on a splatfacto-argp trainer (CPU, the twin): every part of the step is
    timed, the parts and the rest add up to the wall time, and the wrapped methods are the originals again after."""
    from benchmarks import scenes, step_time

    opts = scenes.SceneOptions(dataparser="blender-data", background="white", ply_path="points3d.ply")
    cfg = run.build_config("splatfacto-argp", ["--pipeline.model.scored-prune", "False", "--pipeline.model.report-psnr", "off"],
                           opts, demo_scene, 0.5, "cpu", tmp_path, 8)
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    model_fn, backward = trainer.pipeline.model.get_outputs, torch.autograd.backward
    ms = step_time.host_breakdown(trainer, 0, 2)
    assert set(ms) == set(step_time.BREAKDOWN) | {"callbacks_before", "callbacks_after", "other"}
    assert all(ms[name] > 0 for name in step_time.BREAKDOWN), ms
    assert "get_outputs" not in vars(trainer.pipeline.model) and torch.autograd.backward is backward
    assert trainer.pipeline.model.get_outputs == model_fn
    half = step_time.subset({"means": torch.arange(10.0)[:, None], "scales": torch.arange(10.0)[:, None] * 2}, 0.3)
    assert half["means"].shape[0] == 3 and torch.equal(half["scales"], half["means"] * 2)


def test_diff_images_compares_two_runs_view_by_view(demo_scene, tmp_path):
    """benchmarks.diff_images on two copies of a stored run (CPU, the twin): a sheet per view (a row per run and the
    signed difference), the same PSNR for both and no pixel worse; a view outside the split is one line."""
    from PIL import Image
    from test_options import old_run

    from benchmarks import diff_images

    a, b = old_run(tmp_path / "a", demo_scene), old_run(tmp_path / "b", demo_scene)
    summary = diff_images.main(["--runs", str(a), str(b), "--views", "0,2", "--out", str(tmp_path / "diff")])
    assert [v["view"] for v in summary["views"]] == [0, 2]
    for row in summary["views"]:
        assert row["psnr"][0] == row["psnr"][1] > 5 and row["worse_share"] == 0.0
        sheet = Image.open(tmp_path / "diff" / row["image"])
        assert sheet.size == (3 * 48, 3 * 48)
    assert json.loads((tmp_path / "diff" / "diff-images.json").read_text())["runs"] == [str(a), str(b)]
    with pytest.raises(SystemExit, match=r"views \[9\] are not held-out views"):
        diff_images.main(["--runs", str(a), "--views", "9", "--out", str(tmp_path / "d2")])
