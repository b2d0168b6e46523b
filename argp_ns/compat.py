"""Make nerfstudio 1.1.5 work with current torch and on offline machines, for every splatfacto method; and the
places where this plugin reaches into nerfstudio 1.1.5's scripts (the checkpoint loader ``eval_setup`` calls, the
options of the running ns-eval or ns-export, parsed again from its command line).

Two process-wide fixes, applied once when ``argp_ns`` is imported (nerfstudio imports it through the
method entry point before any ns-* tool builds a model or loads a checkpoint):

* Checkpoints. torch >= 2.6 loads with ``weights_only=True``; nerfstudio's checkpoints hold numpy
  scalars (the learning rates of its ``LambdaLR`` schedulers are ``np.float64``), so every
  ``ns-eval`` / ``ns-export`` / ``ns-viewer`` / resume fails. We allowlist exactly the numpy globals
  those checkpoints need (numpy 1 and 2 spellings) with ``torch.serialization.add_safe_globals``,
  and leave torch's safe loader on for everything else.
* LPIPS. splatfacto builds torchmetrics' LPIPS, which downloads torchvision's AlexNet weights and
  crashes without network. When the weights are not in torch's hub cache we build a stand-in that
  computes nothing; the metric is then left out of the metrics dict, with one warning. LPIPS is
  never computed with random weights.

And in an ns-eval or ns-export process only, the errors nerfstudio raises before any code of this plugin runs (a
``--load-config`` that does not exist, an ns-export ``--output-dir`` it cannot make) end in one line instead of a
traceback: :func:`explain_script_faults`.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

_installed = False

WRITTEN_FOR = "1.1.5"
"""The nerfstudio release whose internals this module patches and reads (any 1.1.x patch release is taken)."""


def version_problem(version: Optional[str] = None) -> Optional[str]:
    """None when ``version`` (default: the installed nerfstudio's) is a 1.1.x release, else the one-line reason."""
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed("nerfstudio")
        except PackageNotFoundError:
            version = "unknown"
    if version.split("+")[0].split(".")[:2] == WRITTEN_FOR.split(".")[:2]:
        return None
    return (f"nerfstudio {version} is installed; argp_ns is written for nerfstudio {WRITTEN_FOR} (its splatfacto, "
            f"eval_setup and checkpoint layout): pip install nerfstudio=={WRITTEN_FOR}")


def checkpoint_safe_globals() -> list:
    """The numpy globals that nerfstudio 1.1.5 checkpoints pickle (present in this numpy)."""
    names = []
    for module, attr in (
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.dtypes", "Float64DType"),
        ("numpy.dtypes", "Float32DType"),
        ("numpy.dtypes", "Int64DType"),
    ):
        try:
            mod = __import__(module, fromlist=[attr])
            names.append(getattr(mod, attr))
        except (ImportError, AttributeError):
            continue
    names.append(np.dtype)
    return names


def lpips_weights_path() -> str:
    """Where torchvision keeps the pretrained AlexNet weights that LPIPS needs (torch hub cache)."""
    from torchvision.models import AlexNet_Weights

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url))


def lpips_available() -> bool:
    """True when LPIPS can be computed with its real pretrained weights, without network."""
    return os.path.isfile(lpips_weights_path())


class UnavailableLPIPS(torch.nn.Module):
    """Stand-in for torchmetrics' LPIPS when its pretrained weights are absent: returns NaN, which the
    metrics wrapper below removes, so the metric is reported as absent and never faked."""

    def forward(self, *_: torch.Tensor) -> torch.Tensor:
        return torch.tensor(float("nan"))


@functools.lru_cache(maxsize=None)
def _warn_lpips_once() -> None:
    warnings.warn(
        f"LPIPS left out of the metrics: pretrained AlexNet weights not found at {lpips_weights_path()} "
        "(no network?). Copy them there to get LPIPS.",
        stacklevel=3,
    )


