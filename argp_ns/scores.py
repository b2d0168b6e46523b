"""Per-pixel pruning scores, in pure PyTorch: the reference for the CUDA pass in ``argp_ns/cuda``.

For one pixel p and its Gaussians front to back (gsplat's tile list; contributors as in
:mod:`argp_ns.twin`), with ``w_i = alpha_i T_i``:

* score family (SafeguardGS): ``score_i = base_i * distance_i * colour_i`` with
  base in {1, opacity, alpha, opacity*T, alpha*T}, distance in {1, exp(-k_p |p + 0.5 - mu2d_i|)},
  colour in {1, cos(c_i, g_p), 1 - |c_i - g_p|_1 / 3, exp(-k_c |c_i - g_p|_1 / 3)};
  the bitmask alias of the official code is ``16 * colour + 5 * distance + base`` (0x24 = SafeguardGS).
* per-pixel top-k: the k highest scores among the pixel's contributors, ties to the front-most.
* tile scope (the released SafeguardGS CUDA): per pixel and per 256-long batch of the tile list, the last
  contributor of the batch is a record; per tile, the k highest records are kept (ties: earlier batch,
  then lower pixel index in the tile, then the order of the tile list).
* scene-level sums per Gaussian: sum w, max w, hit count, sum of opacity over hits; and for budgets
  (:meth:`argp_ns.strategy.SafeguardStrategy.ranking`) ``wins``, the number of pixels (over all views) whose
  top-k holds it, and ``sum_score``, its family score summed over the pixels it contributes to.
* ARGP recovery score ``S_i = sum_p opacity_i G_i(p) (dL/dalpha_i)^2``, ``L = sum_p sum_c clamp(C_c(p), 0, 1)``:
  ``dL/dalpha_i = T_i sum_c m_c (c_ic - B_ic) - T_final / (1 - alpha_i) sum_c m_c bg_c``,
  ``m_c = 1[0 < C_c(p) < 1]``, ``T_i B_i = (R - sum_{j<=i} w_j c_j) / (1 - alpha_i)`` with R = sum_j w_j c_j.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from argp_ns.twin import ALPHA_MIN, T_MIN, gaussian_alpha

BASES = ("one", "opacity", "alpha", "opacity_t", "alpha_t")
DISTANCES = ("none", "exp")
COLOURS = ("none", "cosine", "l1", "exp_l1")
TILE_BATCH = 256


class PaperScore(IntEnum):
    """The family members the SafeguardGS paper evaluates, by their bitmask code ``16 * colour + 5 * distance + base``."""

    OPACITY_T = 3
    EFFICIENTGS = 4  # alpha_t
    EXP_OPACITY_T = 8
    EXP_ALPHA_T = 9
    SAFEGUARD = 36  # alpha_t * l1
    ALPHA_EXP_L1 = 39
    OPACITY_T_EXP_L1 = 40
    ALPHA_T_EXP_L1 = 52
    ALPHA_T_EXP_EXP_L1 = 57


NAMED = {"safeguard": PaperScore.SAFEGUARD, "efficientgs": PaperScore.EFFICIENTGS}
VALID_SCORES = (f"'safeguard', 'efficientgs', a family code ({', '.join(str(int(c)) for c in PaperScore)}; hex like 0x24 "
                "too), or factors joined by '*': a base (alpha_t, alpha, opacity_t, opacity), optionally exp, and a colour "
                "term (l1, cosine, exp_l1)")


@dataclass(frozen=True)
class ScoreSpec:
    """One member of the score family: base x distance x colour."""

    base: str = "alpha_t"
    distance: str = "none"
    colour: str = "l1"
    k_p: float = 1.0
    k_c: float = 1.0

    def __post_init__(self) -> None:
        for value, allowed in ((self.base, BASES), (self.distance, DISTANCES), (self.colour, COLOURS)):
            if value not in allowed:
                raise ValueError(f"score factor {value!r} is not one of {allowed}")

    @property
    def code(self) -> int:
        """The official bitmask code: 16 * colour + 5 * distance + base."""
        return 16 * COLOURS.index(self.colour) + 5 * DISTANCES.index(self.distance) + BASES.index(self.base)

    @property
    def name(self) -> str:
        return "*".join(f for f in (self.base, self.distance, self.colour) if f not in ("one", "none")) or "one"

    @classmethod
    def from_code(cls, code: int) -> "ScoreSpec":
        colour, low = divmod(int(code), 16)
        distance, base = divmod(low, 5)
        if colour >= len(COLOURS) or distance >= len(DISTANCES):
            raise ValueError(f"score code {code} is not a member of the family (multiplicative codes only)")
        return cls(BASES[base], DISTANCES[distance], COLOURS[colour])

    @classmethod
    def parse(cls, text: Union[str, int]) -> "ScoreSpec":
        """'safeguard', 'efficientgs', a code ('36', '0x24') or factors joined by '*' ('alpha_t*l1')."""
        s = str(text).strip().lower()
        if s in NAMED:
            return cls.from_code(NAMED[s])
        if s.startswith("0x") or s.isdigit():
            return cls.from_code(int(s, 0))
        parts = s.split("*")
        base = next((p for p in parts if p in BASES), "one")
        distance = next((p for p in parts if p in DISTANCES), "none")
        colour = next((p for p in parts if p in COLOURS), "none")
        unknown = [p for p in parts if p not in BASES + DISTANCES + COLOURS]
        if unknown:
            raise ValueError(f"unknown score factor(s) {unknown}; use {BASES}, {DISTANCES[1:]}, {COLOURS[1:]}")
        return cls(base, distance, colour)


def sequential_transmittance(a: Tensor, stop_at: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """T_i = prod_{j<i}(1 - a_j) multiplied one by one in float32, as the kernels do, and T_final.

    With ``stop_at``, the walk ends once every row's transmittance is <= stop_at (checked every 32 entries);
    the T_i left are 0 (every later T_i (1 - a_i) <= stop_at, so a cut-off test ``> stop_at`` is unchanged).
    The walk runs over the list axis moved to the front (contiguous columns: two launches per entry)."""
    keep = (1 - a).movedim(-1, 0).contiguous()
    T = torch.zeros_like(keep)
    t = torch.ones_like(keep[0])
    for i in range(keep.shape[0]):
        if stop_at is not None and i % 32 == 0 and i and bool((t <= stop_at).all()):
            break
        T[i] = t
        t = t * keep[i]
    return T.movedim(0, -1), t


def family_score(spec: ScoreSpec, opac: Tensor, alpha: Tensor, T: Tensor, dist: Tensor, col: Tensor, gt: Tensor) -> Tensor:
    """score = base * distance * colour for lists [..., K] (col [..., K, 3], gt [..., 1, 3])."""
    base = {"one": torch.ones_like(alpha), "opacity": opac, "alpha": alpha, "opacity_t": opac * T, "alpha_t": alpha * T}[spec.base]
    if spec.distance == "exp":
        base = base * torch.exp(-spec.k_p * dist)
    if spec.colour == "cosine":
        base = base * (col * gt).sum(-1) / (col.norm(dim=-1) * gt.norm(dim=-1)).clamp(min=1e-8)
    elif spec.colour == "l1":
        base = base * (1 - (col - gt).abs().sum(-1) / 3)
    elif spec.colour == "exp_l1":
        base = base * torch.exp(-spec.k_c * (col - gt).abs().sum(-1) / 3)
    return base


def empty_totals(n: int, device: torch.device) -> Dict[str, Tensor]:
    """Per-Gaussian accumulators of one pass. The sums are float64: over a set of views a Gaussian gathers
    up to millions of float32 terms, which a float32 sum would round away at the 1e-3 level."""
    f = lambda dtype: torch.zeros(n, dtype=dtype, device=device)  # noqa: E731
    return {"keep": f(torch.bool), "keep_tile": f(torch.bool), "sum_w": f(torch.float64), "max_w": f(torch.float32),
            "hits": f(torch.long), "sum_opacity": f(torch.float64), "recovery": f(torch.float64),
            "wins": f(torch.long), "sum_score": f(torch.float64)}


@torch.no_grad()
def accumulate_tiles(
    totals: Dict[str, Tensor], ids: Tensor, xy: Tensor, inside: Tensor, gt: Tensor, background: Tensor,
    means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, spec: ScoreSpec, k: int,
    tile_scope: bool = False, recovery: bool = False,
) -> Tensor:
    """Score one chunk of tiles of one camera into ``totals``; returns pixels with a contributor [T, P].

    ids [T,K] tile lists (-1 padded), xy [T,P,2] pixels, inside [T,P], gt [T,P,3] ground truth,
    background [3], and the camera's projected means2d [N,2], conics [N,3], opacities [N], colours [N,3].
    """
    g = ids.clamp(min=0)[:, None, :]
    alpha, vis, sigma_ok = gaussian_alpha(means2d[g], conics[g], opacities[g], xy)
    valid = (ids >= 0)[:, None, :] & inside[..., None] & sigma_ok & (alpha >= ALPHA_MIN)
    a = torch.where(valid, alpha, torch.zeros_like(alpha))
    T, _ = sequential_transmittance(a, stop_at=T_MIN)
    contrib = valid & (T * (1 - a) > T_MIN)
    # drop the list tail after the chunk's last contributor: nothing there counts
    used = torch.nonzero(contrib.flatten(0, 1).any(0))
    n_used = int(used.max().item()) + 1 if used.numel() else 1
    g, alpha, vis, contrib = g[..., :n_used], alpha[..., :n_used], vis[..., :n_used], contrib[..., :n_used]
    a = torch.where(contrib, alpha, torch.zeros_like(alpha))
    T, T_final = sequential_transmittance(a)
    w = a * T
    gg = g.expand_as(contrib)[contrib]
    totals["sum_w"].index_add_(0, gg, w[contrib].double())
    totals["max_w"].scatter_reduce_(0, gg, w[contrib], reduce="amax")
    totals["hits"].index_add_(0, gg, torch.ones_like(gg))
    totals["sum_opacity"].index_add_(0, gg, opacities[gg].double())

    col = colors[g].expand(*contrib.shape, 3)
    dist = (means2d[g] - (xy[..., None, :].to(means2d.dtype) + 0.5)).norm(dim=-1)
    score = family_score(spec, opacities[g].expand_as(alpha), alpha, T, dist, col, gt[..., None, :])
    totals["sum_score"].index_add_(0, gg, score[contrib].double())
    score = torch.where(contrib, score, torch.full_like(score, float("-inf")))
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :k]
    top = torch.gather(contrib, -1, order)
    winners = torch.gather(g.expand_as(contrib), -1, order)[top]
    totals["keep"][winners] = True
    totals["wins"].index_add_(0, winners, torch.ones_like(winners))
    if tile_scope:
        _tile_records(totals["keep_tile"], g.expand_as(contrib), score, contrib, k)
    if recovery:
        wc = w[..., None] * col
        R = wc.sum(-2, keepdim=True)
        rendered = R.squeeze(-2) + T_final[..., None] * background
        m = ((rendered > 0) & (rendered < 1)).to(alpha.dtype)[..., None, :]
        behind = (R - wc.cumsum(-2)) / (1 - a)[..., None]
        dl = (m * (T[..., None] * col - behind)).sum(-1) - (T_final[..., None] / (1 - a)) * (m * background).sum(-1)
        s = vis * dl * dl
        totals["recovery"].index_add_(0, gg, s[contrib].double())
    return contrib.any(-1)


def _tile_records(keep_tile: Tensor, g: Tensor, score: Tensor, contrib: Tensor, k: int) -> None:
    """Tile scope: one record per (pixel, 256-batch of the tile list), the batch's last contributor; keep
    the k best records per tile, ordered by (score desc, batch, pixel) on ties."""
    Tn, P, K = score.shape
    nb = (K + TILE_BATCH - 1) // TILE_BATCH
    pad = nb * TILE_BATCH - K
    pos = torch.arange(K, device=score.device).expand(Tn, P, K)
    last = torch.where(contrib, pos, torch.full_like(pos, -1))
    last = torch.nn.functional.pad(last, (0, pad), value=-1).reshape(Tn, P, nb, TILE_BATCH).amax(-1)  # [T,P,nb]
    has = last >= 0
    li = last.clamp(min=0)
    rec_score = torch.where(has, torch.gather(score, -1, li), torch.full_like(li, float("-inf"), dtype=score.dtype))
    rec_g = torch.gather(g, -1, li)
    # flatten records in (batch, pixel) order per tile, then a stable sort by score
    rec_score = rec_score.transpose(1, 2).reshape(Tn, -1)
    rec_g = rec_g.transpose(1, 2).reshape(Tn, -1)
    has = has.transpose(1, 2).reshape(Tn, -1)
    order = torch.sort(rec_score, dim=-1, descending=True, stable=True).indices[:, :k]
    keep_tile[torch.gather(rec_g, -1, order)[torch.gather(has, -1, order)]] = True
