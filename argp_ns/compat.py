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
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

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
    """Apply both fixes once per process (idempotent)."""
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


# --- nerfstudio 1.1.5's ns-eval and ns-export: their options, from their own command line ---------------------------

_IMPORTED_AT = time.time()
SCRIPTS = {"ns-eval": ("nerfstudio.scripts.eval", "ComputePSNR"), "ns-export": ("nerfstudio.scripts.exporter", "Commands")}
"""nerfstudio's scripts that load a run through ``eval_setup``: console-script name -> (module, the type its
``entrypoint`` hands ``tyro.cli``)."""


def running_script() -> Optional[Any]:
    """The options object of the ns-eval or ns-export this process runs (``ns-eval ...``, ``ns-export ...`` or
    ``python -m nerfstudio.scripts.eval ...``): its command line, ``sys.argv``, parsed again by the script's own tyro
    parser, so it equals the object the script runs with; None in any other process."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = Path(sys.argv[0]).name if sys.argv else ""
    for script, (module, attr) in SCRIPTS.items():
        if name == script or getattr(main_spec, "name", None) == module:
            import importlib

            import tyro

            return tyro.cli(getattr(importlib.import_module(module), attr), args=sys.argv[1:])
    return None


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


def remove_new_export_dir() -> None:
    """``ns-export`` makes its output folder before it loads the run: remove it if it is empty and not older
    than this process's import of argp_ns (so a folder the user made before is kept)."""
    exporter = running_script()
    if exporter is None or not hasattr(exporter, "output_dir"):
        return
    out = Path(exporter.output_dir)
    if out.is_dir() and not any(out.iterdir()) and out.stat().st_mtime >= _IMPORTED_AT - 2.0:
        out.rmdir()
