"""splatfacto models that prune: the shared base, ``splatfacto-argp`` and ``splatfacto-safeguard``; and
``splatfacto-mcmc``, the capped MCMC baseline they are measured against.

The model only models: it renders (:mod:`argp_ns.render`), computes splatfacto's losses with the lean step
(:mod:`argp_ns.train_step`) and applies its strategy's per-step rules (gsplat's refine with the strategy's own prune,
MCMC's relocation). The scored rounds, the eval PSNR around prunes, the report and the viewer panel live beside it, in
:class:`argp_ns.pruning.PruningLoop`, which :class:`argp_ns.pipeline.PruningPipeline` runs as training callbacks.

The configs inherit their options from :mod:`argp_ns.options` (declared there once) and build their strategy with
:meth:`build_strategy` from the config alone, so the checks at start (:func:`argp_ns.checks.check_model`) build
exactly the strategy the run will use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Tuple, Type, Union

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.model_components.lib_bilagrid import total_variation_loss
from nerfstudio.models.splatfacto import RGB2SH, SplatfactoModel, SplatfactoModelConfig
from nerfstudio.viewer.viewer_elements import ViewerControl
from torch import Tensor

from argp_ns.options import ArgpOptions, BackendOption, McmcOptions, SafeguardOptions, options_of
from argp_ns.render import ViewCache, render_outputs
from argp_ns.strategy import ArgpStrategy, McmcStrategy, SafeguardStrategy
from argp_ns.train_step import psnr_from_mse, scale_regularisation, training_loss

STEP_LOSS = "argp_ns_step_loss"
"""The outputs key where a training step's main loss and its detached [l1, ssim, mse] are kept once computed, so that
``get_metrics_dict`` and ``get_loss_dict`` (nerfstudio calls both with the same outputs) share one loss pass."""


def splatfacto_strategy_kwargs(c: SplatfactoModelConfig, num_train_data: int) -> Dict[str, Any]:
    """splatfacto 1.1.5's ``DefaultStrategy`` arguments, from its config and its number of training views."""
    return dict(
        prune_opa=c.cull_alpha_thresh, grow_grad2d=c.densify_grad_thresh, grow_scale3d=c.densify_size_thresh,
        grow_scale2d=c.split_screen_size, prune_scale3d=c.cull_scale_thresh, prune_scale2d=c.cull_screen_size,
        refine_scale2d_stop_iter=c.stop_screen_size_at, refine_start_iter=c.warmup_length,
        refine_stop_iter=c.stop_split_at, reset_every=c.reset_alpha_every * c.refine_every,
        refine_every=c.refine_every, pause_refine_after_reset=num_train_data + c.refine_every,
        absgrad=c.use_absgrad, revised_opacity=False, verbose=True,
    )


@dataclass
class LeanModelConfig(SplatfactoModelConfig):
    """splatfacto with this plugin's renderer (CPU twin) and lean training step; the base of every model here."""

    _target: Type = field(default_factory=lambda: PruningModel)

    def build_strategy(self, num_train_data: int):
        raise NotImplementedError


@dataclass
class PruningModelConfig(LeanModelConfig, BackendOption):
    """splatfacto plus a score pass; subclassed by the two methods."""

    scored_prune: bool = True
    """False: no scored prune round (ARGP's IRP, the SafeguardGS prune) runs; splatfacto-safeguard then trains as
    splatfacto does, with this plugin's lean training step (an ablation of what the step alone gives)."""
    report_psnr: Literal["rounds", "all", "off"] = "rounds"
    """Eval-view PSNR before/after prunes in pruning_report.json: scored rounds only, also AOP steps, or never."""


