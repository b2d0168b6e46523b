"""The fault matrix (issue 15): every bad input ends with a non-zero exit and one line naming the problem, leaves
no run folder or output behind, and changes no existing file.

One tiny splatfacto-argp run on the demo scene is trained once and shared; cases that damage a run (a truncated or
missing checkpoint) work on a copy. Most cases call the command's Python entry in-process (the exit message is the
SystemExit's); a few representative ones run the real command and read its stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch
import tyro
import yaml

from argp_ns.cli import CPU_SCHEDULE, demo_flags

ENV = dict(os.environ, TORCHDYNAMO_DISABLE="1")
# the demo's CPU schedule cut to 20 steps: densification to 10, IRP rounds at 12 and 16, checkpoints at 10 and 19
TINY = {**CPU_SCHEDULE, "max-num-iterations": 20, "pipeline.model.warmup-length": 5, "pipeline.model.refine-every": 5,
        "pipeline.model.stop-split-at": 10, "pipeline.model.irp-start": 12, "pipeline.model.irp-every": 4,
        "pipeline.model.irp-last": 16, "pipeline.model.prune-step": 15}
MODELS = "nerfstudio_models"


def train_args(method: str, scene: Path, out: Path, extra=(), device: Optional[str] = "cpu") -> List[str]:
    """ns-train's arguments for a tiny run of ``method`` on ``scene`` into ``out`` (no device flag: ``device=None``)."""
    flags = demo_flags(method, TINY)
    dev = ["--machine.device-type", device] if device else []
    return [method, *dev, "--vis", "tensorboard", "--output-dir", str(out), "--experiment-name", "demo", "--timestamp", "t",
            "--steps-per-eval-all-images=1000000", "--steps-per-save=10", "--save-only-latest-checkpoint=False",
            "--pipeline.model.background-color=white", "--pipeline.model.report-psnr=off", *flags, *extra, "blender-data", "--data", str(scene), "--ply-path", "points3d.ply"]


def train_main(argv: List[str]) -> None:
    """nerfstudio's ns-train, in-process."""
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.scripts.train import main

    main(tyro.cli(AnnotatedBaseConfigUnion, args=argv))


def hashes(*roots: Path) -> Dict[str, str]:
    """sha256 of every file under ``roots`` (folders or files)."""
    files = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*")))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


@pytest.fixture(scope="session")
def demo_run(demo_scene, tmp_path_factory) -> Path:
    """config.yml of a 20-step splatfacto-argp run on the demo scene (checkpoints at steps 10 and 19)."""
    out = tmp_path_factory.mktemp("faults-run")
    train_main(train_args("splatfacto-argp", demo_scene, out))
    config = out / "demo" / "splatfacto-argp" / "t" / "config.yml"
    assert sorted(p.name for p in (config.parent / MODELS).iterdir()) == ["step-000000010.ckpt", "step-000000019.ckpt"]
    return config


def copy_run(config: Path, dst: Path) -> Path:
    """A copy of the run (its whole output tree) under ``dst``, its config.yml pointing at the copy."""
    root = config.parents[3]
    shutil.copytree(root, dst)
    new = dst / config.relative_to(root)
    cfg = yaml.load(new.read_text(), Loader=yaml.Loader)
    cfg.output_dir = dst
    new.write_text(yaml.dump(cfg))
    return new


def truncate(path: Path) -> None:
    """Cut a checkpoint to half its size, as a kill during its save leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@dataclass
class Ctx:
    """What a case works with: the shared run, the scene, a scratch folder, and where its output must not appear."""

    run: Path
    scene: Path
    tmp: Path
    out: Path
    watched: Dict[str, str] = field(default_factory=dict)

    def watch(self, path: Path) -> Path:
        """Record the files of a case's own input (a damaged copy, a bad config, a data folder) as they are now."""
        self.watched.update(hashes(path))
        return path

    def damaged_copy(self, damage: Callable[[Path], None]) -> Path:
        """A watched copy of the run with ``damage`` applied to its checkpoint folder."""
        config = copy_run(self.run, self.tmp / "copy")
        damage(config.parent / MODELS)
        self.watch(self.tmp / "copy")
        return config


def exit_message(call: Callable[[], None]) -> str:
    """Run an entry point in-process; it must exit non-zero with a message (the one line Python prints)."""
    with pytest.raises(SystemExit) as exc:
        call()
    assert isinstance(exc.value.code, str), f"exit code {exc.value.code!r} without a message"
    return exc.value.code


