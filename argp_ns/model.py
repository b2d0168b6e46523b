"""splatfacto models that prune: the shared base, ``splatfacto-argp`` and ``splatfacto-safeguard``; and
``splatfacto-mcmc``, the capped MCMC baseline they are measured against.

The model owns the cameras and images: it renders (gsplat on CUDA, the PyTorch twin on the CPU), runs
the score pass over the training views when its strategy asks for it, hands the scores to the
strategy, and logs each prune event. Everything else is nerfstudio's splatfacto.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.lib_bilagrid import total_variation_loss
from nerfstudio.models.splatfacto import RGB2SH, SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerControl
from torch import Tensor

from argp_ns import render
from argp_ns.panel import LivePanel, panel_text
from argp_ns.report import PruningReport
from argp_ns.scores import ScoreSpec
from argp_ns.scoring import View, score_views
from argp_ns.strategy import (IRP_PRESETS, ArgpStrategy, FinalRound, IrpMode, IrpPreset, McmcStrategy, PruneMethod,
                              SafeguardStrategy, is_refine_step)
from argp_ns.train_step import psnr_from_mse, scale_regularisation, training_loss


def viewmat_from_c2w(c2w: Tensor) -> Tensor:
    """World-to-camera [C,4,4] from nerfstudio camera-to-world [C,3,4] (OpenGL axes -> OpenCV axes)."""
    R = torch.cat([c2w[:, :3, :1], -c2w[:, :3, 1:3]], dim=2)  # y and z axes flipped; no host-to-device copy
    R_inv = R.transpose(1, 2)
    out = torch.eye(4, device=c2w.device, dtype=c2w.dtype).repeat(c2w.shape[0], 1, 1)
    out[:, :3, :3] = R_inv
    out[:, :3, 3:] = -R_inv @ c2w[:, :3, 3:4]
    return out


def eval_pairs(datamanager) -> List[Any]:
    """The held-out (camera, batch) pairs of a full-image datamanager (a property in nerfstudio 1.1.5, a method later)."""
    pairs = datamanager.fixed_indices_eval_dataloader
    return pairs() if callable(pairs) else pairs


@dataclass
class LeanModelConfig(SplatfactoModelConfig):
    """splatfacto with this plugin's renderer (CPU twin), lean training step, report and live panel; the base of
    every model here."""

    _target: Type = field(default_factory=lambda: PruningModel)


@dataclass
class PruningModelConfig(LeanModelConfig):
    """splatfacto plus a score pass; subclassed by the two methods."""

    score_backend: Literal["auto", "cuda", "torch"] = "auto"
    """Score pass implementation: the CUDA kernel where it builds ('auto'), or the PyTorch twin."""
    scored_prune: bool = True
    """False: no scored prune round (ARGP's IRP, the SafeguardGS prune) runs; splatfacto-safeguard then trains as
    splatfacto does, with this plugin's lean training step (an ablation of what the step alone gives)."""
    report_psnr: Literal["rounds", "all", "off"] = "rounds"
    """Eval-view PSNR before/after prunes in pruning_report.json: scored rounds only, also AOP steps, or never."""


class PruningModel(SplatfactoModel):
    """splatfacto that renders on CPU or GPU and prunes with a score-aware strategy."""

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
        self.strategy = self.make_strategy(self.splatfacto_strategy_kwargs())
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self._datamanager = None
        self._view_sizes: Dict[int, Tensor] = {}  # training view -> its full (W, H), int64 on the CPU
        self._view_cache: Dict[int, Tuple[Tensor, Tensor]] = {}  # training view -> (viewmat, K) on the device
        self._run_dir = None
        self.viewer_control = ViewerControl()
        self.panel = LivePanel(self.viewer_control)
        self.report = PruningReport(method=type(self).__name__)

    @property
    def prune_events(self) -> List[Dict[str, Any]]:
        """Every prune event of this run so far ({step, rule, removed, kept, psnr_before, psnr_after})."""
        return self.report.events

    def get_extra_state(self) -> Dict[str, Any]:
        """Saved in checkpoints: the schedule state a resume needs (IRP candidates) and the report so far."""
        cand = self.strategy_state.get("irp_candidates")
        return {"irp_candidates": None if cand is None else cand.cpu(), "prune_events": list(self.prune_events),
                "counts": list(self.report.counts)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if state.get("irp_candidates") is not None:
            self.strategy_state["irp_candidates"] = state["irp_candidates"].to(self.device)
        self.report.events = list(state.get("prune_events", []))
        self.report.counts = [list(c) for c in state.get("counts", [])]

    def splatfacto_strategy_kwargs(self) -> Dict[str, Any]:
        """splatfacto's DefaultStrategy arguments, from this config."""
        c = self.config
        return dict(
            prune_opa=c.cull_alpha_thresh, grow_grad2d=c.densify_grad_thresh, grow_scale3d=c.densify_size_thresh,
            grow_scale2d=c.split_screen_size, prune_scale3d=c.cull_scale_thresh, prune_scale2d=c.cull_screen_size,
            refine_scale2d_stop_iter=c.stop_screen_size_at, refine_start_iter=c.warmup_length,
            refine_stop_iter=c.stop_split_at, reset_every=c.reset_alpha_every * c.refine_every,
            refine_every=c.refine_every, pause_refine_after_reset=self.num_train_data + c.refine_every,
            absgrad=c.use_absgrad, revised_opacity=False, verbose=True,
        )

    def make_strategy(self, base: Dict[str, Any]):
        raise NotImplementedError

    # --- rendering -------------------------------------------------------------------------------------
    def _training_params(self, params: Dict[str, Tensor], opacities: Tensor):
        """Gate the rows the strategy blocks: no gradient (frozen, hidden) and no opacity (hidden)."""
        blocked = self.strategy.blocked(self.strategy_state) if isinstance(self.strategy, ArgpStrategy) else None
        if blocked is None or not self.training or blocked.numel() != opacities.numel():
            return params, opacities
        gate = lambda x: torch.where(blocked.view(-1, *([1] * (x.dim() - 1))), x.detach(), x)  # noqa: E731
        params = {k: gate(v) for k, v in params.items()}
        opacities = gate(opacities)
        if self.strategy.irp_mode == "hidden":
            opacities = torch.where(blocked, torch.zeros_like(opacities), opacities)
        return params, opacities

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[Tensor, List]]:
        """splatfacto's forward pass, rendered by gsplat on CUDA and by the twin on the CPU."""
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            c2w = self.camera_optimizer.apply_to_camera(camera)
        else:
            c2w = camera.camera_to_worlds
        crop = None
        if self.crop_box is not None and not self.training:
            crop = self.crop_box.within(self.means).squeeze()
            if crop.sum() == 0:
                return self.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), self.background_color)
        params = {k: (v if crop is None else v[crop]) for k, v in self.gauss_params.items()}
        params, opacities = self._training_params(params, torch.sigmoid(params["opacities"]).squeeze(-1))
        colors = torch.cat((params["features_dc"][:, None, :], params["features_rest"]), dim=1)
        scale = self._get_downscale_factor()
        viewmat, K = self._view_matrices(camera, c2w)
        if scale != 1:  # Cameras.rescale_output_resolution(1 / scale), without changing the camera
            K = K.clone()
            K[..., :2, :] *= 1 / scale
        W, H = self._render_size(camera, scale)
        self.last_size = (H, W)
        if self.config.rasterize_mode not in ("antialiased", "classic"):
            raise ValueError(f"Unknown rasterize_mode: {self.config.rasterize_mode}")
        render_mode = "RGB+ED" if self.config.output_depth_during_training or not self.training else "RGB"
        if self.config.sh_degree > 0:
            sh_degree: Optional[int] = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors, sh_degree = torch.sigmoid(colors).squeeze(1), None
        rgb, alpha, self.info = render.rasterize(
            means=params["means"], quats=params["quats"], scales=torch.exp(params["scales"]), opacities=opacities,
            colors=colors, viewmats=viewmat, Ks=K, width=W, height=H, packed=False, near_plane=0.01, far_plane=1e10,
            render_mode=render_mode, sh_degree=sh_degree, sparse_grad=False, absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
        )
        if self.training:
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info)
        background = self._get_background_color()
        out_rgb = torch.clamp(rgb[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            out_rgb = self._apply_bilateral_grid(out_rgb, camera.metadata["cam_idx"], H, W)
        depth = None
        if render_mode == "RGB+ED":
            depth = torch.where(alpha > 0, rgb[..., 3:4], rgb[..., 3:4].detach().max()).squeeze(0)
        if background.shape[0] == 3 and not self.training:
            background = background.expand(H, W, 3)
        return {"rgb": out_rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    def _view_matrices(self, camera: Cameras, c2w: Tensor) -> Tuple[Tensor, Tensor]:
        """(world-to-camera [1, 4, 4], intrinsics [1, 3, 3]) on the device. A training view's pair is made once and
        kept while the camera optimizer is off (pose and intrinsics are then fixed; ``get_intrinsics_matrices``
        builds K on the host, reading fx, fy, cx, cy back from the device)."""
        idx = (camera.metadata or {}).get("cam_idx")
        if not (self.training and idx is not None and self.camera_optimizer.config.mode == "off"):
            return viewmat_from_c2w(c2w), camera.get_intrinsics_matrices().to(self.device)
        if idx not in self._view_cache:
            self._view_cache[idx] = (viewmat_from_c2w(c2w), camera.get_intrinsics_matrices().to(self.device))
        return self._view_cache[idx]

    def _render_size(self, camera: Cameras, scale: int) -> Tuple[int, int]:
        """(W, H) of the render at downscale ``scale`` (``Cameras.rescale_output_resolution``'s arithmetic, on the
        host). A training view's full size is read back from its camera once and kept (no read-back per step)."""
        idx = (camera.metadata or {}).get("cam_idx")
        size = self._view_sizes.get(idx) if self.training else None
        if size is None:
            size = torch.stack([camera.width.reshape(-1)[0], camera.height.reshape(-1)[0]]).cpu()
            if self.training and idx is not None:
                self._view_sizes[idx] = size
        if scale != 1:
            size = (size * (1 / scale)).to(torch.int64)
        w, h = size.tolist()
        return int(w), int(h)

    # --- the training step: splatfacto's loss and metrics, fused (see argp_ns.train_step) ---------------
    def _step_loss(self, outputs: Dict[str, Any], batch: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """This step's main loss and its detached [l1, ssim, mse], computed once for the metrics and the loss:
        the ground truth composited on the step's background, as splatfacto's loss sees them."""
        if "step_loss" not in outputs:
            gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
            outputs["step_loss"] = training_loss(gt, outputs["rgb"], self.config.ssim_lambda)
        return outputs["step_loss"]

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

    # --- training callbacks ----------------------------------------------------------------------------
    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        # a resumed run (load_dir) trains max_num_iterations more steps after the loaded one
        try:
            self.strategy.check_config(getattr(attrs.trainer, "_start_step", 0) + attrs.trainer.config.max_num_iterations)
        except ValueError as err:  # a bad flag: one line, before any step or checkpoint
            raise SystemExit(f"argp_ns: {err}") from None
        self._datamanager = attrs.pipeline.datamanager
        self._run_dir = attrs.trainer.base_dir
        self.report.method = attrs.trainer.config.method_name
        self.rebind_optimizers(attrs.optimizers.optimizers)
        return super().get_training_callbacks(attrs) + [
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN], self.finish_report)
        ]

    def finish_report(self, step: int) -> None:
        """Write the final pruning report and print its summary (after training)."""
        self.report.final_gaussians = self.num_points
        self.report.add_count(step, self.num_points)
        if self._run_dir is not None:
            path = self.report.write(self._run_dir)
            CONSOLE.print(f"argp_ns: {self.report.summary()} Report: {path}", markup=False)

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

    def step_post_backward(self, step: int) -> None:
        """gsplat's refine step (with the strategy's own prune rule), then a scored round when due."""
        refine = is_refine_step(self.strategy, step)
        round_due = self.config.scored_prune and self.strategy.round_due(step)
        measure = round_due or (refine and self.config.report_psnr == "all")
        before = self.eval_psnr() if measure and self.config.report_psnr != "off" else None
        super().step_post_backward(step)
        if round_due:
            scores = self.score_training_views() if self.strategy.scores_due(step) else None
            self.strategy.score_round(self.gauss_params, self.optimizers, self.strategy_state, step, scores)
        events = self.strategy_state.pop("events", [])
        after = self.eval_psnr() if before is not None and events else None
        for event in events:
            event["psnr_before"], event["psnr_after"] = before, after
            self._log_event(event)
        if refine or round_due:
            self.report.add_count(step, self.num_points)
        self.panel.update(panel_text(self.num_points, self.prune_events[-1] if self.prune_events else None,
                                     *self.next_prune(step)), force=bool(events))

    def next_prune(self, step: int) -> Tuple[Optional[int], str]:
        """The next step at which this run prunes and the rule (AOP steps, and scored rounds unless switched off)."""
        nxt, rule = self.strategy.next_prune(step)
        return (nxt, rule) if self.config.scored_prune or rule == "aop" else (None, "")

    def _log_event(self, event: Dict[str, Any]) -> None:
        """One prune event to the console, the metrics writer and the report (written at once)."""
        self.report.events.append(event)
        psnr = f" (eval PSNR {event['psnr_before']:.2f} -> {event['psnr_after']:.2f})" if event.get("psnr_after") is not None else ""
        CONSOLE.print(f"argp_ns: step {event['step']}: {event['rule']} removed {event['removed']:,}, kept {event['kept']:,}{psnr}", markup=False)
        writer.put_scalar(name=f"prune/{event['rule']}_removed", scalar=event["removed"], step=event["step"])
        writer.put_scalar(name="prune/gaussians", scalar=event["kept"], step=event["step"])
        if self._run_dir is not None and event["rule"] != "aop":
            self.report.write(self._run_dir)

    @torch.no_grad()
    def eval_psnr(self) -> Optional[float]:
        """Mean PSNR over the eval views (None without evaluation data)."""
        dm = self._datamanager
        if dm is None or not hasattr(dm, "fixed_indices_eval_dataloader"):
            return None
        pairs = eval_pairs(dm)
        if not pairs:
            return None
        was_training, info = self.training, getattr(self, "info", None)  # the training render's info feeds the strategy
        self.eval()
        try:
            values = []
            for camera, batch in pairs:
                out = self.get_outputs_for_camera(camera)
                gt = self.composite_with_background(self.get_gt_img(batch["image"]), out["background"])
                mse = torch.mean((out["rgb"] - gt) ** 2).clamp(min=1e-10)
                values.append(float(-10 * torch.log10(mse)))
        finally:
            self.train(was_training)
            self.info = info
        return sum(values) / len(values)

    # --- score pass ------------------------------------------------------------------------------------
    def score_spec(self) -> ScoreSpec:
        return ScoreSpec()

    def training_views(self) -> Iterator[View]:
        """All training cameras at full resolution, GT (RGBA composited on the eval background), one at a time: each
        view's float image is made as the pass reaches it (all of them at once cost 12 bytes a pixel per view, 1.2 GB
        on bonsai's 255 views)."""
        dm = self._datamanager
        if dm is None or not hasattr(dm, "cached_train"):
            raise RuntimeError("the score pass needs a full-image datamanager with cached training images")
        cached = dm.cached_train
        cameras = dm.train_cameras
        background = self.background_color.to(self.device) if self.config.background_color == "random" else self._get_background_color()
        for i, data in enumerate(cached):
            cam = cameras[i : i + 1].to(self.device)
            img = data["image"].to(self.device)
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            yield View(viewmat_from_c2w(cam.camera_to_worlds)[0], cam.get_intrinsics_matrices()[0].to(self.device),
                       int(cam.width.item()), int(cam.height.item()), self.composite_with_background(img, background), background)

    def score_training_views(self, **options: Any) -> Dict[str, Tensor]:
        """Run the score pass over the training views at the current SH degree (``options`` override
        :meth:`score_pass_options`)."""
        sh = min(self.step // self.config.sh_degree_interval, self.config.sh_degree) if self.config.sh_degree > 0 else None
        coeffs = torch.cat((self.features_dc[:, None, :], self.features_rest), dim=1)
        if sh is None:
            coeffs = torch.sigmoid(coeffs).squeeze(1)
        opts = {**self.score_pass_options(), **options}
        result = score_views(
            self.means.detach(), self.quats.detach(), torch.exp(self.scales.detach()),
            torch.sigmoid(self.opacities.detach()).squeeze(-1), coeffs.detach(), sh, self.training_views(),
            self.score_spec(), **opts, backend=self.config.score_backend,
        )
        cov = sum(result.coverage) / max(len(result.coverage), 1)
        kept = "" if opts["recovery"] else f"; top-{opts['k']} keeps {int(result.totals['keep'].sum()):,} (pixel scope)"
        if opts["tile_scope"]:
            kept += f", {int(result.totals['keep_tile'].sum()):,} (tile scope)"
        CONSOLE.print(f"argp_ns: score pass ({result.backend}): {len(result.coverage)} views, {result.seconds:.2f}s, "
                      f"mean coverage {cov:.3f}{kept} of {self.num_points:,}", markup=False)
        return result.totals

    def score_pass_options(self) -> Dict[str, Any]:
        return {"k": 1, "tile_scope": False, "recovery": False}


@dataclass
class SplatfactoArgpModelConfig(PruningModelConfig):
    """splatfacto-argp: AOP during densification, IRP after it (see ``ArgpStrategy``)."""

    _target: Type = field(default_factory=lambda: SplatfactoArgpModel)
    stop_split_at: int = 12000
    """Densification (and AOP) stops here (official ARGP: 12,000; splatfacto: 15,000)."""
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
    budget: int = 0
    """Final number of Gaussians (0: off; at least 100). The IRP recover ratio is solved from the count at the first round so that the
    last round lands on it by recovery score; a count already within it after densification: AOP only."""
    final_round: FinalRound = "irp"
    """Last IRP round: irp (delete the candidates by recovery score, as published) or safeguard (keep SafeguardGS's
    per-pixel top-k union of all Gaussians; with a budget, its N best by pixels won, then summed score)."""
    top_k: int = 1
    """final-round safeguard: the per-pixel top-k (1..32 on the CUDA pass)."""

    def irp_ratios(self) -> Tuple[float, float]:
        """(mark_ratio, recover_ratio): the preset's pair, each replaced by its flag when given."""
        mark, recover = IRP_PRESETS[self.irp_preset]
        return (mark if self.mark_ratio is None else self.mark_ratio,
                recover if self.recover_ratio is None else self.recover_ratio)


class SplatfactoArgpModel(PruningModel):
    config: SplatfactoArgpModelConfig

    def make_strategy(self, base: Dict[str, Any]) -> ArgpStrategy:
        c = self.config
        base["prune_opa"] = c.reset_opacity_value / 2.0
        mark_ratio, recover_ratio = c.irp_ratios()
        return ArgpStrategy(**base, prune_quantile=c.prune_quantile, opacity_floor=c.aop_opacity_floor, irp_start=c.irp_start, irp_every=c.irp_every,
                            irp_last=c.irp_last, mark_ratio=mark_ratio, recover_ratio=recover_ratio, irp_mode=c.irp_mode,
                            budget=c.budget, final_round=c.final_round, top_k=c.top_k)

    def score_pass_options(self) -> Dict[str, Any]:
        """The recovery score at every round, but the last one with a SafeguardGS final round (per-pixel top-k only)."""
        last = self.config.final_round == "safeguard" and self.step == self.strategy.irp_rounds()[-1]
        return {"k": self.config.top_k, "tile_scope": False, "recovery": not last}


@dataclass
class SplatfactoSafeguardModelConfig(PruningModelConfig):
    """splatfacto-safeguard: one pixel-level top-k prune (SafeguardGS) or one of the paper's baselines."""

    _target: Type = field(default_factory=lambda: SplatfactoSafeguardModel)
    prune_step: int = 20000
    """Step of the single prune (paper: 20,000 of 30,000)."""
    prune_method: PruneMethod = "safeguard"
    """safeguard (family score top-k), efficientgs (alpha*T top-k), lightgaussian, minisplatting, radsplat."""
    top_k: int = 1
    """Per-pixel top-k (safeguard, efficientgs); 1..32 for the CUDA pass."""
    score: str = "safeguard"
    """Family member for safeguard: 'safeguard' (= alpha_t*l1, code 36), a bitmask code (3, 4, 8, 9, 36, 39, 40, 52, 57) or factors like 'alpha_t*exp*cosine'."""
    topk_scope: Literal["pixel", "tile"] = "pixel"
    """pixel (paper) or tile (the released CUDA: per-tile top-k of per-batch last contributors)."""
    prune_ratio: float = 0.6
    """lightgaussian: fraction pruned."""
    keep_ratio: float = 0.1
    """minisplatting: fraction kept."""
    minisplatting_sampling: bool = False
    """minisplatting: sample kept Gaussians in proportion to importance instead of the top ones."""
    radsplat_threshold: float = 0.01
    """radsplat: prune max blending weight below this (0.25 for RadSplat-Light)."""
    budget: int = 0
    """Number of Gaussians the prune keeps (0: off; at least 100): the best by the rule's own importance (safeguard, efficientgs:
    top-k union first, by pixels won then summed score), replacing its threshold or ratio."""


class SplatfactoSafeguardModel(PruningModel):
    config: SplatfactoSafeguardModelConfig

    def make_strategy(self, base: Dict[str, Any]) -> SafeguardStrategy:
        c = self.config
        ScoreSpec.parse(c.score)  # fail at start on an unknown score
        return SafeguardStrategy(**base, prune_step=c.prune_step, prune_method=c.prune_method, top_k=c.top_k,
                                 topk_scope=c.topk_scope, prune_ratio=c.prune_ratio, keep_ratio=c.keep_ratio,
                                 minisplatting_sampling=c.minisplatting_sampling, radsplat_threshold=c.radsplat_threshold,
                                 budget=c.budget)

    def score_spec(self) -> ScoreSpec:
        return ScoreSpec.parse("efficientgs" if self.config.prune_method == "efficientgs" else self.config.score)

    def score_pass_options(self) -> Dict[str, Any]:
        return {"k": self.config.top_k, "tile_scope": self.config.topk_scope == "tile", "recovery": False}


@dataclass
class SplatfactoMcmcModelConfig(LeanModelConfig):
    """splatfacto-mcmc: splatfacto trained with 3D Gaussian Splatting as Markov Chain Monte Carlo under a hard cap
    (``McmcStrategy``), the baseline users pick for a fixed count. Values from gsplat 1.4.0's
    ``examples/simple_trainer.py`` MCMC preset (init opacity 0.5, init scale x0.1, opacity and scale regularisation
    0.01, noise_lr 5e5, relocation below opacity 0.005, refine every 100 steps from 500 to 25,000) and nerfstudio's
    later splatfacto MCMC option (the same regularisers and noise, the position learning rate of the means)."""

    _target: Type = field(default_factory=lambda: SplatfactoMcmcModel)
    stop_split_at: int = 25000
    """Relocation and growth stop here (gsplat's MCMC default 25,000 of 30,000); they start at warmup_length."""
    budget: int = 0
    """The hard cap of Gaussians (0: gsplat's 1,000,000; at least 100); the count grows 5 % a refine step up to it."""
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

    def check(self) -> None:
        """Fail at start with one line on an invalid initialisation (the strategy checks its own options)."""
        if not 0.0 < self.init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        if not 0.0 < self.init_fraction <= 1.0:
            raise ValueError(f"init_fraction must be in (0, 1], got {self.init_fraction}")
        if self.init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")


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

    def make_strategy(self, base: Dict[str, Any]) -> McmcStrategy:
        c = self.config
        return McmcStrategy(cap_max=c.budget or 1_000_000, noise_lr=c.noise_lr, refine_start_iter=base["refine_start_iter"],
                            refine_stop_iter=base["refine_stop_iter"], refine_every=base["refine_every"],
                            min_opacity=c.mcmc_min_opacity, verbose=True)

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
        if self.strategy.is_refine_step(step):
            self.report.add_count(step, self.num_points)
            self.panel.update(panel_text(self.num_points, None, None, ""), force=False)