def _offline_lpips_factory(real_cls):
    """Wrap torchmetrics' LPIPS class: the real metric when the weights are cached, else the stand-in."""

    class OfflineSafeLPIPS(real_cls):  # type: ignore[misc, valid-type]
        def __new__(cls, *args, **kwargs):
            if lpips_available():
                return real_cls(*args, **kwargs)
            _warn_lpips_once()
            return UnavailableLPIPS()

    OfflineSafeLPIPS.__name__ = real_cls.__name__
    return OfflineSafeLPIPS


def drop_absent_metrics(metrics: Dict[str, float]) -> Dict[str, float]:
    """Remove LPIPS entries that could not be computed (NaN from the stand-in)."""
    return {k: v for k, v in metrics.items() if not (k.endswith("lpips") and v != v)}


def _wrap_image_metrics(fn):
    @functools.wraps(fn)
    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        metrics, images = fn(self, outputs, batch)
        return drop_absent_metrics(metrics), images

    get_image_metrics_and_images.__argp_ns_wrapped__ = True
    return get_image_metrics_and_images


def install() -> None:
    """Apply both fixes once per process (idempotent), and in ns-eval/ns-export :func:`explain_script_faults`."""
    global _installed
    if _installed:
        return
    _installed = True
    torch.serialization.add_safe_globals(checkpoint_safe_globals())

    import torchmetrics.image.lpip as tm_lpip

    if not getattr(tm_lpip.LearnedPerceptualImagePatchSimilarity, "__argp_ns_wrapped__", False):
        tm_lpip.LearnedPerceptualImagePatchSimilarity = _offline_lpips_factory(tm_lpip.LearnedPerceptualImagePatchSimilarity)
        tm_lpip.LearnedPerceptualImagePatchSimilarity.__argp_ns_wrapped__ = True

    from nerfstudio.models.splatfacto import SplatfactoModel

    if not getattr(SplatfactoModel.get_image_metrics_and_images, "__argp_ns_wrapped__", False):
        SplatfactoModel.get_image_metrics_and_images = _wrap_image_metrics(SplatfactoModel.get_image_metrics_and_images)
    note_export_dirs()
    explain_script_faults()


# --- nerfstudio 1.1.5's ns-eval and ns-export: their options, from their own command line ---------------------------

SCRIPTS = {"ns-eval": ("nerfstudio.scripts.eval", "ComputePSNR"), "ns-export": ("nerfstudio.scripts.exporter", "Commands")}
"""nerfstudio's scripts that load a run through ``eval_setup``: console-script name -> (module, the type its
``entrypoint`` hands ``tyro.cli``)."""


def script_name() -> Optional[str]:
    """``ns-eval`` or ``ns-export`` when this process runs that script (its console script or ``python -m
    nerfstudio.scripts.eval``), else None."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = Path(sys.argv[0]).name if sys.argv else ""
    for script, (module, _) in SCRIPTS.items():
        if name == script or getattr(main_spec, "name", None) == module:
            return script
    return None


def running_script() -> Optional[Any]:
    """The options object of the ns-eval or ns-export this process runs: its command line, ``sys.argv``, parsed again
    by the script's own tyro parser, so it equals the object the script runs with; None in any other process."""
    script = script_name()
    if script is None:
        return None
    import importlib

    import tyro

    module, attr = SCRIPTS[script]
    return tyro.cli(getattr(importlib.import_module(module), attr), args=sys.argv[1:])


def script_fault_line(err: BaseException) -> Optional[str]:
    """The one line for an error nerfstudio 1.1.5's ns-eval or ns-export raises before any code of this plugin runs,
    or None for any other error: its ``--load-config`` cannot be read (missing, a folder, unreadable: ``eval_setup``
    reads it first) or is not a training run's config (``eval_setup`` asserts a ``TrainerConfig``), or ns-export cannot
    make its ``--output-dir`` (made before the run is loaded; ``err.filename`` is that folder or the ancestor
    ``mkdir(parents=True)`` failed on)."""
    options = running_script()
    config = getattr(options, "load_config", None)
    if isinstance(err, AssertionError) and config is not None and _raised_in(err, "eval_setup"):
        return (f"argp_ns: {script_name()} --load-config {config} is not a training run's config.yml (it holds no "
                "nerfstudio TrainerConfig)")
    if not isinstance(err, OSError) or err.filename is None:
        return None
    path = Path(err.filename)
    if config is not None and path == Path(config):
        what = {FileNotFoundError: "does not exist", IsADirectoryError: "is a folder"}.get(type(err), f"cannot be read ({err.strerror})")
        return f"argp_ns: {script_name()} --load-config {config} {what}: give the config.yml a training run wrote (outputs/<experiment>/<method>/<timestamp>/config.yml)"
    out = getattr(options, "output_dir", None)
    if out is not None and (path == Path(out) or path in Path(out).parents):
        return f"argp_ns: ns-export --output-dir: cannot create {out} ({path}: {err.strerror}); choose another --output-dir"
    return None