class PruningModel(SplatfactoModel):
    """splatfacto that renders on CPU or GPU and trains under a strategy of :mod:`argp_ns.strategy`."""

    config: Union[PruningModelConfig, "SplatfactoMcmcModelConfig"]
    strategy: Union[ArgpStrategy, SafeguardStrategy, McmcStrategy]

    def populate_modules(self) -> None:
        # splatfacto moves seed colours with a hard-coded .cuda(); build without them, then set them here
        seed = self.seed_points
        colours = None
        if seed is not None and not self.config.random_init and seed[1].shape[0] > 0:
            colours = seed[1].float() / 255.0
            self.seed_points = (seed[0], seed[1][:0])
        super().populate_modules()
        self.seed_points = seed
        if colours is not None:
            dc = RGB2SH(colours) if self.config.sh_degree > 0 else torch.logit(colours, eps=1e-10)
            self.gauss_params["features_dc"] = torch.nn.Parameter(dc)
            self.gauss_params["features_rest"] = torch.nn.Parameter(torch.zeros_like(self.gauss_params["features_rest"]))
        self.strategy = self.config.build_strategy(self.num_train_data)
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self.views = ViewCache()
        self.viewer_control = ViewerControl()
        self.prune_log: Dict[str, List] = {"events": [], "counts": []}
        """What the run has pruned so far, saved in checkpoints: events {step, rule, removed, kept, psnr_before,
        psnr_after} and [step, count] pairs (:class:`argp_ns.pruning.PruningLoop` fills it)."""

    @property
    def prune_events(self) -> List[Dict[str, Any]]:
        """Every prune event of this run so far."""
        return self.prune_log["events"]

    def get_extra_state(self) -> Dict[str, Any]:
        """Saved in checkpoints: the schedule state a resume needs (IRP candidates) and the prune log so far."""
        cand = self.strategy_state.get("irp_candidates")
        return {"irp_candidates": None if cand is None else cand.cpu(), "prune_events": list(self.prune_log["events"]),
                "counts": list(self.prune_log["counts"])}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if state.get("irp_candidates") is not None:
            self.strategy_state["irp_candidates"] = state["irp_candidates"].to(self.device)
        self.prune_log["events"][:] = list(state.get("prune_events", []))
        self.prune_log["counts"][:] = [list(c) for c in state.get("counts", [])]

    def get_outputs(self, camera) -> Dict[str, Union[Tensor, List]]:
        """splatfacto's forward pass (:func:`argp_ns.render.render_outputs`)."""
        return render_outputs(self, camera)

    # --- the training step: splatfacto's loss and metrics, fused (see argp_ns.train_step) ---------------
    def _step_loss(self, outputs: Dict[str, Any], batch: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """This step's main loss and its detached [l1, ssim, mse], computed once (kept in ``outputs[STEP_LOSS]``):
        the ground truth composited on the step's background, as splatfacto's loss sees them."""
        if STEP_LOSS not in outputs:
            gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
            outputs[STEP_LOSS] = training_loss(gt, outputs["rgb"], self.config.ssim_lambda)
        return outputs[STEP_LOSS]

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Any]:
        """In training: the PSNR from the loss pass's squared error (no second pass), the Gaussian count and the
        camera optimizer's metrics; elsewhere (and with masks or colour-corrected metrics) splatfacto's."""
        if not self.training or "mask" in batch or self.config.color_corrected_metrics:
            return super().get_metrics_dict(outputs, batch)
        metrics = {"psnr": psnr_from_mse(self._step_loss(outputs, batch)[1][2]), "gaussian_count": self.num_points}
        self.camera_optimizer.get_metrics_dict(metrics)
        return metrics

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        """splatfacto's losses with the main loss from :func:`argp_ns.train_step.training_loss` (masked images,
        and evaluation, go through splatfacto's own code)."""
        if not self.training or "mask" in batch:
            return super().get_loss_dict(outputs, batch, metrics_dict)
        loss_dict = {"main_loss": self._step_loss(outputs, batch)[0]}
        if self.config.use_scale_regularization and self.step % 10 == 0:
            loss_dict["scale_reg"] = scale_regularisation(self.scales, self.config.max_gauss_ratio)
        self.camera_optimizer.get_loss_dict(loss_dict)
        if self.config.use_bilateral_grid:
            loss_dict["tv_loss"] = 10 * total_variation_loss(self.bil_grids.grids)
        return loss_dict

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        """splatfacto's callbacks (the step counter, the strategy's post-backward rules), after pointing the
        optimizers at the live parameters."""
        self.rebind_optimizers(attrs.optimizers.optimizers)
        return super().get_training_callbacks(attrs)

    def rebind_optimizers(self, optimizers: Dict[str, torch.optim.Optimizer]) -> None:
        """Point each Gaussian optimizer at the live Parameter, moving its Adam state along.

        On resume, splatfacto's ``load_state_dict`` replaces the Parameters after the trainer built the
        optimizers, and ``load_optimizers`` attaches the saved state to the stale ones."""
        for name, param in self.gauss_params.items():
            opt = optimizers.get(name)
            if opt is None:
                continue
            old = opt.param_groups[0]["params"][0]
            if old is param:
                continue
            state = opt.state.pop(old, None)
            opt.param_groups[0]["params"] = [param]
            if state is not None:
                opt.state[param] = state


