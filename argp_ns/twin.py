"""Pure-PyTorch twin of the part of ``gsplat.rasterization`` (v1.4.0) that splatfacto uses.

gsplat has no CPU rasterizer. This twin takes the same arguments and returns the same
``(render_colors [C,H,W,D], render_alphas [C,H,W,1], info)`` for pinhole cameras, ``packed=False``,
``RGB`` / ``RGB+ED`` (and ``D`` / ``ED``), SH or plain colours, and backgrounds. Per pixel p, with the
Gaussians of p's 16x16 tile sorted front to back (gsplat's tile lists):

    sigma_i = 0.5 * (a dx^2 + c dy^2) + b dx dy,  (dx, dy) = mu2d_i - (p + 0.5),  conic_i = (a, b, c)
    alpha_i = min(0.999, opacity_i * exp(-sigma_i)),  skipped when sigma_i < 0 or alpha_i < 1/255
    T_i     = prod_{j<i} (1 - alpha_j),  and the walk stops before the first i with T_i (1 - alpha_i) <= 1e-4
    C(p)    = sum_i c_i alpha_i T_i + T_final * background,   alpha(p) = 1 - T_final

It is differentiable by autograd; ``info["means2d"]`` keeps ``.grad`` (after ``retain_grad``) and gets
``.absgrad`` = sum over pixels of |dL/dmu2d| per component, as gsplat's backward writes it, so
gsplat's ``DefaultStrategy`` densifies and prunes on it exactly as on the GPU. Meant for tiny scenes
(tests, CPU runs) and as the reference the CUDA paths are tested against.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

from argp_ns.gsplat_compat import fully_fused_projection_torch, quat_scale_to_covar_preci_torch, spherical_harmonics_torch

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
# elements of one [tiles, pixels, list] block; bounds the twin's memory per chunk (about 40 float32
# temporaries of this size live at once: ~0.7 GB on the CPU, ~5 GB on a GPU, where fewer, larger chunks
# mean fewer launches of the per-entry transmittance walk)
_BLOCK_ELEMS = {"cpu": 1 << 22, "cuda": 1 << 25}


def project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    rasterize_mode: str = "classic",
) -> Dict[str, Tensor]:
    """gsplat's EWA projection (its own pure-torch code): radii, means2d, depths, conics, opacities [C,N]."""
    covars, _ = quat_scale_to_covar_preci_torch(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, comp = fully_fused_projection_torch(
        means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
        calc_compensations=rasterize_mode == "antialiased",
    )
    opac = opacities.unsqueeze(0).expand(viewmats.shape[0], -1)
    if comp is not None:
        opac = opac * comp
    return {"radii": radii, "means2d": means2d, "depths": depths, "conics": conics, "opacities": opac}


def view_colors(means: Tensor, colors: Tensor, viewmats: Tensor, radii: Tensor, sh_degree: Optional[int]) -> Tensor:
    """Per-camera colours [C,N,D]: SH at ``sh_degree`` towards (mean - camera centre), +0.5, clamped at 0
    (zero for Gaussians outside the view, as gsplat masks them); plain colours are broadcast."""
    C = viewmats.shape[0]
    if sh_degree is None:
        return colors if colors.dim() == 3 else colors.unsqueeze(0).expand(C, -1, -1)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    dirs = means[None] - campos[:, None]
    coeffs = colors if colors.dim() == 4 else colors.unsqueeze(0).expand(C, -1, -1, -1)
    rgb = spherical_harmonics_torch(sh_degree, dirs, coeffs)
    rgb = torch.where((radii > 0)[..., None], rgb, torch.zeros_like(rgb))
    return torch.clamp_min(rgb + 0.5, 0.0)


def tile_bounds(means2d: Tensor, radii: Tensor, tile_size: int, tile_w: int, tile_h: int) -> Tuple[Tensor, Tensor]:
    """Tile rectangle [min, max) of each Gaussian (gsplat's isect_tiles rule); empty where radii == 0."""
    tile_xy = means2d.detach() / tile_size
    r = (radii / tile_size).unsqueeze(-1)
    hi = torch.tensor([tile_w, tile_h], device=means2d.device)
    lo_xy = torch.minimum(torch.floor(tile_xy - r).clamp(min=0).long(), hi)
    hi_xy = torch.minimum(torch.ceil(tile_xy + r).clamp(min=0).long(), hi)
    hi_xy = torch.where((radii > 0).unsqueeze(-1), hi_xy, lo_xy)
    return lo_xy, hi_xy


def tile_lists(
    lo_xy: Tensor, hi_xy: Tensor, depths: Tensor, tiles: Tensor, tile_w: int
) -> Tensor:
    """Padded lists [len(tiles), K] of the Gaussians of one camera intersecting each tile, front to back
    (stable by index on equal depth, like gsplat's radix sort), padded with -1."""
    tx, ty = (tiles % tile_w)[:, None], (tiles // tile_w)[:, None]
    hit = (lo_xy[None, :, 0] <= tx) & (tx < hi_xy[None, :, 0]) & (lo_xy[None, :, 1] <= ty) & (ty < hi_xy[None, :, 1])
    order = torch.argsort(depths, stable=True)
    hit = hit[:, order]
    k = max(1, int(hit.sum(1).max().item()) if hit.numel() else 0)
    slot = torch.argsort((~hit).to(torch.uint8), dim=1, stable=True)[:, :k]
    ids = order[slot]
    return torch.where(torch.gather(hit, 1, slot), ids, torch.full_like(ids, -1))


def tile_pixels(tiles: Tensor, tile_size: int, tile_w: int, width: int, height: int) -> Tuple[Tensor, Tensor]:
    """Pixel (x, y) [T, tile_size^2, 2] of each tile, row-major inside the tile, and which lie in the image."""
    off = torch.arange(tile_size * tile_size, device=tiles.device)
    x = (tiles % tile_w)[:, None] * tile_size + off % tile_size
    y = (tiles // tile_w)[:, None] * tile_size + off // tile_size
    return torch.stack([x, y], -1), (x < width) & (y < height)


def tile_counts(lo_xy: Tensor, hi_xy: Tensor, tile_w: int, tile_h: int) -> Tensor:
    """Number of Gaussians of one camera on each tile [tile_h * tile_w] (2-D difference array)."""
    diff = torch.zeros(tile_h + 1, tile_w + 1, dtype=torch.long, device=lo_xy.device)
    m = (hi_xy > lo_xy).all(-1)
    (lx, ly), (hx, hy) = lo_xy[m].T, hi_xy[m].T
    one = torch.ones_like(lx)
    for ys, xs, sign in ((ly, lx, 1), (ly, hx, -1), (hy, lx, -1), (hy, hx, 1)):
        diff.index_put_((ys, xs), sign * one, accumulate=True)
    return diff.cumsum(0).cumsum(1)[:tile_h, :tile_w].reshape(-1)


def tile_chunks(lengths: Tensor, pixels: int) -> Iterator[Tuple[Tensor, int]]:
    """(tile indices, the chunk's longest list) in chunks of about ``_BLOCK_ELEMS[device]`` list entries (chunk
    size x pixels x longest list), longest lists first, so that short lists are not padded to the camera's
    longest one."""
    budget = _BLOCK_ELEMS.get(lengths.device.type, _BLOCK_ELEMS["cpu"])
    host = lengths.cpu()
    order = torch.argsort(host, descending=True, stable=True)
    sizes = host[order].clamp(min=1).tolist()
    start = 0
    while start < len(sizes):
        n = max(1, budget // (pixels * sizes[start]))
        yield order[start : start + n].to(lengths.device), sizes[start]
        start += n


def iter_tile_chunks(
    lo_xy: Tensor, hi_xy: Tensor, depths: Tensor, width: int, height: int, tile_size: int
) -> Iterator[Tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Walk one camera's tiles in chunks (see :func:`tile_chunks`): (tiles [T], lists [T,K], pixel xy [T,P,2],
    pixel in image [T,P])."""
    tile_w, tile_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    for tiles, _ in tile_chunks(tile_counts(lo_xy, hi_xy, tile_w, tile_h), tile_size * tile_size):
        lists = tile_lists(lo_xy, hi_xy, depths, tiles, tile_w)
        xy, inside = tile_pixels(tiles, tile_size, tile_w, width, height)
        yield tiles, lists, xy, inside


def gaussian_alpha(mu: Tensor, conic: Tensor, opacity: Tensor, xy: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """alpha = min(0.999, opacity * exp(-sigma)), the unclamped opacity * G, and sigma >= 0, for
    Gaussians (mu [...,K,2], conic [...,K,3], opacity [...,K]) at pixels xy [...,2] (centre at +0.5)."""
    dx = mu[..., 0] - (xy[..., 0:1].to(mu.dtype) + 0.5)
    dy = mu[..., 1] - (xy[..., 1:2].to(mu.dtype) + 0.5)
    sigma = 0.5 * (conic[..., 0] * dx * dx + conic[..., 2] * dy * dy) + conic[..., 1] * dx * dy
    vis = opacity * torch.exp(-sigma)
    return torch.clamp(vis, max=ALPHA_MAX), vis, sigma >= 0


def stop_walk(alpha: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
    """Apply the early stop: contributors (valid and before the first T (1 - alpha) <= 1e-4) and their alphas."""
    a = torch.where(valid, alpha, torch.zeros_like(alpha))
    keep = valid & (torch.cumprod(1 - a.detach(), -1) > T_MIN)
    return keep, torch.where(keep, alpha, torch.zeros_like(alpha))


def exclusive_transmittance(a: Tensor) -> Tuple[Tensor, Tensor]:
    """T_i = prod_{j<i} (1 - a_j) along the last dim, and T_final."""
    incl = torch.cumprod(1 - a, -1)
    return torch.cat([torch.ones_like(incl[..., :1]), incl[..., :-1]], -1), incl[..., -1]


def _absgrad_hook(absgrad: Tensor, ids: Tensor):
    """Backward hook on per-(pixel, Gaussian) means2d copies [T,P,K,2] of tile lists ids [T,K]: adds
    |grad| summed over the tile's pixels (pixels a Gaussian does not touch contribute zero)."""
    def hook(grad: Tensor) -> None:
        flat = ids.reshape(-1)
        sel = flat >= 0
        absgrad.index_add_(0, flat[sel], grad.abs().sum(1).reshape(-1, 2)[sel])
    return hook


def _composite_camera(
    means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, background: Optional[Tensor],
    lo_xy: Tensor, hi_xy: Tensor, depths: Tensor, width: int, height: int, tile_size: int, absgrad: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    """Render one camera: colours [H,W,D] and alpha [H,W,1]."""
    out_t, out_c, out_a = [], [], []
    for tiles, ids, xy, inside in iter_tile_chunks(lo_xy, hi_xy, depths, width, height, tile_size):
        lists = ids[:, None, :].expand(-1, xy.shape[1], -1)
        mu = means2d[ids.clamp(min=0)][:, None].expand(-1, xy.shape[1], -1, -1)
        if absgrad is not None and mu.requires_grad:
            mu = mu + 0  # a per-pixel node whose gradient is the per-pixel contribution
            mu.register_hook(_absgrad_hook(absgrad, ids))
        g = lists.clamp(min=0)
        alpha, _, sigma_ok = gaussian_alpha(mu, conics[g], opacities[g], xy)
        valid = (lists >= 0) & inside[..., None] & sigma_ok & (alpha >= ALPHA_MIN)
        _, a = stop_walk(alpha, valid)
        T, T_final = exclusive_transmittance(a)
        rgb = ((a * T)[..., None] * colors[g]).sum(-2)
        if background is not None:
            rgb = rgb + T_final[..., None] * background
        out_t.append(tiles)
        out_c.append(rgb)
        out_a.append(1 - T_final)
    tile_w, tile_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles = torch.cat(out_t)

    def to_image(x: Tensor) -> Tensor:
        x = x.reshape(len(tiles), tile_size * tile_size, -1)
        x = torch.zeros(tile_h * tile_w, *x.shape[1:], dtype=x.dtype, device=x.device).index_copy(0, tiles, x)
        x = x.reshape(tile_h, tile_w, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(tile_h * tile_size, tile_w * tile_size, -1)[:height, :width]

    return to_image(torch.cat(out_c)), to_image(torch.cat(out_a).unsqueeze(-1))


def rasterization(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    camera_model: str = "pinhole",
    **_: object,
) -> Tuple[Tensor, Tensor, Dict]:
    """Same arguments and outputs as ``gsplat.rasterization`` for the subset splatfacto uses (see module doc)."""
    if packed or sparse_grad or camera_model != "pinhole" or radius_clip > 0:
        raise ValueError("the twin rasterizer supports packed=False, sparse_grad=False, pinhole cameras, radius_clip=0")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")
    C = viewmats.shape[0]
    proj = project(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d, rasterize_mode)
    radii, means2d, depths, conics, opac = (proj[k] for k in ("radii", "means2d", "depths", "conics", "opacities"))
    rgb = view_colors(means, colors, viewmats, radii, sh_degree)
    if render_mode in ("RGB+D", "RGB+ED"):
        rgb = torch.cat([rgb, depths[..., None]], -1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], -1)
    elif render_mode in ("D", "ED"):
        rgb = depths[..., None]
        backgrounds = None if backgrounds is None else backgrounds.new_zeros(C, 1)
    tile_w, tile_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    lo_xy, hi_xy = tile_bounds(means2d, radii, tile_size, tile_w, tile_h)
    absgrad_buf = means2d.new_zeros(means2d.shape) if absgrad else None
    images, alphas = [], []
    for c in range(C):
        buf = None if absgrad_buf is None else absgrad_buf[c]
        bg = None if backgrounds is None else backgrounds[c]
        img, alp = _composite_camera(
            means2d[c], conics[c], opac[c], rgb[c], bg, lo_xy[c], hi_xy[c], depths[c], width, height, tile_size, buf
        )
        images.append(img)
        alphas.append(alp)
    render_colors, render_alphas = torch.stack(images), torch.stack(alphas)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat([render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], -1)
    if absgrad_buf is not None:
        means2d.absgrad = absgrad_buf
    info = {
        "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d, "depths": depths,
        "conics": conics, "opacities": opac, "tile_width": tile_w, "tile_height": tile_h,
        "tiles_per_gauss": (hi_xy - lo_xy).clamp(min=0).prod(-1).int(), "width": width, "height": height,
        "tile_size": tile_size, "n_cameras": C,
    }
    return render_colors, render_alphas, info