def prune(ctx: Ctx, *args: str, config: Optional[Path] = None) -> str:
    from argp_ns.posthoc import Prune

    argv = ["--load-config", str(config or ctx.run), "--output-dir", str(ctx.out), *args]
    return exit_message(lambda: tyro.cli(Prune, args=argv).main())


def ns_train(ctx: Ctx, method: str = "splatfacto-argp", extra=(), scene: Optional[Path] = None, out: Optional[Path] = None) -> str:
    argv = train_args(method, scene or ctx.scene, out or ctx.out, extra)
    return exit_message(lambda: train_main(argv))


def command(ctx: Ctx, *cmd: str) -> str:
    """Run a real command: non-zero exit, no traceback, exactly one ``argp`` line on stderr, and it is the last."""
    proc = subprocess.run(list(cmd), env=ENV, capture_output=True, text=True, cwd=ctx.tmp)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = [line for line in lines if line.startswith(("argp_ns:", "argp-ns"))]
    assert len(ours) == 1 and lines[-1] == ours[0], proc.stderr[-3000:]
    return ours[0]


def empty_models(models: Path) -> None:
    for ckpt in models.glob("*.ckpt"):
        ckpt.unlink()


def truncate_newest(models: Path) -> None:
    truncate(max(models.glob("*.ckpt")))


def not_yaml(ctx: Ctx) -> str:
    bad = ctx.tmp / "config.yml"
    bad.write_text("method_name: [splatfacto-argp\n  pipeline: {\n")
    return prune(ctx, config=ctx.watch(bad))


def data_without_images(ctx: Ctx) -> Path:
    """The demo scene's transforms and points without its images."""
    data = ctx.tmp / "no-images"
    data.mkdir()
    for f in ctx.scene.glob("*.*"):
        shutil.copy(f, data / f.name)
    return ctx.watch(data)


def empty_data(ctx: Ctx) -> Path:
    data = ctx.tmp / "empty"
    data.mkdir()
    return ctx.watch(data)


def damaged_scene(ctx: Ctx, damage: Callable[[Path], None]) -> Path:
    """A watched copy of the demo scene with ``damage`` applied to it."""
    data = ctx.tmp / "scene"
    shutil.copytree(ctx.scene, data)
    damage(data)
    return ctx.watch(data)


