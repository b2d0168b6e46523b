"""Pruning strategies: gsplat ``DefaultStrategy`` subclasses for ARGP and SafeguardGS, and the MCMC baseline.

Each strategy's options are the fields of the dataclass of :mod:`argp_ns.options` it inherits (declared, documented
and validated there once; ``check_config`` runs that validation). Like gsplat's strategies they decide from the parameters, the per-Gaussian state (a plain dict that
gsplat's ops keep aligned) and the scores they are handed; they never render. The model runs the
score pass (:mod:`argp_ns.scoring`) when :meth:`scores_due` says so and hands the result to
:meth:`score_round`. Every removal goes through :func:`gsplat.strategy.ops.remove` with the full
optimizer dict, so Adam moments and state stay aligned, and is recorded in ``state["events"]``. The private
``DefaultStrategy`` hooks overridden here (``_update_state``, ``_prune_gs``) are gsplat 1.4's (:mod:`argp_ns.gsplat_compat`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from gsplat.strategy import DefaultStrategy, Strategy
from gsplat.strategy.ops import remove
from torch import Tensor

from argp_ns import mcmc_ops
from argp_ns.options import ArgpOptions, McmcOptions, SafeguardOptions
from argp_ns.scores import ScoreSpec

PassOptions = Dict[str, Any]
"""What a round asks of the score pass: {"spec": ScoreSpec, "k": top-k, "tile_scope": bool, "recovery": bool}."""


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


def remove_all_but(kept: Tensor, n: int) -> Tensor:
    """The removal mask [n] of everything but the indices ``kept``."""
    mask = torch.ones(n, dtype=torch.bool, device=kept.device)
    mask[kept] = False
    return mask


def check_budget(budget: int, n: int, rule: str) -> None:
    """Raise PruneError (one line) unless 0 < budget < n: a budget prune must remove at least one Gaussian."""
    if budget < 1:
        raise PruneError(f"{rule}: budget must be a positive integer, got {budget}")
    if budget >= n:
        raise PruneError(f"{rule}: budget {budget:,} is not below the current count {n:,}")


def topk_ranking(scores: Dict[str, Tensor]) -> Tensor:
    """Every Gaussian, best first, by the per-pixel top-k: ``wins`` (pixels x views whose top-k holds it)
    descending, then ``sum_score`` (its score summed over every pixel it contributes to) descending, then lower
    index; so the top-k union (wins > 0) comes first, most-winning first."""
    by_score = torch.sort(scores["sum_score"], descending=True, stable=True).indices
    return by_score[torch.sort(scores["wins"][by_score], descending=True, stable=True).indices]


def irp_final_count(n: float, c: float, mark_ratio: float, recover_ratio: float, later: int) -> float:
    """Expected count after an IRP round that deletes and the ``later`` rounds after it, from n Gaussians of which
    c are candidates: each round but the last maps ``(n, c) -> (n - (1 - r) c, m (n - c))`` (delete 1 - r of the
    candidates, mark m of the rest), the last leaves ``n - (1 - r) c``; m = mark_ratio, r = recover_ratio."""
    for _ in range(later):
        n, c = n - (1.0 - recover_ratio) * c, mark_ratio * (n - c)
    return n - (1.0 - recover_ratio) * c


def solve_recover_ratio(n: float, c: float, mark_ratio: float, later: int, budget: float) -> float:
    """The recover ratio r in [0, 1] with ``irp_final_count(n, c, mark_ratio, r, later) = budget``, by bisection (the
    count rises with r, to n at r = 1); 0 when the budget is below the count at r = 0 (every candidate deleted)."""
    lo, hi = 0.0, 1.0
    if irp_final_count(n, c, mark_ratio, lo, later) >= budget:
        return lo
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if irp_final_count(n, c, mark_ratio, mid, later) < budget else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass
class SyncFreeStrategy(DefaultStrategy):
    """gsplat's ``DefaultStrategy`` with the per-step statistics update done by dense masked sums instead of
    mask indexing, so that a training step never waits for the GPU (``nonzero`` reads a count back).

    For each camera c and Gaussian i with ``radii[c, i] > 0`` (g = the 2-D mean's gradient scaled to [-1, 1]
    screen units, ``g_x W / 2 C``, ``g_y H / 2 C``):
    ``grad2d_i += |g_ci|``, ``count_i += 1``, ``radii_i = max(radii_i, radii[c, i] / max(W, H))`` (the last
    while screen-size refinement is on): the same values as gsplat's update.
    """

    def _update_state(self, params, state: Dict[str, Any], info: Dict[str, Any], packed: bool = False) -> None:
        if packed:
            return super()._update_state(params, state, info, packed=packed)
        means2d = info[self.key_for_gradient]
        grads = (means2d.absgrad if self.absgrad else means2d.grad).clone()
        grads[..., 0] *= info["width"] / 2.0 * info["n_cameras"]
        grads[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        n = params["means"].shape[0]
        for key in ("grad2d", "count") + (("radii",) if self.refine_scale2d_stop_iter > 0 else ()):
            if state[key] is None:
                state[key] = torch.zeros(n, device=grads.device)
        seen = info["radii"] > 0  # [C, N]
        state["grad2d"] += torch.where(seen, grads.norm(dim=-1), 0.0).sum(0)
        state["count"] += seen.sum(0)
        if self.refine_scale2d_stop_iter > 0:
            screen = (info["radii"] / float(max(info["width"], info["height"]))).amax(0)
            torch.maximum(state["radii"], screen, out=state["radii"])


    hides_blocked = False
    """Whether the rows of :meth:`blocked` are also left out of training renders."""

    def is_refine_step(self, step: int) -> bool:
        """gsplat's grow-and-prune step (:func:`is_refine_step`)."""
        return is_refine_step(self, step)

    def blocked(self, state: Dict[str, Any]) -> Optional[Tensor]:
        """Rows that get no update in training; None: every row trains."""
        return None


