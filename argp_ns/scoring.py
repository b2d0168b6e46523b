"""The score pass: per-Gaussian pruning scores over a set of views, by the CUDA kernel or its PyTorch twin.

For each view (camera + ground-truth image + background) the Gaussians are projected and intersected
with 16x16 tiles (gsplat's CUDA ops on the GPU, the twin's pure-torch ones on the CPU); then either
``argp_ns.cuda`` walks gsplat's tile lists in one pass, or :func:`argp_ns.scores.accumulate_tiles`
computes the same numbers from the same lists, chunk of tiles by chunk of tiles (bounded memory).
What is computed is documented in :mod:`argp_ns.scores`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Literal, Optional, Tuple

import torch
from torch import Tensor

from argp_ns import cuda as kernel
from argp_ns import twin
from argp_ns.scores import ScoreSpec, accumulate_tiles, empty_totals

Backend = Literal["auto", "cuda", "torch"]
TILE = kernel.TILE_SIZE  # the tile size gsplat intersects with and the kernel is built for


@dataclass
class View:
    """One camera of the pass: world-to-camera [4,4], intrinsics [3,3], size, GT image [H,W,3], background [3]."""

    viewmat: Tensor
    K: Tensor
    width: int
    height: int
    image: Tensor
    background: Tensor


@dataclass
class ScorePassResult:
    """Per-Gaussian totals (see :func:`argp_ns.scores.empty_totals`), per-view coverage, backend, time."""

    totals: Dict[str, Tensor]
    coverage: List[float] = field(default_factory=list)
    backend: str = "torch"
    seconds: float = 0.0


def choose_backend(device: torch.device, backend: Backend) -> str:
    """'cuda' when asked for or available on a CUDA device, else 'torch' (the twin)."""
    if backend == "torch" or device.type != "cuda":
        if backend == "cuda":
            raise RuntimeError("the CUDA score kernel needs CUDA tensors")
        return "torch"
    if kernel.available():
        return "cuda"
    if backend == "cuda":
        raise RuntimeError(kernel.unavailable_reason())
    return "torch"


def _project(means, quats, scales, opacities, coeffs, sh_degree, view: View) -> Dict[str, Tensor]:
    """Project one view: means2d, conics, opacities, colours [N,...] and gsplat's tile lists on CUDA."""
    vm, K = view.viewmat[None], view.K[None]
    if means.is_cuda:
        from gsplat import fully_fused_projection, isect_offset_encode, isect_tiles

        radii, means2d, depths, conics, _ = fully_fused_projection(means, None, quats, scales, vm, K, view.width, view.height, packed=False)
        opac = opacities[None]
    else:
        p = twin.project(means, quats, scales, opacities, vm, K, view.width, view.height)
        radii, means2d, depths, conics, opac = (p[k] for k in ("radii", "means2d", "depths", "conics", "opacities"))
    colors = twin.view_colors(means, coeffs, vm, radii, sh_degree) if not means.is_cuda else _gsplat_colors(means, coeffs, vm, radii, sh_degree)
    out = {"radii": radii[0], "means2d": means2d[0].contiguous(), "depths": depths[0], "conics": conics[0].contiguous(),
           "opacities": opac[0].contiguous(), "colors": colors[0].contiguous()}
    if means.is_cuda:
        tw, th = math.ceil(view.width / TILE), math.ceil(view.height / TILE)
        _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE, tw, th, packed=False)
        out["isect_offsets"] = isect_offset_encode(isect_ids, 1, tw, th)[0].contiguous()
        out["flatten_ids"] = flatten_ids.contiguous()
    return out


def _gsplat_colors(means: Tensor, coeffs: Tensor, vm: Tensor, radii: Tensor, sh_degree: Optional[int]) -> Tensor:
    """gsplat's CUDA SH evaluation, +0.5, clamped at 0, as ``gsplat.rasterization`` does."""
    if sh_degree is None:
        return coeffs[None]
    from gsplat import spherical_harmonics

    dirs = means[None] - torch.linalg.inv(vm)[:, None, :3, 3]
    rgb = spherical_harmonics(sh_degree, dirs, coeffs[None].expand(vm.shape[0], -1, -1, -1), masks=radii > 0)
    return torch.clamp_min(rgb + 0.5, 0.0)