def _raised_in(err: BaseException, function: str) -> bool:
    """``err`` was raised by a function of this name (the last frame of its traceback)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == function


def explain_script_faults() -> None:
    """In an ns-eval or ns-export process, print :func:`script_fault_line`'s errors as that one line (exit status 1)
    instead of a traceback, and remove the empty folders ns-export made for an export that never started; every other
    error keeps Python's own report. The one place for nerfstudio's own early failures: drop it once nerfstudio
    checks these paths itself."""
    if script_name() is None or getattr(sys.excepthook, "__argp_ns_wrapped__", False):
        return
    previous = sys.excepthook

    def excepthook(kind, err, tb):
        line = script_fault_line(err)
        if line is None:
            return previous(kind, err, tb)
        remove_new_export_dir()
        print(line, file=sys.stderr)

    excepthook.__argp_ns_wrapped__ = True
    sys.excepthook = excepthook


def guard_eval_checkpoints(before: Callable[[Any], None]) -> None:
    """Wrap nerfstudio's ``eval_load_checkpoint`` (once ``nerfstudio.utils.eval_utils`` is imported) so that
    ``before(config)`` runs first, for every run ``eval_setup`` loads (ns-eval, ns-export, ns-viewer)."""
    eval_utils = sys.modules.get("nerfstudio.utils.eval_utils")
    load = getattr(eval_utils, "eval_load_checkpoint", None)  # absent while eval_utils is still importing
    if load is None or getattr(load, "__argp_ns_wrapped__", False):
        return

    @functools.wraps(load)
    def eval_load_checkpoint(config, pipeline):
        before(config)
        return load(config, pipeline)

    eval_load_checkpoint.__argp_ns_wrapped__ = True
    eval_utils.eval_load_checkpoint = eval_load_checkpoint


def existing_ancestor(path: Path) -> Path:
    """The deepest part of ``path`` (made absolute) that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _argv_output_dirs() -> List[Path]:
    """The ``--output-dir`` values of this process's command line (read before ns-export's own parser runs)."""
    args = sys.argv[1:]
    flags = ("--output-dir", "--output_dir")
    values = [b for a, b in zip(args, args[1:]) if a in flags]
    return [Path(v) for v in values + [a.split("=", 1)[1] for a in args if a.startswith(tuple(f + "=" for f in flags))]]


_EXISTED_AT_IMPORT: Dict[Path, Path] = {}
"""ns-export only: each ``--output-dir`` of the command line -> its deepest part that existed when argp_ns was imported
(before ns-export makes the folder), so that :func:`remove_new_export_dir` removes exactly the folders it made."""


def note_export_dirs() -> None:
    """In an ns-export process, record the part of each ``--output-dir`` that exists now (run at import, before
    ns-export makes the folder)."""
    if script_name() == "ns-export":
        _EXISTED_AT_IMPORT.update({d: existing_ancestor(d) for d in _argv_output_dirs()})


def remove_new_export_dir() -> None:
    """``ns-export`` makes its output folder (and any missing parents) before it loads the run: remove the ones it
    made, from the deepest up, while they are empty; a folder that existed before is kept."""
    exporter = running_script()
    if exporter is None or not hasattr(exporter, "output_dir"):
        return
    out = Path(exporter.output_dir).absolute()
    existed = _EXISTED_AT_IMPORT.get(Path(exporter.output_dir), out)
    for folder in [out, *out.parents]:  # deepest first, up to the part that existed
        if folder == existed or not folder.is_dir() or any(folder.iterdir()):
            break
        folder.rmdir()
