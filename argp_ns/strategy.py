"""Pruning strategies: gsplat ``DefaultStrategy`` subclasses for ARGP and SafeguardGS.

Like gsplat's strategies they decide from the parameters, the per-Gaussian state (a plain dict that
gsplat's ops keep aligned) and the scores they are handed; they never render. The model runs the
score pass (:mod:`argp_ns.scoring`) when :meth:`scores_due` says so and hands the result to
:meth:`score_round`. Every removal goes through :func:`gsplat.strategy.ops.remove` with the full
optimizer dict, so Adam moments and state stay aligned, and is recorded in ``state["events"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove
from torch import Tensor

IrpMode = Literal["moments", "frozen", "hidden"]
PruneMethod = Literal["safeguard", "efficientgs", "lightgaussian", "minisplatting", "radsplat"]
IrpPreset = Literal["released", "earlier"]
IRP_PRESETS: Dict[str, Tuple[float, float]] = {"released": (0.7, 0.4), "earlier": (0.5, 0.35)}
"""(mark_ratio, recover_ratio) of the official code's last commit (about 14.9 % of the count at the first round is
left) and of its earlier commits (about 20.4 %)."""


class PruneError(ValueError):
    """A prune that cannot be done (it would leave no Gaussian); nothing was removed."""


def quantile(x: Tensor, q: float) -> Tensor:
    """torch.quantile's linear-interpolation quantile of a 1-D tensor, via kthvalue (no 2^24 limit):
    ``v = x_(lo) + (pos - lo) (x_(hi) - x_(lo))``, pos = q (n - 1), x_(j) the j-th smallest (0-based)."""
    n = x.numel()
    pos = q * (n - 1)
    lo, hi = int(pos), min(int(pos) + 1, n - 1)
    v_lo = torch.kthvalue(x, lo + 1).values
    v_hi = torch.kthvalue(x, hi + 1).values if hi != lo else v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


def prune(params, optimizers, state: Dict[str, Any], mask: Tensor, step: int, rule: str) -> Dict[str, Any]:
    """Remove the Gaussians in ``mask`` (params, every optimizer's state, every state tensor) and record
    the event {step, rule, removed, kept}. Refuses a prune that would empty the scene."""
    n = int(mask.numel())
    removed = int(mask.sum().item())
    if removed >= n:
        raise PruneError(f"{rule} at step {step} would remove all {n} Gaussians; nothing was removed")
    if removed:
        remove(params=params, optimizers=optimizers, state=state, mask=mask)
    event = {"step": int(step), "rule": rule, "removed": removed, "kept": n - removed}
    state.setdefault("events", []).append(event)
    return event


def is_refine_step(strategy: DefaultStrategy, step: int) -> bool:
    """gsplat DefaultStrategy's refine condition (grow + prune): refine_start < step < refine_stop, on the
    refine_every cadence, and not in the pause after an opacity reset (step % reset_every >= pause)."""
    return (strategy.refine_start_iter < step < strategy.refine_stop_iter and step % strategy.refine_every == 0
            and step % strategy.reset_every >= strategy.pause_refine_after_reset)


def zero_moments(optimizers: Dict[str, torch.optim.Optimizer], names, rows: Tensor) -> None:
    """Zero the Adam moments (exp_avg, exp_avg_sq) of the given rows in each named optimizer."""
    for name in names:
        opt = optimizers[name]
        for p in opt.param_groups[0]["params"]:
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    st[key][rows] = 0


@dataclass
class ArgpStrategy(DefaultStrategy):
    """ARGP: Adaptive Opacity Pruning during densification, Iterative Recovery Pruning after it.

    AOP (at each refine step, after grow): prune ``sigmoid(opacity) < max(quantile(sigmoid(opacity), prune_quantile),
    opacity_floor)`` (strict) instead of the absolute threshold (``opacity_floor`` 0: pure AOP, as published);
    gsplat's scale / screen-size rules stay. ``prune_opa`` is
    no longer a pruning threshold: it only sets the opacity-reset value ``2 * prune_opa``.

    IRP (rounds R_0 < ... < R_last, every ``irp_every`` steps): R_0 marks the ``mark_ratio`` lowest-opacity
    Gaussians; each later round marks ``mark_ratio`` of the unmarked (R_last marks none), then among the
    previous candidates keeps those with recovery score above the ``1 - recover_ratio`` quantile and
    deletes the rest. Candidates in between are handled by ``irp_mode``: ``moments`` zeroes their Adam
    moments at marking (the released code), ``frozen`` also blocks their updates, ``hidden`` also leaves
    them out of training renders (they still appear in the scoring renders).
    """

    prune_quantile: float = 0.01
    opacity_floor: float = 0.0
    irp_start: int = 12000
    irp_every: int = 3000
    irp_last: int = 27000
    mark_ratio: float = 0.7
    recover_ratio: float = 0.4
    irp_mode: IrpMode = "moments"

    def check_config(self, max_steps: int) -> None:
        """Fail at start with one line on an invalid setting."""
        for name in ("prune_quantile", "mark_ratio", "recover_ratio"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        if self.irp_every < 1:
            raise ValueError(f"irp_every must be >= 1, got {self.irp_every}")
        if not self.refine_stop_iter <= self.irp_start <= self.irp_last:
            raise ValueError(
                f"IRP rounds must start after densification and before the last round: "
                f"refine_stop_iter={self.refine_stop_iter} <= irp_start={self.irp_start} <= irp_last={self.irp_last}"
            )
        if self.irp_last >= max_steps:
            raise ValueError(f"irp_last={self.irp_last} must be before the last training step ({max_steps})")
        if self.irp_mode not in ("moments", "frozen", "hidden"):
            raise ValueError(f"irp_mode must be moments, frozen or hidden, got {self.irp_mode!r}")

    def irp_rounds(self) -> Tuple[int, ...]:
        """Steps of the IRP rounds: irp_start, irp_start + irp_every, ..., up to irp_last."""
        return tuple(range(self.irp_start, self.irp_last + 1, self.irp_every))

    def round_due(self, step: int) -> bool:
        """True at the steps of the IRP rounds."""
        return step in self.irp_rounds()

    def next_prune(self, step: int) -> Tuple[Optional[int], str]:
        """The next step at which a rule may prune (refine steps paused after an opacity reset skipped), and the rule."""
        for nxt in range((step // self.refine_every + 1) * self.refine_every, self.refine_stop_iter, self.refine_every):
            if is_refine_step(self, nxt):
                return nxt, "aop"
        later = [r for r in self.irp_rounds() if r > step]
        return (later[0], "irp") if later else (None, "")

    def scores_due(self, step: int) -> bool:
        """True at rounds that need the recovery score (every round but the first)."""
        rounds = self.irp_rounds()
        return step in rounds and step != rounds[0]

    def _prune_gs(self, params, optimizers, state: Dict[str, Any], step: int) -> int:
        """AOP: strictly-below-quantile opacity, OR gsplat's 3-D scale and screen-size rules."""
        opa = torch.sigmoid(params["opacities"].flatten())
        is_prune = opa < torch.clamp(quantile(opa, self.prune_quantile), min=self.opacity_floor)
        if step > self.reset_every:
            is_prune |= torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * state["scene_scale"]
            if step < self.refine_scale2d_stop_iter:
                is_prune |= state["radii"] > self.prune_scale2d
        return prune(params, optimizers, state, is_prune, step, "aop")["removed"]

    def _mark(self, params, state: Dict[str, Any]) -> Tensor:
        """Newly marked: unmarked Gaussians strictly below the mark_ratio quantile of the unmarked opacities."""
        opa = torch.sigmoid(params["opacities"].flatten())
        unmarked = ~state.get("irp_candidates", torch.zeros_like(opa, dtype=torch.bool))
        if not unmarked.any():
            return torch.zeros_like(unmarked)
        return unmarked & (opa < quantile(opa[unmarked], self.mark_ratio))

    def score_round(self, params, optimizers, state: Dict[str, Any], step: int, scores: Optional[Dict[str, Tensor]]) -> List[Dict[str, Any]]:
        """One IRP round at ``step`` (see the class doc); ``scores["recovery"]`` is needed after R_0."""
        rounds = self.irp_rounds()
        new = self._mark(params, state) if step != rounds[-1] else torch.zeros_like(params["opacities"].flatten(), dtype=torch.bool)
        events = []
        if step != rounds[0]:
            if scores is None:
                raise ValueError(f"IRP round at step {step} needs recovery scores")
            cand = state["irp_candidates"]
            s = scores["recovery"]
            delete = cand & (s <= quantile(s[cand], 1.0 - self.recover_ratio)) if cand.any() else cand
            state["irp_new"] = new
            events.append(prune(params, optimizers, state, delete, step, "irp"))
            new = state.pop("irp_new")
        state["irp_candidates"] = new
        zero_moments(optimizers, params.keys(), new)
        return events

    def blocked(self, state: Dict[str, Any]) -> Optional[Tensor]:
        """Rows that get no update in training (frozen and hidden modes), else None."""
        if self.irp_mode == "moments":
            return None
        return state.get("irp_candidates")


@dataclass
class SafeguardStrategy(DefaultStrategy):
    """SafeguardGS and the paper's baselines: one score-based prune at ``prune_step``.

    - ``safeguard``: keep the Gaussians that are among the per-pixel top-``top_k`` by the score family
      member of the pass (OR over pixels and views; ``tile`` scope: per-tile records as released);
    - ``efficientgs``: the same with the score alpha*T;
    - ``lightgaussian``: significance = sum over hit pixels of opacity x (V / V_90)^0.1, V = prod of scales;
      prune the lowest ``prune_ratio``;
    - ``minisplatting``: importance = sum over pixels and views of w; keep ``keep_ratio`` (top, or sampled
      in proportion to importance);
    - ``radsplat``: prune max over rays of w < ``radsplat_threshold``.
    """

    prune_step: int = 20000
    prune_method: PruneMethod = "safeguard"
    top_k: int = 1
    topk_scope: Literal["pixel", "tile"] = "pixel"
    prune_ratio: float = 0.6
    keep_ratio: float = 0.1
    minisplatting_sampling: bool = False
    radsplat_threshold: float = 0.01
    seed: int = 0

    def check_config(self, max_steps: int) -> None:
        """Fail at start with one line on an invalid setting."""
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        for name in ("prune_ratio", "keep_ratio"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        if self.radsplat_threshold <= 0:
            raise ValueError(f"radsplat_threshold must be > 0, got {self.radsplat_threshold}")
        if not 0 < self.prune_step < max_steps:
            raise ValueError(f"prune_step={self.prune_step} must be inside the run (1..{max_steps - 1})")
        if self.topk_scope not in ("pixel", "tile"):
            raise ValueError(f"topk_scope must be pixel or tile, got {self.topk_scope!r}")

    def round_due(self, step: int) -> bool:
        """True at the single prune step."""
        return step == self.prune_step

    def next_prune(self, step: int) -> Tuple[Optional[int], str]:
        """The single prune, if still ahead."""
        return (self.prune_step, self.prune_method) if step < self.prune_step else (None, "")

    def scores_due(self, step: int) -> bool:
        """The prune needs the score pass."""
        return self.round_due(step)

    def prune_mask(self, params, scores: Dict[str, Tensor]) -> Tensor:
        """The Gaussians to remove, from the pass's per-Gaussian results."""
        m = self.prune_method
        if m in ("safeguard", "efficientgs"):
            return ~scores["keep_tile" if self.topk_scope == "tile" else "keep"]
        n = scores["sum_w"].numel()
        if m == "lightgaussian":
            vol = torch.exp(params["scales"]).prod(-1)
            sig = scores["sum_opacity"] * (vol / quantile(vol, 0.9)) ** 0.1
            order = torch.sort(sig, stable=True).indices
            mask = torch.zeros(n, dtype=torch.bool, device=sig.device)
            mask[order[: int(self.prune_ratio * n)]] = True
            return mask
        if m == "minisplatting":
            imp = scores["sum_w"]
            n_keep = max(1, int(round(self.keep_ratio * n)))
            if self.minisplatting_sampling and bool((imp > 0).sum() >= n_keep):
                gen = torch.Generator(device=imp.device).manual_seed(self.seed)
                kept = torch.multinomial(imp, n_keep, replacement=False, generator=gen)
            else:
                kept = torch.sort(imp, descending=True, stable=True).indices[:n_keep]
            mask = torch.ones(n, dtype=torch.bool, device=imp.device)
            mask[kept] = False
            return mask
        if m == "radsplat":
            return scores["max_w"] < self.radsplat_threshold
        raise ValueError(f"unknown prune_method {m!r}")

    def score_round(self, params, optimizers, state: Dict[str, Any], step: int, scores: Optional[Dict[str, Tensor]]) -> List[Dict[str, Any]]:
        """The single prune at ``prune_step``."""
        if scores is None:
            raise ValueError(f"{self.prune_method} prune at step {step} needs the score pass")
        return [prune(params, optimizers, state, self.prune_mask(params, scores), step, self.prune_method)]