def gsplat_tile_chunks(isect_offsets: Tensor, flatten_ids: Tensor, width: int, height: int) -> Iterator[Tuple[Tensor, Tensor, Tensor, Tensor]]:
    """gsplat's tile lists of one camera as padded chunks (tiles, lists [T,K], pixel xy, inside); see
    :func:`twin.tile_chunks`."""
    th, tw = isect_offsets.shape
    starts = isect_offsets.reshape(-1).long()
    ends = torch.cat([starts[1:], starts.new_tensor([flatten_ids.numel()])])
    for tiles, k in twin.tile_chunks(ends - starts, TILE * TILE):
        pos = starts[tiles, None] + torch.arange(k, device=tiles.device)
        inside_list = pos < ends[tiles, None]
        lists = torch.where(inside_list, flatten_ids[pos.clamp(max=max(flatten_ids.numel() - 1, 0))].long(), -1) if flatten_ids.numel() else torch.full_like(pos, -1)
        xy, inside = twin.tile_pixels(tiles, TILE, tw, width, height)
        yield tiles, lists, xy, inside


def score_views(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, coeffs: Tensor, sh_degree: Optional[int],
    views: Iterable[View], spec: ScoreSpec, k: int = 1, tile_scope: bool = False, recovery: bool = False,
    backend: Backend = "auto",
) -> ScorePassResult:
    """Run the pass over ``views`` for Gaussians (means, quats, activated scales [N,3] and opacities [N],
    SH coefficients [N,K,3] at ``sh_degree`` or colours [N,3] with ``sh_degree=None``). The totals are
    :func:`argp_ns.scores.empty_totals`'s, filled alike by both backends (a budget's wins and sum_score too)."""
    if k < 1:
        raise ValueError(f"top-k must be >= 1, got {k}")
    used = choose_backend(means.device, backend)  # the kernel refuses k > MAX_K (a run checks it at start: options.py)
    totals = empty_totals(means.shape[0], means.device)
    result = ScorePassResult(totals=totals, backend=used)
    t0 = time.perf_counter()
    covered: List[Tuple[Tensor, int]] = []  # per view (pixels with a contributor, on the device; pixels)
    with torch.no_grad():
        for view in views:
            proj = _project(means, quats, scales, opacities, coeffs, sh_degree, view)
            gt = view.image[..., :3].float().contiguous()
            bg = view.background.float().contiguous()
            if used == "cuda":
                cam = kernel.Camera(proj["means2d"], proj["conics"], proj["opacities"], proj["colors"], gt, bg,
                                    proj["isect_offsets"], proj["flatten_ids"], view.width, view.height)
                cov = kernel.score_camera(totals, cam, spec, k, tile_scope, recovery)
                n_cov = cov.sum()
            else:
                n_cov = torch.zeros((), dtype=torch.long, device=means.device)
                if means.is_cuda:
                    chunks = gsplat_tile_chunks(proj["isect_offsets"], proj["flatten_ids"], view.width, view.height)
                else:
                    tw, th = math.ceil(view.width / TILE), math.ceil(view.height / TILE)
                    lo, hi = twin.tile_bounds(proj["means2d"][None], proj["radii"][None], TILE, tw, th)
                    chunks = twin.iter_tile_chunks(lo[0], hi[0], proj["depths"], view.width, view.height, TILE)
                for _, lists, xy, inside in chunks:
                    px = gt[xy[..., 1].clamp(max=view.height - 1), xy[..., 0].clamp(max=view.width - 1)]
                    cov = accumulate_tiles(totals, lists, xy, inside, px, bg, proj["means2d"], proj["conics"],
                                           proj["opacities"], proj["colors"], spec, k, tile_scope, recovery)
                    n_cov += cov.sum()
            covered.append((n_cov, view.width * view.height))
    # one device-to-host copy at the end: no sync between views
    counts = torch.stack([c for c, _ in covered]).tolist() if covered else []
    result.coverage = [c / float(n) for c, (_, n) in zip(counts, covered)]
    result.seconds = time.perf_counter() - t0
    return result