def edit_transforms(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        path = data / "transforms_train.json"
        meta = json.loads(path.read_text())
        change(meta)
        path.write_text(json.dumps(meta))
    return damage


def first_train_image(data: Path) -> Path:
    meta = json.loads((data / "transforms_train.json").read_text())
    name = meta["frames"][1]["file_path"]  # not the first: blender-data reads the first one's size for every camera
    return data / (name if name.endswith(".png") else name + ".png")


def empty_yml(ctx: Ctx) -> Path:
    path = ctx.tmp / "empty.yml"
    path.write_text("")
    return path


def splat_folder(ctx: Ctx) -> Path:
    """A watched export folder whose splat.ply is a folder."""
    (ctx.tmp / "exp" / "splat.ply").mkdir(parents=True)
    ctx.watch(ctx.tmp / "exp")
    return ctx.tmp / "exp"


def link_to(link: Path, target: Path) -> Path:
    link.symlink_to(target, target_is_directory=True)
    return link


def truncate_file(path: Path, size: int) -> None:
    """Cut ``path`` to its first ``size`` bytes (a negative size: all but the last -size)."""
    data = path.read_bytes()
    path.write_bytes(data[:size])


def resized_image(data: Path) -> None:
    from PIL import Image

    path = first_train_image(data)
    Image.open(path).resize((10, 7)).save(path)


DATA_CASES: Dict[str, tuple] = {
    "data-no-frames": (edit_transforms(lambda m: m.update(frames=[])), "transforms_train.json lists no frames"),
    "data-no-camera-angle": (edit_transforms(lambda m: m.pop("camera_angle_x")), "lacks the field 'camera_angle_x'"),
    "data-transforms-not-json": (lambda d: (d / "transforms_train.json").write_text("{frames: ["), "is not valid JSON"),
    "data-transforms-not-utf8": (lambda d: (d / "transforms_train.json").write_bytes(b'{"frames": "\xff\xfe"}'), "not UTF-8"),
    "data-image-not-decodable": (lambda d: first_train_image(d).write_bytes(b"not a png"), "cannot be decoded"),
    "data-image-wrong-size": (resized_image, "is 10x7 but its camera says"),
    "data-image-truncated": (lambda d: truncate_file(first_train_image(d), 200), "cannot be decoded (Truncated File Read)"),
    "data-first-image-truncated": (lambda d: truncate_file(d / "train" / "r_0.png", 200),  # the dataparser reads it itself
                                   "train/r_0.png: OSError: image file is truncated"),
    "data-held-out-image-truncated": (lambda d: truncate_file(d / "test" / "r_1.png", -10), "r_1.png cannot be decoded (truncated PNG file)"),
    "data-val-no-frames": (lambda d: (d / "transforms_val.json").write_text('{"camera_angle_x": 0.7, "frames": []}'),
                           "transforms_val.json lists no frames"),
    "data-val-not-json": (lambda d: (d / "transforms_val.json").write_text("{frames: ["), "transforms_val.json is not valid JSON"),
    "data-val-not-utf8": (lambda d: (d / "transforms_val.json").write_bytes(b'{"frames": "\xff\xfe"}'), "transforms_val.json is not UTF-8"),
    "data-val-no-camera-angle": (lambda d: (d / "transforms_val.json").write_text('{"frames": [{"file_path": "./test/r_0", "transform_matrix": '
                                                                                  '[[1,0,0,0],[0,1,0,0],[0,0,1,3],[0,0,0,1]]}]}'),
                                 "lacks the field 'camera_angle_x'"),
    "data-seed-points-missing": (lambda d: (d / "points3d.ply").unlink(), "points3d.ply does not exist (--ply-path is relative"),
    "data-seed-points-empty": (lambda d: (d / "points3d.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\n"
                                                                        "property float x\nproperty float y\nproperty float z\nend_header\n"),
                               "points3d.ply holds no points"),
}


def run_script(*argv: str) -> str:
    """A nerfstudio script run in this process as its console script runs it (``sys.argv`` set, its ``entrypoint``
    called); the line it exits with."""
    import importlib
    from unittest import mock

    from argp_ns import compat

    module = {"ns-eval": "nerfstudio.scripts.eval", "ns-export": "nerfstudio.scripts.exporter"}[argv[0]]
    with mock.patch.object(sys, "argv", [str(a) for a in argv]):
        compat.note_export_dirs()  # what importing argp_ns does in a real ns-export process, before the script runs
        return exit_message(importlib.import_module(module).entrypoint)


def ns_eval(ctx: Ctx, config: Path, output_path: Optional[Path] = None, render_output_path: Optional[Path] = None) -> str:
    output_path = output_path or ctx.out / "metrics.json"
    render = ["--render-output-path", render_output_path] if render_output_path else []
    return run_script("ns-eval", "--load-config", config, "--output-path", output_path, *render)


def ns_export(ctx: Ctx, config: Path, output_dir: Path) -> str:
    return run_script("ns-export", "gaussian-splat", "--load-config", config, "--output-dir", output_dir)


def a_file(ctx: Ctx) -> Path:
    """A watched regular file in the scratch folder."""
    path = ctx.tmp / "a-file"
    path.write_text("not a folder\n")
    return ctx.watch(path)


def read_only_dir(ctx: Ctx) -> Path:
    """An empty folder nobody may write in (no use as root: root writes anyway)."""
    path = ctx.tmp / "read-only"
    path.mkdir()
    path.chmod(0o555)
    return path


def moved_data(ctx: Ctx) -> Path:
    """A watched copy of the run whose config.yml names a dataset that is no longer there."""
    config = copy_run(ctx.run, ctx.tmp / "moved")
    cfg = yaml.load(config.read_text(), Loader=yaml.Loader)
    cfg.pipeline.datamanager.dataparser.data = ctx.tmp / "moved-away"
    cfg.pipeline.datamanager.data = None
    config.write_text(yaml.dump(cfg))
    ctx.watch(ctx.tmp / "moved")
    return config


# case id -> (run the case and return its one line, a fragment that line must hold)
CASES: Dict[str, tuple] = {
    # argp-ns prune
    "prune-argp-keep-ratio-0": (lambda c: prune(c, "--method", "argp", "--keep-ratio", "0"), "--keep-ratio must be in (0, 1), got 0.0"),
    "prune-argp-keep-ratio-1.5": (lambda c: prune(c, "--method", "argp", "--keep-ratio", "1.5"), "--keep-ratio must be in (0, 1), got 1.5"),
    "prune-minisplatting-keep-ratio-0": (lambda c: prune(c, "--method", "minisplatting", "--keep-ratio", "0"), "--keep-ratio must be in (0, 1)"),
    "prune-top-k-0": (lambda c: prune(c, "--top-k", "0"), "--top-k must be >= 1, got 0"),
    "prune-top-k-negative": (lambda c: prune(c, "--top-k", "-3"), "--top-k must be >= 1, got -3"),
    "prune-lightgaussian-prune-ratio-1": (lambda c: prune(c, "--method", "lightgaussian", "--prune-ratio", "1.0"), "--prune-ratio must be in (0, 1), got 1.0"),
    "prune-score-nonsense": (lambda c: prune(c, "--score", "nonsense"), "--score 'nonsense' is not valid; use 'safeguard', 'efficientgs'"),
    "prune-truncated-checkpoint": (lambda c: prune(c, config=c.damaged_copy(truncate_newest)), "step-000000019.ckpt is unreadable (corrupt or truncated)"),
    "prune-empty-checkpoint-folder": (lambda c: prune(c, config=c.damaged_copy(empty_models)), "no checkpoint (step-*.ckpt) in"),
    "prune-config-not-yaml": (not_yaml, "is not a nerfstudio config.yml"),
    "prune-output-not-writable": (lambda c: prune(c, "--output-dir", "/proc/argp-ns-test/out"), "cannot create /proc/argp-ns-test/out"),
    "prune-output-under-a-file": (lambda c: prune(c, "--output-dir", str(c.run / "out")), "is a file, not a folder"),
    "prune-output-through-a-link-into-the-run": (lambda c: prune(c, "--output-dir", str(link_to(c.tmp / "lnk", c.run.parent) / "p")),
                                                 "is inside the source run"),
    # ns-train
    "train-prune-quantile-0": (lambda c: ns_train(c, extra=["--pipeline.model.prune-quantile=0"]), "argp_ns: prune_quantile must be in (0, 1), got 0.0"),
    "train-prune-quantile-1": (lambda c: ns_train(c, extra=["--pipeline.model.prune-quantile=1"]), "argp_ns: prune_quantile must be in (0, 1), got 1.0"),
    "train-aop-opacity-floor-1": (lambda c: ns_train(c, extra=["--pipeline.model.aop-opacity-floor=1"]),
                                  "argp_ns: aop_opacity_floor must be in [0, 1), got 1.0"),
    "train-irp-every-0": (lambda c: ns_train(c, extra=["--pipeline.model.irp-every=0"]), "argp_ns: irp_every must be >= 1, got 0"),
    "train-irp-beyond-the-run": (lambda c: ns_train(c, extra=["--pipeline.model.irp-start=100", "--pipeline.model.irp-last=100"]),
                                 "argp_ns: irp_last=100 must be before the last training step (20)"),
    "train-safeguard-top-k-0": (lambda c: ns_train(c, "splatfacto-safeguard", ["--pipeline.model.top-k=0"]), "argp_ns: top_k must be >= 1, got 0"),
    "train-safeguard-prune-step-beyond-the-run": (lambda c: ns_train(c, "splatfacto-safeguard", ["--pipeline.model.prune-step=100"]),
                                                  "argp_ns: prune_step=100 must be inside the run (1..19)"),
    "train-budget-without-scored-prune": (lambda c: ns_train(c, "splatfacto-safeguard", ["--pipeline.model.budget=50", "--pipeline.model.scored-prune=False"]),
                                          "argp_ns: budget needs the scored prune"),
    "train-safeguard-score-nonsense": (lambda c: ns_train(c, "splatfacto-safeguard", ["--pipeline.model.score=nonsense"]),
                                       "argp_ns: score 'nonsense' is not valid; use 'safeguard'"),
    "train-score-backend-cuda-on-cpu": (lambda c: ns_train(c, extra=["--pipeline.model.score-backend=cuda"]),
                                        "argp_ns: score_backend cuda needs a CUDA device (this run is on cpu); use auto or torch"),
    "train-output-under-a-file": (lambda c: ns_train(c, out=a_file(c) / "outputs"),
                                  "argp_ns: ns-train --output-dir: cannot create "),
    "train-empty-data-folder": (lambda c: ns_train(c, scene=empty_data(c)), "No such file or directory: "),
    "train-missing-images": (lambda c: ns_train(c, scene=data_without_images(c)), "No such file or directory: "),
    "train-resume-no-intact-checkpoint": (
        lambda c: ns_train(c, extra=["--load-dir", str(c.damaged_copy(lambda m: [truncate(p) for p in m.glob("*.ckpt")]).parent / MODELS)]),
        "no intact checkpoint in"),
    "eval-truncated-checkpoint": (lambda c: ns_eval(c, c.damaged_copy(truncate_newest)), "step-000000019.ckpt is unreadable (corrupt or truncated)"),
    "eval-output-not-json": (lambda c: ns_eval(c, c.run, c.out / "metrics.txt"), "metrics.txt must end in .json"),
    "eval-output-is-a-folder": (lambda c: ns_eval(c, c.run, Path(shutil.copytree(c.scene, c.tmp / "m.json"))), "m.json is a folder; give a .json file path"),
    "eval-output-under-a-file": (lambda c: ns_eval(c, c.run, a_file(c) / "metrics.json"), "a-file is a file, not a folder; choose another --output-path"),
    "eval-render-output-under-a-file": (lambda c: ns_eval(c, c.run, render_output_path=a_file(c) / "renders"),
                                        "ns-eval --render-output-path: cannot create"),
    "export-output-is-a-file": (lambda c: ns_export(c, c.run, a_file(c)), "a-file is a file, not a folder; choose another --output-dir"),
    "eval-dataset-moved": (lambda c: ns_eval(c, moved_data(c)), "moved-away is not there (moved or deleted?): put it back, or write"),
    "export-dataset-moved": (lambda c: ns_export(c, moved_data(c), c.out), "moved-away is not there (moved or deleted?)"),
    # the real commands
    "cli-prune-argp-keep-ratio-0": (lambda c: command(c, "argp-ns", "prune", "--load-config", str(c.run), "--output-dir", str(c.out),
                                                      "--method", "argp", "--keep-ratio", "0"), "argp-ns prune: --keep-ratio must be in (0, 1)"),
    "cli-train-no-data": (lambda c: command(c, "ns-train", *train_args("splatfacto-argp", Path("/nonexistent"), c.out)),
                          "argp_ns: the data path /nonexistent does not exist"),
    "cli-export-truncated-checkpoint": (lambda c: command(c, "ns-export", "gaussian-splat", "--load-config", str(c.damaged_copy(truncate_newest)),
                                                          "--output-dir", str(c.out)), "step-000000019.ckpt is unreadable (corrupt or truncated)"),
    "cli-eval-output-not-json": (lambda c: command(c, "ns-eval", "--load-config", str(c.run), "--output-path", str(c.out / "metrics.txt")),
                                 "metrics.txt must end in .json (the metrics are written as JSON)"),
    "cli-eval-output-under-a-file": (lambda c: command(c, "ns-eval", "--load-config", str(c.run), "--output-path", str(a_file(c) / "m.json")),
                                     "a-file is a file, not a folder; choose another --output-path"),
    "cli-export-output-is-a-file": (lambda c: command(c, "ns-export", "gaussian-splat", "--load-config", str(c.run), "--output-dir", str(a_file(c))),
                                    "argp_ns: ns-export --output-dir: "),
    # failures inside nerfstudio's own scripts before our code runs (compat.explain_script_faults)
    "cli-eval-missing-config": (lambda c: command(c, "ns-eval", "--load-config", str(c.tmp / "missing.yml"), "--output-path", str(c.out / "m.json")),
                                "argp_ns: ns-eval --load-config "),
    "cli-export-missing-config": (lambda c: command(c, "ns-export", "gaussian-splat", "--load-config", str(c.tmp / "missing.yml"),
                                                    "--output-dir", str(c.out)), "missing.yml does not exist: give the config.yml"),
    "cli-eval-config-is-a-folder": (lambda c: command(c, "ns-eval", "--load-config", str(c.tmp), "--output-path", str(c.out / "m.json")),
                                    "is a folder: give the config.yml a training run wrote"),
    "cli-export-config-not-a-run": (lambda c: command(c, "ns-export", "gaussian-splat", "--load-config", str(empty_yml(c)),
                                                      "--output-dir", str(c.out / "a" / "b")),  # out, out/a and out/a/b made, then removed
                                    "empty.yml is not a training run's config.yml"),
    "export-splat-ply-is-a-folder": (lambda c: ns_export(c, c.run, splat_folder(c)), "splat.ply is a folder; remove it or choose another --output-dir"),
    "cli-export-output-new-under-a-file": (lambda c: command(c, "ns-export", "gaussian-splat", "--load-config", str(c.run),
                                                             "--output-dir", str(a_file(c) / "splat")),
                                           "a-file/splat: Not a directory); choose another --output-dir"),
}
if os.geteuid() != 0:  # root writes in a read-only folder: these cases need an ordinary user
    CASES["cli-eval-output-read-only"] = (lambda c: command(c, "ns-eval", "--load-config", str(c.run), "--output-path",
                                                            str(read_only_dir(c) / "metrics.json")), "read-only is not writable (Permission denied)")
    CASES["cli-export-output-read-only"] = (lambda c: command(c, "ns-export", "gaussian-splat", "--load-config", str(c.run), "--output-dir",
                                                              str(read_only_dir(c))), "read-only is not writable (Permission denied)")
    CASES["cli-export-output-new-under-read-only"] = (lambda c: command(c, "ns-export", "gaussian-splat", "--load-config", str(c.run),
                                                                       "--output-dir", str(read_only_dir(c) / "splat")),
                                                      "read-only/splat: Permission denied); choose another --output-dir")
for _name, (_damage, _expected) in DATA_CASES.items():
    CASES[f"train-{_name}"] = ((lambda damage: lambda c: ns_train(c, scene=damaged_scene(c, damage)))(_damage), _expected)
if not torch.backends.mps.is_available():
    CASES["train-mps-without-mps"] = (lambda c: exit_message(lambda: train_main(train_args("splatfacto-argp", c.scene, c.out, device="mps"))),
                                      "argp_ns: no Apple MPS device on this machine")
CASES["cli-demo-device-mps"] = (lambda c: command(c, "argp-ns", "demo", "--device", "mps", "--output-dir", str(c.out)),
                                "argp-ns demo: --device must be cpu or cuda, got mps")
if not torch.cuda.is_available():
    CASES["cli-demo-cuda-without-cuda"] = (lambda c: command(c, "argp-ns", "demo", "--device", "cuda", "--output-dir", str(c.out)),
                                           "argp-ns demo: --device cuda, but there is no CUDA GPU")
    CASES["cli-train-without-cuda"] = (lambda c: command(c, "ns-train", *train_args("splatfacto-argp", c.scene, c.out, device=None)),
                                       "argp_ns: no CUDA GPU found (torch.cuda.is_available() is False); add --machine.device-type cpu")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_in_one_line_and_leaves_nothing(case, demo_run, demo_scene, tmp_path):
    ctx = Ctx(run=demo_run, scene=demo_scene, tmp=tmp_path, out=tmp_path / "out")
    before = hashes(demo_run.parents[3], demo_scene)
    run_case, expected = CASES[case]
    line = run_case(ctx)
    assert "\n" not in line and line.startswith(("argp_ns:", "argp-ns prune:", "argp-ns demo:")), line
    assert expected in line, line
    assert not ctx.out.exists(), sorted(ctx.out.rglob("*"))
    assert hashes(demo_run.parents[3], demo_scene) == before
    assert {path: hashes(Path(path)).get(path) for path in ctx.watched} == ctx.watched


@pytest.mark.parametrize("case", ["eval-output-not-json", "eval-output-under-a-file", "export-output-is-a-file"])
def test_a_bad_output_stops_before_the_pipeline_is_built(case, demo_run, demo_scene, tmp_path, monkeypatch):
    """ns-eval's and ns-export's output paths are checked when the run's config.yml is read, before nerfstudio's
    ``eval_setup`` builds the pipeline (which reads the dataset)."""
    from nerfstudio.configs.base_config import InstantiateConfig

    def no_setup(self, **kwargs):
        raise AssertionError(f"{type(self).__name__} built before the output check")

    monkeypatch.setattr(InstantiateConfig, "setup", no_setup)
    run_case, expected = CASES[case]
    assert expected in run_case(Ctx(run=demo_run, scene=demo_scene, tmp=tmp_path, out=tmp_path / "out"))


@pytest.mark.parametrize("script", ["eval", "export"])
def test_a_read_only_output_folder_ends_in_one_line(script, demo_run, tmp_path, monkeypatch):
    """A folder that refuses new entries (stood in for by a refused write test, as root writes anywhere) stops
    ns-eval and ns-export when the run's config.yml is read; the folder is kept."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    folder = tmp_path / "read-only"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    ctx = Ctx(run=demo_run, scene=demo_run, tmp=tmp_path, out=tmp_path / "out")
    if script == "eval":
        line = ns_eval(ctx, demo_run, folder / "metrics.json")
        assert line == f"argp_ns: ns-eval --output-path {folder / 'metrics.json'}: {folder} is not writable (Permission denied); choose another --output-path"
    else:
        line = ns_export(ctx, demo_run, folder)
        assert line == f"argp_ns: ns-export --output-dir: {folder} is not writable (Permission denied); choose another --output-dir"
    assert folder.is_dir() and not any(folder.iterdir())


def test_resume_skips_a_truncated_newest_checkpoint(demo_run, demo_scene, tmp_path, capsys):
    """A kill during a save leaves the newest checkpoint truncated: the resume says so in one line and continues
    from the newest intact one (step 10), for --max-num-iterations more steps (the IRP schedule moved to step 10, which
    is over at the resume: no round to score)."""
    models = copy_run(demo_run, tmp_path / "copy").parent / MODELS
    truncate_newest(models)
    before = hashes(models)
    train_main(train_args("splatfacto-argp", demo_scene, tmp_path / "out", ["--load-dir", str(models), "--max-num-iterations=2",
                                                                         "--pipeline.model.irp-start=10", "--pipeline.model.irp-last=10"]))
    lines = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
    assert lines == [f"argp_ns: step-000000019.ckpt unreadable (corrupt or truncated); resuming from {models / 'step-000000010.ckpt'}"]
    resumed = tmp_path / "out" / "demo" / "splatfacto-argp" / "t" / MODELS
    assert max(p.name for p in resumed.glob("*.ckpt")) == "step-000000012.ckpt"  # steps 11 and 12
    assert hashes(models) == before


def test_a_top_k_beyond_the_cuda_pass_stops_at_start_on_a_gpu():
    from argp_ns.checks import ConfigError, check_model
    from argp_ns.model import SplatfactoArgpModelConfig, SplatfactoSafeguardModelConfig

    for config in (SplatfactoSafeguardModelConfig(top_k=33), SplatfactoArgpModelConfig(top_k=40, final_round="safeguard")):
        with pytest.raises(ConfigError, match=r"top_k must be at most 32 for the CUDA score pass, got \d+; ") as err:
            check_model(config, 30000, "cuda")
        assert "\n" not in str(err.value)
        check_model(config, 30000, "cpu")  # the twin takes any k
        config.score_backend = "torch"
        check_model(config, 30000, "cuda")
    check_model(SplatfactoSafeguardModelConfig(top_k=32), 30000, "cuda")


def test_a_bad_ns_train_prints_no_config_dump(demo_scene, tmp_path):
    """ns-train prints its whole config before saving it: our checks run first, so a bad flag is the only output
    (no 260-line dump above the line)."""
    proc = subprocess.run(["ns-train", *train_args("splatfacto-argp", demo_scene, tmp_path / "out",
                                                   extra=["--pipeline.model.prune-quantile=0"])],
                          env=ENV, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "TrainerConfig(" not in proc.stdout + proc.stderr and "_target=" not in proc.stdout, proc.stdout[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == "argp_ns: prune_quantile must be in (0, 1), got 0.0"
    assert not (tmp_path / "out").exists()


def test_another_gsplat_stops_ns_train_at_start_in_one_line(demo_scene, tmp_path, monkeypatch):
    """The private gsplat API the plugin uses is 1.4's (argp_ns.gsplat_compat): another release stops ns-train on our
    methods before anything is written, instead of training wrongly."""
    import gsplat

    from argp_ns.gsplat_compat import version_problem

    assert version_problem("1.4.0") is None and version_problem("1.4.2+cu124") is None and version_problem() is None
    monkeypatch.setattr(gsplat, "__version__", "1.5.3")
    ctx = Ctx(run=tmp_path, scene=demo_scene, tmp=tmp_path, out=tmp_path / "out")
    assert ns_train(ctx) == ("argp_ns: gsplat 1.5.3 is installed; argp_ns is written for gsplat 1.4.0 (1.5 changed radii "
                             "to [C, N, 2] and never resets opacity): pip install gsplat==1.4.0")
    assert not ctx.out.exists()


def test_nerfstudio_own_early_faults_are_one_line_and_others_keep_their_traceback(monkeypatch, tmp_path):
    """compat.script_fault_line: only an OSError on ns-export's --output-dir (or an ancestor mkdir failed on) or on a
    missing --load-config becomes a line; any other error, or any process but ns-eval/ns-export, keeps its report."""
    from argp_ns import compat

    out, config = tmp_path / "ro" / "splat", tmp_path / "c.yml"
    monkeypatch.setattr(sys, "argv", ["ns-export", "gaussian-splat", "--load-config", str(config), "--output-dir", str(out)])
    denied = PermissionError(13, "Permission denied", str(out.parent))
    assert compat.script_fault_line(denied) == (f"argp_ns: ns-export --output-dir: cannot create {out} ({out.parent}: "
                                                "Permission denied); choose another --output-dir")
    assert compat.script_fault_line(FileNotFoundError(2, "No such file or directory", str(config))).startswith(
        f"argp_ns: ns-export --load-config {config} does not exist")
    assert compat.script_fault_line(FileNotFoundError(2, "No such file or directory", str(tmp_path / "other"))) is None
    assert compat.script_fault_line(ValueError("x")) is None
    monkeypatch.setattr(sys, "argv", ["ns-train", "splatfacto"])
    assert compat.script_fault_line(denied) is None


def test_a_truncated_jpeg_is_found_without_decoding_it(tmp_path):
    """checks.jpeg_complete: a whole JPEG ends with its end marker, one cut short does not (PIL's verify passes both)."""
    import numpy as np
    from PIL import Image

    from argp_ns.checks import jpeg_complete

    path = tmp_path / "a.jpg"
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype("uint8")).save(path, quality=90)
    assert jpeg_complete(path)
    truncate_file(path, path.stat().st_size // 2)
    assert not jpeg_complete(path)


def test_a_missing_absolute_seed_points_path_is_named_as_given(demo_scene, tmp_path):
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    from argp_ns.checks import ConfigError, check_dataset

    missing = tmp_path / "nowhere.ply"
    with pytest.raises(ConfigError) as err:
        check_dataset(BlenderDataParserConfig(ply_path=missing), demo_scene)
    assert str(err.value) == f"the seed points file {missing} does not exist"


def test_a_failed_export_keeps_the_folders_that_were_there(tmp_path):
    """ns-export fails before the run is read (no such config): the folders it made under --output-dir go, the folder
    that existed before stays."""
    keep = tmp_path / "keep"
    keep.mkdir()
    ctx = Ctx(run=tmp_path, scene=tmp_path, tmp=tmp_path, out=tmp_path / "unused")
    line = command(ctx, "ns-export", "gaussian-splat", "--load-config", str(tmp_path / "missing.yml"), "--output-dir", str(keep / "new" / "deeper"))
    assert "missing.yml does not exist" in line
    assert keep.is_dir() and not any(keep.iterdir())


def test_a_demo_whose_training_stops_at_start_leaves_no_scene(tmp_path, monkeypatch):
    """argp-ns demo: when ns-train stops at its start checks (no run folder), the scene this demo made is removed with
    the output folder it made; a Ctrl-C's line names the demo's own rerun as the way to resume."""
    from argp_ns import cli
    from argp_ns.trainer import RESUME_HINT, interrupt_line

    def refused(cmd, env):
        assert env[RESUME_HINT].startswith("run the same argp-ns demo command again")
        sys.exit("argp_ns: refused at start")

    monkeypatch.setattr(cli, "run", refused)
    out = tmp_path / "demo"
    with pytest.raises(SystemExit):
        cli.Demo(output_dir=out, device="cpu").main()
    assert not out.exists()
    monkeypatch.setenv(RESUME_HINT, "run the same argp-ns demo command again to continue from it")
    assert interrupt_line(7, tmp_path, 3) == (f"argp_ns: interrupted after step 7; checkpoint saved in {tmp_path}; run the same "
                                              "argp-ns demo command again to continue from it")
