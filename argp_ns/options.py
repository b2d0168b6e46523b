"""Every option of this plugin, declared once: one dataclass per rule, whose fields are its options (the docstring
under a field is its ``--help`` text and its row in docs/flags.md) and whose ``validate`` is the only check of them.

The strategies (:mod:`argp_ns.strategy`) inherit these dataclasses, so a strategy's fields are its options as in
gsplat's ``strategy/``; the model configs (:mod:`argp_ns.model`) inherit them too, so that ``ns-train`` shows them as
``--pipeline.model.<name>`` (the flat names of earlier releases: users' commands and old config.yml files keep
working); ``argp-ns prune`` inherits :class:`ScoreRuleOptions` and :class:`BackendOption`. A strategy is built from a
config by :func:`options_of`, which copies the fields of one of these classes by name (no renames anywhere).

Each ``validate`` raises ``ValueError`` with one line that starts with the field's name (``argp-ns prune`` rewrites
that name as its ``--flag``); it runs before any folder is made (:func:`argp_ns.checks.check_model`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

from argp_ns.cuda import MAX_K
from argp_ns.scores import VALID_SCORES, ScoreSpec

Backend = Literal["auto", "cuda", "torch"]
IrpMode = Literal["moments", "frozen", "hidden"]
IrpPreset = Literal["balanced", "released", "earlier"]
FinalRound = Literal["irp", "safeguard"]
PruneMethod = Literal["safeguard", "efficientgs", "lightgaussian", "minisplatting", "radsplat", "argp"]
TopkScope = Literal["pixel", "tile"]

IRP_PRESETS: Dict[str, Tuple[float, float]] = {"balanced": (0.7, 0.5), "released": (0.7, 0.4), "earlier": (0.5, 0.35)}
"""(mark_ratio, recover_ratio) over six rounds: balanced, this plugin's default (about 23 % of the count at the first
round is left), the official code's last commit (about 14.9 %) and its earlier commits (about 20.4 %)."""

MIN_BUDGET = 100
"""The smallest ``budget`` a run accepts: below it a scene is a handful of splats, not a model."""

MCMC_DEFAULT_CAP = 1_000_000
"""gsplat's ``MCMCStrategy.cap_max`` default: the MCMC cap when no budget is given."""


def options_of(source: Any, options: type) -> Dict[str, Any]:
    """The values of ``options``' fields (a dataclass of this module) read from ``source`` (a config or a strategy that
    inherits it), by name: what a strategy is built with."""
    return {f.name: getattr(source, f.name) for f in dataclasses.fields(options)}