@dataclass
class ArgpStrategy(SyncFreeStrategy, ArgpOptions):
    """ARGP: Adaptive Opacity Pruning during densification, Iterative Recovery Pruning after it (options:
    :class:`argp_ns.options.ArgpOptions`).

    AOP (at each refine step, after grow): prune ``sigmoid(opacity) < max(quantile(sigmoid(opacity), prune_quantile),
    aop_opacity_floor)`` (strict) instead of the absolute threshold (``aop_opacity_floor`` 0: pure AOP, as published);
    gsplat's scale / screen-size rules stay. ``prune_opa`` is no longer a pruning threshold: it is set to
    ``reset_opacity_value / 2`` so that gsplat's opacity reset (to ``2 * prune_opa``) resets to ``reset_opacity_value``.

    IRP (rounds R_0 < ... < R_last, every ``irp_every`` steps; (mark_ratio, recover_ratio) = :meth:`irp_ratios`):
    R_0 marks the ``mark_ratio`` lowest-opacity
    Gaussians; each later round marks ``mark_ratio`` of the unmarked (R_last marks none), then among the
    previous candidates keeps those with recovery score above the ``1 - recover_ratio`` quantile and
    deletes the rest. Candidates in between are handled by ``irp_mode``: ``moments`` zeroes their Adam
    moments at marking (the released code), ``frozen`` also blocks their updates, ``hidden`` also leaves
    them out of training renders (they still appear in the scoring renders).

    Budget (``budget`` N > 0, the final count): the rounds keep their steps and ``mark_ratio``; each round that
    deletes before R_last uses, instead of ``recover_ratio``, the r that :func:`solve_recover_ratio` gives from the
    live count n and candidate count c (expected final count N, see :func:`irp_final_count`; from R_0 with n_0
    Gaussians and c_0 = m n_0 marked that is the released schedule with n_L(r) = N), and R_last deletes exactly
    the ``n - N`` lowest-scored candidates, landing on N (above it only when fewer candidates are left; said in
    one line). When the count at a round is already <= N, IRP marks and deletes nothing (AOP only).

    Final round ``safeguard`` (AOP + IRP + pixel-level top-k): R_last deletes, instead of the low-scored candidates,
    every Gaussian outside the per-pixel top-``top_k`` union of the pass (``scores["keep"]``, SafeguardGS's rule over
    all Gaussians); with a budget, all but the N best by :func:`topk_ranking`. The rounds before it are unchanged.
    """

    def __post_init__(self) -> None:
        self.prune_opa = self.reset_opacity_value / 2.0

    def check_config(self, max_steps: int) -> None:
        """Fail at start with one line on an invalid setting (:meth:`ArgpOptions.validate`)."""
        self.validate(max_steps, self.refine_stop_iter)

    def round_due(self, step: int) -> bool:
        """True at the steps of the IRP rounds."""
        return step in self.irp_rounds()

    def next_prune(self, step: int) -> Tuple[Optional[int], str]:
        """The next step at which a rule may prune (refine steps paused after an opacity reset skipped), and the rule."""
        for nxt in range((step // self.refine_every + 1) * self.refine_every, self.refine_stop_iter, self.refine_every):
            if is_refine_step(self, nxt):
                return nxt, "aop"
        rounds = self.irp_rounds()
        later = [r for r in rounds if r > step]
        if not later:
            return None, ""
        return later[0], self.final_round if later[0] == rounds[-1] else "irp"

    def scores_due(self, step: int) -> bool:
        """True at rounds that need the recovery score (every round but the first)."""
        rounds = self.irp_rounds()
        return step in rounds and step != rounds[0]

    def _prune_gs(self, params, optimizers, state: Dict[str, Any], step: int) -> int:
        """AOP: activated opacity strictly below ``max(quantile(opacity, prune_quantile), opacity_floor)``, OR gsplat's
        3-D scale and screen-size rules."""
        opa = torch.sigmoid(params["opacities"].flatten())
        is_prune = opa < torch.clamp(quantile(opa, self.prune_quantile), min=self.aop_opacity_floor)
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
        return unmarked & (opa < quantile(opa[unmarked], self.irp_ratios()[0]))

    def score_round(self, params, optimizers, state: Dict[str, Any], step: int, scores: Optional[Dict[str, Tensor]]) -> List[Dict[str, Any]]:
        """One IRP round at ``step`` (see the class doc); ``scores["recovery"]`` is needed after R_0 (final round
        safeguard: ``scores["keep"]``, with a budget also ``wins`` and ``sum_score``)."""
        rounds = self.irp_rounds()
        n = params["means"].shape[0]
        met = 0 < self.budget and n <= self.budget  # the budget is met: IRP marks and deletes nothing
        none = torch.zeros_like(params["opacities"].flatten(), dtype=torch.bool)
        new = self._mark(params, state) if step != rounds[-1] and not met else none
        if self.budget and step == rounds[0] and self.verbose:
            print(self._budget_plan(step, n, int(new.sum())))
        events = []
        if step != rounds[0] and not met:
            if scores is None:
                raise ValueError(f"IRP round at step {step} needs recovery scores")
            rule = self.final_round if step == rounds[-1] else "irp"
            if rule == "safeguard":
                delete = remove_all_but(topk_ranking(scores)[: self.budget], n) if self.budget else ~scores["keep"]
            else:
                delete = self._irp_delete(state["irp_candidates"], scores["recovery"], len(rounds) - 1 - rounds.index(step), step)
            state["irp_new"] = new
            events.append(prune(params, optimizers, state, delete, step, rule))
            new = state.pop("irp_new")
        state["irp_candidates"] = new
        zero_moments(optimizers, params.keys(), new)
        return events

    def _irp_delete(self, cand: Tensor, s: Tensor, later: int, step: int) -> Tensor:
        """Candidates to delete by recovery score ``s``: those at or below the ``1 - r`` quantile of the candidates'
        scores, r = recover_ratio or, with a budget, ``solve_recover_ratio(n, |cand|, mark_ratio, later, budget)``;
        with a budget the last round (``later`` 0) deletes exactly the ``n - budget`` lowest-scored candidates."""
        n, c = cand.numel(), int(cand.sum())
        if self.budget and later == 0:
            idx = torch.nonzero(cand).squeeze(1)
            delete = torch.zeros_like(cand)
            delete[idx[torch.sort(s[idx], stable=True).indices[: n - self.budget]]] = True
            if n - self.budget > c and self.verbose:
                print(f"argp_ns: step {step}: only {c:,} candidates left; IRP ends at {n - c:,} Gaussians, above the budget {self.budget:,}")
            return delete
        if not c:
            return cand
        mark, recover = self.irp_ratios()
        r = solve_recover_ratio(n, c, mark, later, self.budget) if self.budget else recover
        return cand & (s <= quantile(s[cand], 1.0 - r))

    def _budget_plan(self, step: int, n: int, c: int) -> str:
        """The one line logged at R_0 with a budget: IRP off (count within the budget), or the solved recover ratio."""
        if n <= self.budget:
            return (f"argp_ns: step {step}: {n:,} Gaussians after densification, within the budget {self.budget:,}: "
                    f"no IRP deletion (AOP only)")
        later = len(self.irp_rounds()) - 2
        mark = self.irp_ratios()[0]
        r = solve_recover_ratio(n, c, mark, later, self.budget)
        low = irp_final_count(n, c, mark, 0.0, later)
        reach = f"; below the {low:,.0f} the schedule can reach: every candidate is deleted" if low > self.budget else ""
        return (f"argp_ns: step {step}: budget {self.budget:,} from {n:,} Gaussians: recover ratio {r:.4f} "
                f"(mark ratio {mark}){reach}")

    def blocked(self, state: Dict[str, Any]) -> Optional[Tensor]:
        """Rows that get no update in training (frozen and hidden modes), else None."""
        if self.irp_mode == "moments":
            return None
        return state.get("irp_candidates")

    @property
    def hides_blocked(self) -> bool:  # type: ignore[override]
        """Hidden mode: the candidates are also left out of training renders."""
        return self.irp_mode == "hidden"

    def pass_options(self, step: int) -> PassOptions:
        """The recovery score at every round, but the last one with a SafeguardGS final round (per-pixel top-k of
        SafeguardGS's score only)."""
        last = self.final_round == "safeguard" and step == self.irp_rounds()[-1]
        return {"spec": ScoreSpec(), "k": self.top_k, "tile_scope": False, "recovery": not last}


@dataclass
class SafeguardStrategy(SyncFreeStrategy, SafeguardOptions):
    """SafeguardGS and the paper's baselines: one score-based prune at ``prune_step`` (options:
    :class:`argp_ns.options.SafeguardOptions`).

    - ``safeguard``: keep the Gaussians that are among the per-pixel top-``top_k`` by the score family
      member of the pass (OR over pixels and views; ``tile`` scope: per-tile records as released);
    - ``efficientgs``: the same with the score alpha*T;
    - ``lightgaussian``: significance = sum over hit pixels of opacity x (V / V_90)^0.1, V = prod of scales;
      prune the lowest ``prune_ratio``;
    - ``minisplatting``: importance = sum over pixels and views of w; keep ``keep_ratio`` (top, or sampled
      in proportion to importance);
    - ``radsplat``: prune max over rays of w < ``radsplat_threshold``;
    - ``argp``: ARGP's recovery score (``scores["recovery"]``) once: keep the ``keep_ratio`` highest.

    Budget (``budget`` N > 0): each rule keeps exactly its N best by :meth:`ranking` (minisplatting with sampling:
    N sampled) instead of its own threshold or ratio; a budget not below the count at the prune removes nothing
    (one line).
    """

    seed: int = 0

    def check_config(self, max_steps: int) -> None:
        """Fail at start with one line on an invalid setting (:meth:`SafeguardOptions.validate`)."""
        self.validate(max_steps)

    def round_due(self, step: int) -> bool:
        """True at the single prune step."""
        return step == self.prune_step

    def next_prune(self, step: int) -> Tuple[Optional[int], str]:
        """The single prune, if still ahead."""
        return (self.prune_step, self.prune_method) if step < self.prune_step else (None, "")

    def scores_due(self, step: int) -> bool:
        """The prune needs the score pass."""
        return self.round_due(step)

    def pass_options(self, step: int) -> PassOptions:
        """The rule's score (efficientgs: alpha*T), top-k and scope; the recovery score for the argp rule."""
        spec = ScoreSpec.parse("efficientgs" if self.prune_method == "efficientgs" else self.score)
        return {"spec": spec, "k": self.top_k, "tile_scope": self.topk_scope == "tile", "recovery": self.prune_method == "argp"}

    def prune_mask(self, params, scores: Dict[str, Tensor]) -> Tensor:
        """The Gaussians to remove, from the pass's per-Gaussian results (with a budget: all but the budget best)."""
        m = self.prune_method
        n = scores["sum_w"].numel()
        if m == "minisplatting":
            n_keep = self.budget or max(1, int(round(self.keep_ratio * n)))
            return remove_all_but(self._minisplatting_kept(scores["sum_w"], n_keep), n)
        if self.budget:
            return remove_all_but(self.ranking(params, scores)[: self.budget], n)
        if m in ("safeguard", "efficientgs"):
            return ~scores["keep_tile" if self.topk_scope == "tile" else "keep"]
        if m == "lightgaussian":
            order = torch.sort(self._significance(params, scores), stable=True).indices
            mask = torch.zeros(n, dtype=torch.bool, device=order.device)
            mask[order[: int(self.prune_ratio * n)]] = True
            return mask
        if m == "radsplat":
            return scores["max_w"] < self.radsplat_threshold
        if m == "argp":
            return remove_all_but(self.ranking(params, scores)[: max(1, int(round(self.keep_ratio * n)))], n)
        raise ValueError(f"unknown prune_method {m!r}")

    def ranking(self, params, scores: Dict[str, Tensor]) -> Tensor:
        """Every Gaussian, best first, by the rule's own importance (ties: lower index first):
        safeguard / efficientgs: :func:`topk_ranking` (the top-k union first, most-winning first); lightgaussian:
        significance; minisplatting: sum of w; radsplat: max of w; argp: the recovery score."""
        m = self.prune_method
        if m in ("safeguard", "efficientgs"):
            return topk_ranking(scores)
        if m == "lightgaussian":
            key = self._significance(params, scores)
        elif m in ("minisplatting", "radsplat", "argp"):
            key = scores[{"minisplatting": "sum_w", "radsplat": "max_w", "argp": "recovery"}[m]]
        else:
            raise ValueError(f"unknown prune_method {m!r}")
        return torch.sort(key, descending=True, stable=True).indices

    @staticmethod
    def _significance(params, scores: Dict[str, Tensor]) -> Tensor:
        """LightGaussian's significance: sum over hit pixels of opacity x (V / V_90)^0.1, V = prod of scales."""
        vol = torch.exp(params["scales"]).prod(-1)
        return scores["sum_opacity"] * (vol / quantile(vol, 0.9)) ** 0.1

    def _minisplatting_kept(self, imp: Tensor, n_keep: int) -> Tensor:
        """Mini-Splatting's kept indices: the n_keep largest importances, or with sampling n_keep drawn without
        replacement in proportion to importance (the largest when fewer than n_keep have importance > 0)."""
        if self.minisplatting_sampling and bool((imp > 0).sum() >= n_keep):
            gen = torch.Generator(device=imp.device).manual_seed(self.seed)
            return torch.multinomial(imp, n_keep, replacement=False, generator=gen)
        return torch.sort(imp, descending=True, stable=True).indices[:n_keep]

    def score_round(self, params, optimizers, state: Dict[str, Any], step: int, scores: Optional[Dict[str, Tensor]]) -> List[Dict[str, Any]]:
        """The single prune at ``prune_step``; with a budget not below the count, one line and nothing removed."""
        if scores is None:
            raise ValueError(f"{self.prune_method} prune at step {step} needs the score pass")
        if self.budget:
            try:
                check_budget(self.budget, params["means"].shape[0], self.prune_method)
            except PruneError as err:
                if self.verbose:
                    print(f"argp_ns: step {step}: {err}; nothing was removed")
                return []
        return [prune(params, optimizers, state, self.prune_mask(params, scores), step, self.prune_method)]


@dataclass
class McmcStrategy(Strategy, McmcOptions):
    """gsplat 1.4.0's ``MCMCStrategy`` (3D Gaussian Splatting as Markov Chain Monte Carlo) with a hard cap, built on
    :mod:`argp_ns.mcmc_ops` so that it runs on the CPU too (options: :class:`argp_ns.options.McmcOptions`; the
    initialisation and regularisers among them are applied by the model). It never prunes.

    At each refine step (``refine_start_iter < step < refine_stop_iter``, every ``refine_every``): every Gaussian of
    activated opacity ``<= mcmc_min_opacity`` is relocated onto live ones drawn in proportion to opacity, then
    ``min(cap_max, floor(1.05 n)) - n`` Gaussians are added the same way (so the count grows 5 % a refine step up to
    ``cap_max`` and never passes it). At every step the positions get the noise of :func:`mcmc_ops.inject_noise` with
    ``scaler = lr_means * noise_lr``. The model adds the opacity and scale regularisers to the loss.
    """

    refine_start_iter: int = 500
    refine_stop_iter: int = 25_000
    refine_every: int = 100
    seed: int = 0
    verbose: bool = False
    absgrad: bool = False

    def check_config(self, max_steps: int) -> None:
        """Fail at start with one line on an invalid setting (:meth:`McmcOptions.validate`, and the refine cadence)."""
        self.validate()
        if self.refine_every < 1:
            raise ValueError(f"refine_every must be >= 1, got {self.refine_every}")

    def initialize_state(self, scene_scale: float = 1.0) -> Dict[str, Any]:
        """The sampler's generator, made (seeded: a run's relocations are reproducible) on the parameters' device at
        the first step."""
        return {"generator": None}

    hides_blocked = False
    """MCMC blocks no rows."""

    def is_refine_step(self, step: int) -> bool:
        """True at the relocate-and-add steps."""
        return self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0

    def blocked(self, state: Dict[str, Any]) -> Optional[Tensor]:
        """Every row trains."""
        return None

    def round_due(self, step: int) -> bool:
        """MCMC has no scored round."""
        return False

    def next_prune(self, step: int) -> Tuple[Optional[int], str]:
        """MCMC never prunes."""
        return None, ""

    def step_post_backward(self, params, optimizers, state: Dict[str, Any], step: int, lr: float) -> Dict[str, int]:
        """Relocate and add at refine steps, then the position noise; returns {relocated, added} (0 elsewhere)."""
        device = params["means"].device
        if state.get("generator") is None or state["generator"].device != device:
            state["generator"] = torch.Generator(device=device).manual_seed(self.seed)
        gen = state["generator"]
        moved = added = 0
        if self.is_refine_step(step):
            dead = torch.sigmoid(params["opacities"].flatten()) <= self.mcmc_min_opacity
            moved = mcmc_ops.relocate(params, optimizers, dead, self.mcmc_min_opacity, gen)
            n = params["means"].shape[0]
            added = mcmc_ops.add(params, optimizers, max(0, min(self.cap_max, int(1.05 * n)) - n), self.mcmc_min_opacity, gen)
            if self.verbose:
                print(f"argp_ns: step {step}: mcmc relocated {moved:,}, added {added:,}, now {params['means'].shape[0]:,}")
        if self.noise_lr > 0:
            mcmc_ops.inject_noise(params, lr * self.noise_lr, gen)
        return {"relocated": moved, "added": added}
