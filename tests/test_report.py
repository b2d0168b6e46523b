"""The pruning report's plot: the count as steps, PSNR before/after measured prunes on a second axis."""

import json

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from argp_ns.report import PruningReport, psnr_pairs


def sample_report() -> PruningReport:
    report = PruningReport("splatfacto-argp", counts=[[100, 500], [200, 800], [300, 400], [400, 200]])
    report.events = [
        {"step": 200, "rule": "aop", "removed": 10, "kept": 800, "psnr_before": None, "psnr_after": None},
        {"step": 300, "rule": "aop", "removed": 5, "kept": 795, "psnr_before": 20.0, "psnr_after": 19.5},
        {"step": 300, "rule": "irp", "removed": 395, "kept": 400, "psnr_before": 20.0, "psnr_after": 19.5},
        {"step": 400, "rule": "irp", "removed": 200, "kept": 200},
    ]
    report.final_gaussians = 200
    return report


def test_psnr_pairs_skip_unmeasured_events_and_merge_one_step():
    assert psnr_pairs(sample_report().events) == [(300, 20.0, 19.5, "irp")]


def test_plot_draws_steps_and_a_psnr_axis(tmp_path, monkeypatch):
    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k)))
    path = sample_report().write(tmp_path)
    assert json.loads(path.read_text())["final_gaussians"] == 200
    assert (tmp_path / "pruning_report.png").stat().st_size > 0
    count_ax, psnr_ax = figures[0].axes
    count = next(line for line in count_ax.lines if line.get_label() == "Gaussians")
    assert count.get_drawstyle() == "steps-post"
    assert list(count.get_xdata()) == [100, 200, 300, 400]
    assert psnr_ax.get_ylabel() == "eval PSNR (dB)"
    ys = sorted(y for line in psnr_ax.lines for y in line.get_ydata())
    assert ys == [19.5, 19.5, 20.0, 20.0]  # the segment's two ends and the two markers


def test_plot_without_events_or_psnr(tmp_path):
    report = PruningReport("splatfacto-safeguard", counts=[[100, 50]], final_gaussians=50)
    report.write(tmp_path)
    assert (tmp_path / "pruning_report.png").is_file()
