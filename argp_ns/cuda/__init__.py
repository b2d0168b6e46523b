"""The CUDA score pass: one kernel walks gsplat's tile lists of one camera and scores every contributor.

The extension (``score_pass.cu`` + ``bindings.cpp``) is JIT-built by ``torch.utils.cpp_extension.load`` on
first use, as ``argp_ns_score`` in torch's extension cache (``TORCH_EXTENSIONS_DIR``; ``MAX_JOBS`` and
``TORCH_CUDA_ARCH_LIST`` are honoured), with ``-O3`` and without fast math. It computes exactly what
:func:`argp_ns.scores.accumulate_tiles` computes (see :mod:`argp_ns.scores` for the formulas): one CUDA block
per 16x16 tile, one thread per pixel, the tile's list staged in shared memory 256 entries at a time.

Tile lists: tile t of the camera holds ``flatten_ids[start_t:end_t] - cam_offset``, front to back, with
``start_t = isect_offsets.flatten()[t]``; ``end_t`` is the next tile's start, and for the camera's last tile
the number of entries of this and earlier cameras, ``(flatten_ids < cam_offset + N).sum()`` (gsplat sorts the
intersections by camera first and ``flatten_ids = cam * N + gaussian``), so only this camera's
``isect_offsets [tile_h, tile_w]`` is needed.

Tile scope: the kernel writes one record slot per (tile, 256-batch of the tile's list, pixel in the tile) at
``rec_start[t] + 256 * batch + (y % 16) * 16 + x % 16``, where ``rec_start`` is the exclusive cumsum of
``256 * ceil(len_t / 256)``; a slot holds the batch's last contributor of that pixel and its score, or id -1.
Slots are thus in the reference's (tile, batch, pixel) order; the records are sorted by score descending
(stable), then by tile (stable), and the first k of each tile set ``keep_tile``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from argp_ns.scores import BASES, COLOURS, DISTANCES, TILE_BATCH, ScoreSpec

NAME = "argp_ns_score"
MAX_K = 32
TILE_SIZE = 16
_DIR = Path(__file__).resolve().parent
_SOURCES = ("bindings.cpp", "score_pass.cu")
_TOTALS = ("keep", "sum_w", "max_w", "hits", "sum_opacity", "recovery", "wins", "sum_score")
_COMPLAINT = re.compile(r"error|cannot find|undefined|not found", re.IGNORECASE)
_log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def load_extension(name: str, sources: Tuple[str, ...]) -> Tuple[Optional[ModuleType], Optional[str]]:
    """(the built module, None), or (None, the reason it cannot be used). JIT-built from ``sources`` (files of
    this folder) with ``-O3`` and without fast math, at most once per process, cached on disk by torch."""
    try:
        if not torch.cuda.is_available():
            return None, "argp_ns: no CUDA device; using the PyTorch version"
        from torch.utils import cpp_extension

        home = cpp_extension.CUDA_HOME
        if home is None or not (Path(home) / "bin" / ("nvcc.exe" if os.name == "nt" else "nvcc")).is_file():
            return None, "argp_ns: no CUDA toolkit (nvcc) found; using the PyTorch version"
        _log.info("argp_ns: building the CUDA extension %s (first use only)", name)
        module = cpp_extension.load(name=name, sources=[str(_DIR / s) for s in sources], extra_cflags=["-O3"],
                                    extra_cuda_cflags=["-O3"], verbose=False)
        return module, None
    except Exception as exc:  # noqa: BLE001 - any failure means "use the PyTorch version"
        return None, f"argp_ns: CUDA extension {name} unavailable ({_first_error_line(exc)}); using the PyTorch version"


def _first_error_line(exc: BaseException) -> str:
    """The most telling line of a build failure: the first compiler or linker complaint, else the first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    return next((ln for ln in lines[1:] if _COMPLAINT.search(ln)), lines[0])


def _load() -> Tuple[Optional[ModuleType], Optional[str]]:
    """The score-pass extension, or the reason it cannot be used."""
    return load_extension(NAME, _SOURCES)


def unavailable_reason() -> Optional[str]:
    """None if the kernel can be used; otherwise a one-line reason (no CUDA device, no nvcc, build error).
    The first call on a CUDA machine builds the extension; the result is cached. Never raises."""
    return _load()[1]


def available() -> bool:
    """Whether :func:`score_camera` can run (a CUDA device, nvcc, and a successful build)."""
    return unavailable_reason() is None


