"""One declaration per option, and runs of the last release before the options moved (40ce28a) still load and resume."""

from __future__ import annotations

import ast
import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import tyro

from argp_ns import options
from test_faults import MODELS, train_args, train_main

PACKAGE = Path(__file__).resolve().parents[1] / "argp_ns"
OLD_RUN = Path(__file__).parent / "data" / "run-40ce28a"
"""A 20-step splatfacto-argp run on the demo scene (48 px, 16 views, 800 seed points) made by commit 40ce28a, with its
checkpoint at step 14 (IRP candidates marked at round 12, round 16 ahead); config.yml's paths are placeholders."""


def declared_fields() -> Counter:
    """How often each annotated class attribute (a dataclass field) is declared across argp_ns's modules."""
    names: Counter = Counter()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names.update(s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name))
    return names


def test_each_option_is_declared_once():
    """Every option of the option dataclasses is declared in argp_ns once: in argp_ns/options.py."""
    counts = declared_fields()
    option_classes = [c for c in vars(options).values() if dataclasses.is_dataclass(c)]
    for cls in option_classes:
        for f in dataclasses.fields(cls):
            assert counts[f.name] == 1, f"{f.name} is declared {counts[f.name]} times in argp_ns"


@pytest.mark.parametrize("method, options_cls", [("splatfacto-argp", options.ArgpOptions),
                                                 ("splatfacto-safeguard", options.SafeguardOptions),
                                                 ("splatfacto-mcmc", options.McmcOptions)])
def test_every_option_is_a_flag_that_reaches_the_strategy(method, options_cls):
    """Each field of a method's option class is an ns-train flag (--pipeline.model.<name>), and a value given on the
    command line reaches the strategy the model config builds."""
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion, all_methods

    default = all_methods[method]
    for f in dataclasses.fields(options_cls):
        value = getattr(default.pipeline.model, f.name)
        if isinstance(value, bool):
            new, text = not value, str(not value)
        elif f.name in ("irp_preset",):
            new = text = "released"
        elif f.name in ("irp_mode",):
            new = text = "hidden"
        elif f.name in ("final_round",):
            new = text = "safeguard"
        elif f.name in ("prune_method",):
            new = text = "radsplat"
        elif f.name == "score":
            new = text = "efficientgs"
        elif f.name == "topk_scope":
            new = text = "tile"
        elif isinstance(value, int):
            new, text = value + 100, str(value + 100)
        elif f.name in ("mark_ratio", "recover_ratio") or isinstance(value, float):
            new = round((value or 0.3) * 0.5, 6)
            text = str(new)
        else:
            raise AssertionError(f"no test value for {f.name}")
        config = tyro.cli(AnnotatedBaseConfigUnion, args=[method, f"--pipeline.model.{f.name.replace('_', '-')}", text])
        assert getattr(config.pipeline.model.build_strategy(num_train_data=3), f.name) == new, f.name


def old_run(tmp_path: Path, scene: Path) -> Path:
    """The stored run of 40ce28a under tmp_path, its config.yml pointing at ``scene`` and at its new place."""
    root = tmp_path / "old"
    run = root / "demo" / "splatfacto-argp" / "t"
    shutil.copytree(OLD_RUN, run)
    config = run / "config.yml"
    config.write_text(config.read_text().replace("@OUTPUT_DIR@", str(root)).replace("@SCENE@", str(scene)))
    return config


def test_a_run_of_the_last_release_evaluates(demo_scene, tmp_path):
    """ns-eval on a config.yml and checkpoint written by 40ce28a (nerfstudio's pipeline class, the flat flags)."""
    import json
    import sys
    from unittest import mock

    from nerfstudio.scripts import eval as eval_script

    config = old_run(tmp_path, demo_scene)
    metrics = tmp_path / "m.json"
    with mock.patch.object(sys, "argv", ["ns-eval", "--load-config", str(config), "--output-path", str(metrics)]):
        eval_script.entrypoint()
    assert json.loads(metrics.read_text())["results"]["psnr"] > 5


def test_a_run_of_the_last_release_resumes_with_its_pruning_state(demo_scene, tmp_path, capsys):
    """ns-train --load-dir on 40ce28a's checkpoint at step 14: its IRP candidates and prune log come back, and the
    round at step 16 deletes among them."""
    config = old_run(tmp_path, demo_scene)
    saved = torch.load(config.parent / MODELS / "step-000000014.ckpt", map_location="cpu", weights_only=False)
    candidates = saved["pipeline"]["_model._extra_state"]["irp_candidates"]
    assert candidates is not None and candidates.any()
    out = tmp_path / "resumed"
    train_main(train_args("splatfacto-argp", demo_scene, out, ["--load-dir", str(config.parent / MODELS), "--max-num-iterations=5"]))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("argp_ns: step 16: irp removed ") for line in lines), lines[-20:]
    ckpt = torch.load(out / "demo" / "splatfacto-argp" / "t" / MODELS / "step-000000019.ckpt", map_location="cpu", weights_only=False)
    events = ckpt["pipeline"]["_model._extra_state"]["prune_events"]
    assert [e["step"] for e in events] == [16] and events[0]["removed"] > 0


def imported_modules(path: Path) -> set:
    """The modules ``path`` imports (``from X import ...`` and ``import X``), as written."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_model_imports_no_schedule_or_report():
    """The model only models: it imports neither the pruning loop, the score pass, the report nor the panel."""
    assert not imported_modules(PACKAGE / "model.py") & {"argp_ns.pruning", "argp_ns.scoring", "argp_ns.report", "argp_ns.panel",
                                                       "argp_ns.pipeline"}


def test_only_the_compat_modules_import_private_names():
    """No module but compat.py, gsplat_compat.py and torch_compat.py imports a ``_``-prefixed name or module from
    gsplat, nerfstudio or torch, or reads a ``torch._`` attribute."""
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("compat.py", "gsplat_compat.py", "torch_compat.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("gsplat", "nerfstudio", "torch"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private and not any(p.startswith("_") for p in node.module.split(".")), (path.name, node.module, private)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
                assert not node.attr.startswith("_"), (path.name, node.attr)