@dataclass
class SplatfactoArgpModelConfig(PruningModelConfig, ArgpOptions):
    """splatfacto-argp: AOP during densification, IRP after it (options: :class:`argp_ns.options.ArgpOptions`)."""

    _target: Type = field(default_factory=lambda: SplatfactoArgpModel)
    stop_split_at: int = 12000
    """Densification (and AOP) stops here (official ARGP: 12,000; splatfacto: 15,000)."""

    def build_strategy(self, num_train_data: int) -> ArgpStrategy:
        return ArgpStrategy(**splatfacto_strategy_kwargs(self, num_train_data), **options_of(self, ArgpOptions))


class SplatfactoArgpModel(PruningModel):
    """splatfacto-argp's model: a :class:`PruningModel` under :class:`argp_ns.strategy.ArgpStrategy`."""

    config: SplatfactoArgpModelConfig


@dataclass
class SplatfactoSafeguardModelConfig(PruningModelConfig, SafeguardOptions):
    """splatfacto-safeguard: one pixel-level top-k prune (SafeguardGS) or one of the paper's baselines (options:
    :class:`argp_ns.options.SafeguardOptions`)."""

    _target: Type = field(default_factory=lambda: SplatfactoSafeguardModel)

    def build_strategy(self, num_train_data: int) -> SafeguardStrategy:
        return SafeguardStrategy(**splatfacto_strategy_kwargs(self, num_train_data), **options_of(self, SafeguardOptions))


class SplatfactoSafeguardModel(PruningModel):
    """splatfacto-safeguard's model: a :class:`PruningModel` under :class:`argp_ns.strategy.SafeguardStrategy`."""

    config: SplatfactoSafeguardModelConfig


@dataclass
class SplatfactoMcmcModelConfig(LeanModelConfig, McmcOptions):
    """splatfacto-mcmc: splatfacto trained with 3D Gaussian Splatting as Markov Chain Monte Carlo under a hard cap
    (``McmcStrategy``; options: :class:`argp_ns.options.McmcOptions`), the baseline users pick for a fixed count.
    Values from gsplat 1.4.0's ``examples/simple_trainer.py`` MCMC preset (init opacity 0.5, init scale x0.1, opacity
    and scale regularisation 0.01, noise_lr 5e5, relocation below opacity 0.005, refine every 100 steps from 500 to
    25,000) and nerfstudio's later splatfacto MCMC option (the same regularisers and noise, the position learning
    rate of the means)."""

    _target: Type = field(default_factory=lambda: SplatfactoMcmcModel)
    stop_split_at: int = 25000
    """Relocation and growth stop here (gsplat's MCMC default 25,000 of 30,000); they start at warmup_length."""

    def build_strategy(self, num_train_data: int) -> McmcStrategy:
        return McmcStrategy(refine_start_iter=self.warmup_length, refine_stop_iter=self.stop_split_at,
                            refine_every=self.refine_every, verbose=True, **options_of(self, McmcOptions))


class SplatfactoMcmcModel(PruningModel):
    config: SplatfactoMcmcModelConfig

    def populate_modules(self) -> None:
        """splatfacto's Gaussians from the seed points, subsampled to ``init_fraction`` of the cap, with MCMC's
        initial opacity and scales."""
        super().populate_modules()
        c = self.config
        n = self.gauss_params["means"].shape[0]
        keep = max(1, min(n, int(c.init_fraction * self.strategy.cap_max)))
        rows = torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(0))[:keep]).values if keep < n else None
        for name, p in list(self.gauss_params.items()):
            data = p.data if rows is None else p.data[rows.to(p.device)]
            if name == "opacities":
                data = torch.full_like(data, float(torch.logit(torch.tensor(c.init_opacity))))
            elif name == "scales":
                data = data + float(torch.log(torch.tensor(c.init_scale)))
            self.gauss_params[name] = torch.nn.Parameter(data)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        """splatfacto's losses plus MCMC's regularisers: ``opacity_reg * mean(sigmoid(o)) + scale_reg * mean(exp(s))``."""
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        if self.training:
            loss_dict["mcmc_opacity_reg"] = self.config.mcmc_opacity_reg * torch.sigmoid(self.opacities).mean()
            loss_dict["mcmc_scale_reg"] = self.config.mcmc_scale_reg * torch.exp(self.scales).mean()
        return loss_dict

    def step_post_backward(self, step: int) -> None:
        """Relocate, add and perturb (``McmcStrategy``), with the means' current learning rate."""
        lr = self.optimizers["means"].param_groups[0]["lr"]
        self.strategy.step_post_backward(self.gauss_params, self.optimizers, self.strategy_state, step, lr)