@dataclass
class Camera:
    """One camera of the pass as the kernel reads it. All tensors CUDA and contiguous: the projected ``means2d``
    [N,2], ``conics`` [N,3] (a, b, c), ``opacities`` [N], ``colors`` [N,3] float32; the ground truth ``image``
    [H,W,3] and ``background`` [3] float32; gsplat's ``isect_offsets`` [tile_h, tile_w] of this camera (16-pixel
    tiles) and ``flatten_ids`` [M] int32 (entries ``cam * N + gaussian``, ``cam_offset = cam * N``)."""

    means2d: Tensor
    conics: Tensor
    opacities: Tensor
    colors: Tensor
    image: Tensor
    background: Tensor
    isect_offsets: Tensor
    flatten_ids: Tensor
    width: int
    height: int
    cam_offset: int = 0


def score_camera(totals: Dict[str, Tensor], cam: Camera, spec: ScoreSpec, k: int, tile_scope: bool = False,
                 recovery: bool = False) -> Tensor:
    """Score one camera into ``totals`` in place; returns covered [H, W] bool (pixels with a contributor).

    ``totals`` as :func:`argp_ns.scores.empty_totals` makes them (keep, keep_tile bool; sum_w, sum_opacity, recovery,
    sum_score float64; max_w float32; hits, wins int64; length N), summed over cameras: keep_tile is filled with
    ``tile_scope`` only, recovery with ``recovery`` only, the others always. ``spec`` is the family member ranking a
    pixel's contributors; ``k`` the per-pixel (and per-tile) top-k, 1 <= k <= MAX_K (the one check of the limit
    for the kernel; a run checks it at start, :meth:`argp_ns.options.BackendOption.validate_backend`).
    """
    if not 1 <= k <= MAX_K:
        raise ValueError(f"the CUDA score pass supports 1 <= k <= {MAX_K}, got {k}")
    means2d, isect_offsets, flatten_ids, width, height = cam.means2d, cam.isect_offsets, cam.flatten_ids, cam.width, cam.height
    module, reason = _load()
    if module is None:
        raise RuntimeError(reason)
    tile_h, tile_w = (height + TILE_SIZE - 1) // TILE_SIZE, (width + TILE_SIZE - 1) // TILE_SIZE
    if tuple(isect_offsets.shape) != (tile_h, tile_w):
        raise ValueError(f"isect_offsets must be this camera's [{tile_h}, {tile_w}], got {tuple(isect_offsets.shape)}")
    n = means2d.shape[0]
    starts = isect_offsets.reshape(-1).to(torch.int32).contiguous()
    cam_end = (flatten_ids < cam.cam_offset + n).sum().to(torch.int32).reshape(1)
    ends = torch.cat([starts[1:], cam_end])
    if tile_scope:
        slots = (ends - starts + TILE_BATCH - 1).div(TILE_BATCH, rounding_mode="floor").long() * TILE_BATCH
        rec_start = slots.cumsum(0) - slots
        n_slots = int(slots.sum().item())
        rec_score = torch.empty(n_slots, dtype=torch.float32, device=means2d.device)
        rec_id = torch.full((n_slots,), -1, dtype=torch.int32, device=means2d.device)
    else:
        rec_start = torch.empty(0, dtype=torch.int64, device=means2d.device)
        rec_score = torch.empty(0, dtype=torch.float32, device=means2d.device)
        rec_id = torch.empty(0, dtype=torch.int32, device=means2d.device)
    covered = module.score_pass(
        *(totals[key] for key in _TOTALS), means2d, cam.conics, cam.opacities, cam.colors, cam.image, cam.background,
        starts, ends, flatten_ids, rec_start, rec_score, rec_id, int(cam.cam_offset), int(width), int(height),
        tile_w, tile_h, BASES.index(spec.base), DISTANCES.index(spec.distance), COLOURS.index(spec.colour),
        float(spec.k_p), float(spec.k_c), int(k), bool(recovery),
    )
    if tile_scope:
        _keep_best_records(totals["keep_tile"], rec_start, rec_score, rec_id, k)
    return covered


def _keep_best_records(keep_tile: Tensor, rec_start: Tensor, rec_score: Tensor, rec_id: Tensor, k: int) -> None:
    """Per tile, mark the Gaussians of the k best records: score descending, ties in slot order (batch, pixel)."""
    slot = torch.nonzero(rec_id >= 0).squeeze(1)
    if slot.numel() == 0:
        return
    tile = torch.searchsorted(rec_start, slot, right=True) - 1
    order = torch.sort(rec_score[slot], descending=True, stable=True).indices
    order = order[torch.sort(tile[order], stable=True).indices]
    tile = tile[order]
    rank = torch.arange(tile.numel(), device=tile.device) - torch.searchsorted(tile, tile)
    keep_tile[rec_id[slot[order[rank < k]]].long()] = True
