"""What argp_ns takes from gsplat beyond its public API, and the gsplat it was written for: 1.4.0.

* ``gsplat.cuda._torch_impl``: the PyTorch reference of the projection, the covariances and spherical harmonics,
  which the CPU twin (:mod:`argp_ns.twin`) builds on; re-exported here under public names.
* ``DefaultStrategy``'s private hooks ``_update_state`` (per-step statistics), ``_grow_gs`` and ``_prune_gs``
  (the refine step), which :mod:`argp_ns.strategy` overrides or calls: their signatures, and ``info["radii"]`` of
  shape ``[C, N]``, are gsplat 1.4's.

gsplat 1.5 changed ``radii`` to ``[C, N, 2]`` and never resets opacity (ARGP's opacity quantiles assume splatfacto's
resets), so another gsplat would train wrongly without an error: :func:`version_problem` names the mismatch, and
ns-train on this plugin's methods stops on it at start (:func:`argp_ns.checks.check_model`).
"""

from __future__ import annotations

from typing import Optional

import gsplat
from gsplat.cuda._torch_impl import _fully_fused_projection as fully_fused_projection_torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci as quat_scale_to_covar_preci_torch
from gsplat.cuda._torch_impl import _spherical_harmonics as spherical_harmonics_torch

WRITTEN_FOR = "1.4.0"
"""The gsplat release these internals were read from (any 1.4.x patch release is taken)."""

__all__ = ["WRITTEN_FOR", "fully_fused_projection_torch", "quat_scale_to_covar_preci_torch", "spherical_harmonics_torch",
           "version_problem"]


def version_problem(version: Optional[str] = None) -> Optional[str]:
    """None when ``version`` (default: the installed gsplat's) is a 1.4.x release, else the one-line reason."""
    version = version or getattr(gsplat, "__version__", "unknown")
    if version.split("+")[0].split(".")[:2] == WRITTEN_FOR.split(".")[:2]:
        return None
    return (f"gsplat {version} is installed; argp_ns is written for gsplat {WRITTEN_FOR} (1.5 changed radii to "
            f"[C, N, 2] and never resets opacity): pip install gsplat=={WRITTEN_FOR}")