def in_open_unit(name: str, value: float) -> None:
    """``name`` must lie in (0, 1)."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


@dataclass
class BackendOption:
    """Which implementation runs the score pass."""

    score_backend: Backend = "auto"
    """Score pass: the CUDA kernel where it builds (auto, cuda) or the PyTorch twin (torch; the CPU always uses the twin)."""

    def validate_backend(self, device_type: str, top_k: int = 1) -> None:
        """The backend against the device the run uses: cuda needs a CUDA device; on a CUDA device the kernel keeps at
        most MAX_K Gaussians a pixel, so a larger ``top_k`` needs the twin, asked for by name (``auto`` would pick
        the kernel and fail at the prune, hours in)."""
        if self.score_backend == "cuda" and device_type != "cuda":
            raise ValueError(f"score_backend cuda needs a CUDA device (this run is on {device_type}); use auto or torch")
        if top_k > MAX_K and device_type == "cuda" and self.score_backend != "torch":
            raise ValueError(f"top_k must be at most {MAX_K} for the CUDA score pass, got {top_k}; the PyTorch twin takes "
                             "any k: score_backend torch (slow)")


@dataclass
class BudgetOption:
    """A final count of Gaussians, shared by every rule (how each rule reaches it: its class's docstring)."""

    budget: int = 0
    """Final number of Gaussians (0: off; at least 100). ARGP solves its recover ratio so that the last round lands on
    it; SafeguardGS and the baselines keep their N best; MCMC caps its growth at N (0: gsplat's 1,000,000)."""

    def validate_budget(self) -> None:
        """0 (off) or a whole count of at least MIN_BUDGET."""
        if self.budget < 0:
            raise ValueError(f"budget must be a positive integer (0: off), got {self.budget}")
        if 0 < self.budget < MIN_BUDGET:
            raise ValueError(f"budget {self.budget} is below the floor of {MIN_BUDGET} Gaussians (a scene that small is degenerate)")


@dataclass
class TopKOption:
    """The per-pixel top-k of SafeguardGS's keep set."""

    top_k: int = 1
    """Per-pixel top-k: keep every Gaussian that is among some pixel's k best (k >= 1; at most 32 on the CUDA pass)."""

    def validate_top_k(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


@dataclass
class ArgpOptions(BudgetOption, TopKOption):
    """ARGP (``splatfacto-argp``, :class:`argp_ns.strategy.ArgpStrategy`): AOP at each refine step, IRP rounds after."""

    prune_quantile: float = 0.01
    """AOP: prune activated opacity strictly below this quantile at each refine step."""
    aop_opacity_floor: float = 0.1
    """AOP prunes below max(quantile, this absolute opacity): 0.1 keeps splatfacto's own cull under AOP (the default,
    chosen on fox and bonsai: benchmarks/README.md, "Defaults"); 0 is pure AOP as published. In [0, 1)."""
    reset_opacity_value: float = 0.2
    """Opacity reset value (splatfacto: 0.2 = 2 x cull_alpha_thresh; official ARGP: 0.01)."""
    irp_start: int = 12000
    """First IRP round (marking only)."""
    irp_every: int = 2000
    """Steps between IRP rounds (official ARGP: 3,000, rounds 12k..27k; here 2,000, rounds 12k..22k, so that 8,000
    steps of fine-tuning follow the last deletion: +0.18 dB on bonsai at the same count)."""
    irp_last: int = 22000
    """Last IRP round (score and delete, no new marking); official ARGP: 27,000."""
    irp_preset: IrpPreset = "balanced"
    """(mark ratio, recover ratio) pair over the six rounds: balanced (0.7, 0.5; about 23 % of the count at the first
    round is left), released (0.7, 0.4, the official code; about 14.9 %) or earlier (0.5, 0.35, the official code
    before its last commit; about 20.4 %)."""
    mark_ratio: Optional[float] = None
    """Overrides the preset's mark ratio: fraction of the unmarked Gaussians marked as candidates at each round."""
    recover_ratio: Optional[float] = None
    """Overrides the preset's recover ratio: fraction of the previous candidates recovered (kept) by recovery score."""
    irp_mode: IrpMode = "moments"
    """Candidates between rounds: moments (zero Adam moments, as released), frozen (no updates), hidden (not rendered in training)."""
    final_round: FinalRound = "irp"
    """Last IRP round: irp (delete the candidates by recovery score, as published) or safeguard (keep SafeguardGS's
    per-pixel top-k union of all Gaussians, k = top_k; with a budget, its N best by pixels won, then summed score)."""

    def irp_ratios(self) -> Tuple[float, float]:
        """(mark_ratio, recover_ratio): the preset's pair, each replaced by its flag when given."""
        mark, recover = IRP_PRESETS[self.irp_preset]
        return (mark if self.mark_ratio is None else self.mark_ratio,
                recover if self.recover_ratio is None else self.recover_ratio)

    def irp_rounds(self) -> Tuple[int, ...]:
        """Steps of the IRP rounds: irp_start, irp_start + irp_every, ..., up to irp_last."""
        return tuple(range(self.irp_start, self.irp_last + 1, self.irp_every)) if self.irp_every >= 1 else ()

    def validate(self, max_steps: int, densify_stop: int) -> None:
        """The options, the IRP schedule against densification's end and the run's ``max_steps``."""
        if self.irp_preset not in IRP_PRESETS:
            raise ValueError(f"irp_preset must be one of {', '.join(IRP_PRESETS)}, got {self.irp_preset!r}")
        in_open_unit("prune_quantile", self.prune_quantile)
        mark, recover = self.irp_ratios()
        in_open_unit("mark_ratio", mark)
        in_open_unit("recover_ratio", recover)
        if not 0.0 <= self.aop_opacity_floor < 1.0:  # a floor of 1 would cull every Gaussian at the first refine step
            raise ValueError(f"aop_opacity_floor must be in [0, 1), got {self.aop_opacity_floor}")
        if not 0.0 < self.reset_opacity_value < 1.0:
            raise ValueError(f"reset_opacity_value must be in (0, 1), got {self.reset_opacity_value}")
        if self.irp_every < 1:
            raise ValueError(f"irp_every must be >= 1, got {self.irp_every}")
        if not densify_stop <= self.irp_start <= self.irp_last:
            raise ValueError(f"IRP rounds must start after densification and before the last round: "
                             f"stop_split_at={densify_stop} <= irp_start={self.irp_start} <= irp_last={self.irp_last}")
        if self.irp_last >= max_steps:
            raise ValueError(f"irp_last={self.irp_last} must be before the last training step ({max_steps})")
        if self.irp_mode not in ("moments", "frozen", "hidden"):
            raise ValueError(f"irp_mode must be moments, frozen or hidden, got {self.irp_mode!r}")
        self.validate_budget()
        if self.budget and len(self.irp_rounds()) < 2:
            raise ValueError(f"budget needs at least two IRP rounds (irp_start={self.irp_start}, irp_last={self.irp_last})")
        if self.final_round not in ("irp", "safeguard"):
            raise ValueError(f"final_round must be irp or safeguard, got {self.final_round!r}")
        self.validate_top_k()


@dataclass
class ScoreRuleOptions(BudgetOption, TopKOption):
    """One score-based prune (SafeguardGS, the paper's baselines, ARGP's recovery score once): the rule's settings,
    shared by ``splatfacto-safeguard`` and ``argp-ns prune``."""

    score: str = "safeguard"
    """safeguard: the score ranking each pixel's Gaussians: safeguard (alpha_t*l1, code 36), efficientgs (alpha_t), a
    family code (argp_ns.scores.PaperScore) or factors joined by '*' (alpha_t|alpha|opacity_t|opacity, exp,
    l1|cosine|exp_l1)."""
    topk_scope: TopkScope = "pixel"
    """safeguard / efficientgs: pixel (the paper: each pixel's top-k) or tile (the released CUDA: per-tile top-k of
    per-batch last contributors)."""
    prune_ratio: float = 0.6
    """lightgaussian: fraction of the Gaussians pruned (the lowest significance), in (0, 1)."""
    keep_ratio: float = 0.1
    """minisplatting and argp: fraction of the Gaussians kept, in (0, 1)."""
    minisplatting_sampling: bool = False
    """minisplatting: sample kept Gaussians in proportion to importance instead of the top ones."""
    radsplat_threshold: float = 0.01
    """radsplat: prune the Gaussians whose largest blending weight over all training rays is below this (> 0; 0.25
    for RadSplat-Light)."""

    def validate_rule(self, method: str) -> None:
        """The rule's settings, for the rule ``method``."""
        self.validate_top_k()
        try:
            ScoreSpec.parse(self.score)
        except ValueError:
            raise ValueError(f"score {self.score!r} is not valid; use {VALID_SCORES}") from None
        in_open_unit("prune_ratio", self.prune_ratio)
        in_open_unit("keep_ratio", self.keep_ratio)
        if self.radsplat_threshold <= 0:
            raise ValueError(f"radsplat_threshold must be > 0, got {self.radsplat_threshold}")
        if self.topk_scope not in ("pixel", "tile"):
            raise ValueError(f"topk_scope must be pixel or tile, got {self.topk_scope!r}")
        self.validate_budget()
        if self.budget and self.topk_scope == "tile" and method in ("safeguard", "efficientgs"):
            raise ValueError("budget ranks by per-pixel top-k wins; it does not apply to topk_scope tile")


@dataclass
class SafeguardOptions(ScoreRuleOptions):
    """SafeguardGS and the baselines during training (``splatfacto-safeguard``, :class:`argp_ns.strategy.SafeguardStrategy`)."""

    prune_step: int = 20000
    """Step of the single prune (paper: 20,000 of 30,000)."""
    prune_method: PruneMethod = "safeguard"
    """safeguard (family score top-k), efficientgs (alpha*T top-k), lightgaussian, minisplatting, radsplat, or argp
    (ARGP's recovery score once: keep the keep_ratio best)."""

    def validate(self, max_steps: int) -> None:
        """The rule's settings and the prune step inside the run."""
        self.validate_rule(self.prune_method)
        if not 0 < self.prune_step < max_steps:
            raise ValueError(f"prune_step={self.prune_step} must be inside the run (1..{max_steps - 1})")


@dataclass
class McmcOptions(BudgetOption):
    """gsplat's MCMC under a hard cap (``splatfacto-mcmc``, :class:`argp_ns.strategy.McmcStrategy`). Values from gsplat
    1.4.0's ``examples/simple_trainer.py`` MCMC preset and nerfstudio's later splatfacto MCMC option."""

    noise_lr: float = 5e5
    """Position noise: scaled by the means' learning rate times this (0: no noise)."""
    mcmc_opacity_reg: float = 0.01
    """Loss weight of the mean activated opacity."""
    mcmc_scale_reg: float = 0.01
    """Loss weight of the mean activated scale."""
    mcmc_min_opacity: float = 0.005
    """Gaussians at or below this opacity are relocated at refine steps."""
    init_opacity: float = 0.5
    """Opacity of the initial Gaussians (splatfacto: 0.1)."""
    init_scale: float = 0.1
    """Factor on splatfacto's initial scales (the mean distance to the three nearest seed points)."""
    init_fraction: float = 0.5
    """The seed points are subsampled (uniformly, seeded) to at most this fraction of the cap, so that the cap holds."""

    @property
    def cap_max(self) -> int:
        """gsplat's ``cap_max``: the budget, or gsplat's default without one."""
        return self.budget or MCMC_DEFAULT_CAP

    def validate(self) -> None:
        """The cap, the noise, the relocation threshold and the initialisation."""
        self.validate_budget()
        if self.noise_lr < 0:
            raise ValueError(f"noise_lr must be >= 0, got {self.noise_lr}")
        in_open_unit("mcmc_min_opacity", self.mcmc_min_opacity)
        in_open_unit("init_opacity", self.init_opacity)
        if not 0.0 < self.init_fraction <= 1.0:
            raise ValueError(f"init_fraction must be in (0, 1], got {self.init_fraction}")
        if self.init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
        for name in ("mcmc_opacity_reg", "mcmc_scale_reg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
