"""The training side of pruning, beside the model: :class:`PruningLoop`.

After each training step (nerfstudio's ``AFTER_TRAIN_ITERATION``) the model's own callback applies its strategy's
per-step rules (gsplat's refine with AOP; MCMC's relocation). Around it the loop

* measures the eval-view PSNR right before a step that prunes (a scored round; with ``report_psnr all`` also an AOP
  step) and right after it, for the report;
* when the strategy's scored round is due, runs the score pass over the training views (:func:`argp_ns.scoring.score_views`,
  with what :meth:`pass_options` of the strategy asks for) and hands the scores to the strategy's ``score_round``;
* logs every prune event (console, metrics writer, ``pruning_report.json``), keeps the count at refine steps in the
  model's ``prune_log`` (saved in its checkpoints) and writes the live panel of the viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from argp_ns.panel import LivePanel, panel_text
from argp_ns.render import viewmat_from_c2w
from argp_ns.report import PruningReport
from argp_ns.scoring import View, score_views


def eval_pairs(datamanager) -> List[Any]:
    """The held-out (camera, batch) pairs of a full-image datamanager (a property in nerfstudio 1.1.5, a method later)."""
    pairs = datamanager.fixed_indices_eval_dataloader
    return pairs() if callable(pairs) else pairs


class PruningLoop:
    """Scored rounds, eval PSNR, report and panel for one model (a :class:`argp_ns.model.PruningModel`) and its
    datamanager; ``run_dir`` (where the report goes) and ``method`` are set when training starts."""

    def __init__(self, model, datamanager, run_dir: Optional[Path] = None, method: str = "") -> None:
        self.model = model
        self.datamanager = datamanager
        self.run_dir = run_dir
        self.panel = LivePanel(model.viewer_control)
        self.report = PruningReport(method=method or type(model).__name__, counts=model.prune_log["counts"],
                                    events=model.prune_log["events"])
        self._psnr_before: Optional[float] = None

    # --- the training callbacks ---------------------------------------------------------------------------
    def wrap(self, callbacks: List[TrainingCallback]) -> List[TrainingCallback]:
        """``callbacks`` (the datamanager's and the model's) with :meth:`before` first and :meth:`after` last among
        the after-step callbacks, and :meth:`finish` after training."""
        after_step = [TrainingCallbackLocation.AFTER_TRAIN_ITERATION]
        return ([TrainingCallback(after_step, self.before)] + callbacks
                + [TrainingCallback(after_step, self.after), TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN], self.finish)])

    @property
    def _options(self) -> Tuple[bool, str]:
        """(scored_prune, report_psnr) of the model's config (MCMC: no scored rounds, no PSNR)."""
        c = self.model.config
        return getattr(c, "scored_prune", False), getattr(c, "report_psnr", "off")

    def round_due(self, step: int) -> bool:
        """A scored round runs at ``step``."""
        return self._options[0] and self.model.strategy.round_due(step)

    def before(self, step: int) -> None:
        """Before the model's post-step rules: the eval PSNR, if this step prunes and the report measures it."""
        report_psnr = self._options[1]
        due = self.round_due(step) or (report_psnr == "all" and self.model.strategy.is_refine_step(step))
        self._psnr_before = self.eval_psnr() if due and report_psnr != "off" else None

    def after(self, step: int) -> None:
        """After the model's post-step rules: the scored round when due, then every prune event of the step, the
        count and the panel."""
        model = self.model
        strategy = model.strategy
        round_due = self.round_due(step)
        if round_due:
            scores = self.score(**strategy.pass_options(step)) if strategy.scores_due(step) else None
            strategy.score_round(model.gauss_params, model.optimizers, model.strategy_state, step, scores)
        events = model.strategy_state.pop("events", [])
        after = self.eval_psnr() if self._psnr_before is not None and events else None
        for event in events:
            event["psnr_before"], event["psnr_after"] = self._psnr_before, after
            self.log_event(event)
        if strategy.is_refine_step(step) or round_due:
            self.report.add_count(step, model.num_points)
        self.panel.update(panel_text(model.num_points, self.report.events[-1] if self.report.events else None,
                                     *self.next_prune(step)), force=bool(events))

    def finish(self, step: int) -> None:
        """Write the final pruning report and print its summary (after training)."""
        self.report.final_gaussians = self.model.num_points
        self.report.add_count(step, self.model.num_points)
        if self.run_dir is not None:
            path = self.report.write(self.run_dir)
            CONSOLE.print(f"argp_ns: {self.report.summary()} Report: {path}", markup=False)

    def next_prune(self, step: int) -> Tuple[Optional[int], str]:
        """The next step at which this run prunes and the rule (AOP steps, and scored rounds unless switched off)."""
        nxt, rule = self.model.strategy.next_prune(step)
        return (nxt, rule) if self._options[0] or rule == "aop" else (None, "")

    def log_event(self, event: Dict[str, Any]) -> None:
        """One prune event to the console, the metrics writer and the report (written at once)."""
        self.report.events.append(event)
        psnr = f" (eval PSNR {event['psnr_before']:.2f} -> {event['psnr_after']:.2f})" if event.get("psnr_after") is not None else ""
        CONSOLE.print(f"argp_ns: step {event['step']}: {event['rule']} removed {event['removed']:,}, kept {event['kept']:,}{psnr}", markup=False)
        writer.put_scalar(name=f"prune/{event['rule']}_removed", scalar=event["removed"], step=event["step"])
        writer.put_scalar(name="prune/gaussians", scalar=event["kept"], step=event["step"])
        if self.run_dir is not None and event["rule"] != "aop":
            self.report.write(self.run_dir)

    # --- evaluation and the score pass --------------------------------------------------------------------
    @torch.no_grad()
    def eval_psnr(self) -> Optional[float]:
        """Mean PSNR over the eval views (None without evaluation data)."""
        dm, model = self.datamanager, self.model
        if dm is None or not hasattr(dm, "fixed_indices_eval_dataloader"):
            return None
        pairs = eval_pairs(dm)
        if not pairs:
            return None
        was_training, info = model.training, getattr(model, "info", None)  # the training render's info feeds the strategy
        model.eval()
        try:
            values = []
            for camera, batch in pairs:
                out = model.get_outputs_for_camera(camera)
                gt = model.composite_with_background(model.get_gt_img(batch["image"]), out["background"])
                mse = torch.mean((out["rgb"] - gt) ** 2).clamp(min=1e-10)
                values.append(float(-10 * torch.log10(mse)))
        finally:
            model.train(was_training)
            model.info = info
        return sum(values) / len(values)

    def training_views(self) -> Iterator[View]:
        """All training cameras at full resolution, GT (RGBA composited on the eval background), one at a time: each
        view's float image is made as the pass reaches it (all of them at once cost 12 bytes a pixel per view, 1.2 GB
        on bonsai's 255 views). The views' sizes are read back once, before the first: reading a view's size from the
        device as it is made would make the next view wait for the GPU to finish scoring the current one."""
        dm, model = self.datamanager, self.model
        if dm is None or not hasattr(dm, "cached_train"):
            raise RuntimeError("the score pass needs a full-image datamanager with cached training images")
        cameras = dm.train_cameras
        background = (model.background_color.to(model.device) if model.config.background_color == "random"
                      else model._get_background_color())
        sizes = torch.stack([cameras.width.reshape(-1), cameras.height.reshape(-1)], 1).tolist()  # one read for all views
        for i, data in enumerate(dm.cached_train):
            width, height = sizes[i]
            cam = cameras[i : i + 1].to(model.device)
            img = data["image"].to(model.device)
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            yield View(viewmat_from_c2w(cam.camera_to_worlds)[0], cam.get_intrinsics_matrices()[0].to(model.device),
                       width, height, model.composite_with_background(img, background), background)

    def score(self, spec, k: int, tile_scope: bool, recovery: bool) -> Dict[str, Tensor]:
        """The score pass over the training views at the model's current SH degree (``spec``, ``k``, ``tile_scope``,
        ``recovery``: see :func:`argp_ns.scoring.score_views`), on the model config's backend."""
        model = self.model
        c = model.config
        sh = min(model.step // c.sh_degree_interval, c.sh_degree) if c.sh_degree > 0 else None
        coeffs = torch.cat((model.features_dc[:, None, :], model.features_rest), dim=1)
        if sh is None:
            coeffs = torch.sigmoid(coeffs).squeeze(1)
        result = score_views(
            model.means.detach(), model.quats.detach(), torch.exp(model.scales.detach()),
            torch.sigmoid(model.opacities.detach()).squeeze(-1), coeffs.detach(), sh, self.training_views(),
            spec, k=k, tile_scope=tile_scope, recovery=recovery, backend=c.score_backend,
        )
        cov = sum(result.coverage) / max(len(result.coverage), 1)
        kept = "" if recovery else f"; top-{k} keeps {int(result.totals['keep'].sum()):,} (pixel scope)"
        if tile_scope:
            kept += f", {int(result.totals['keep_tile'].sum()):,} (tile scope)"
        CONSOLE.print(f"argp_ns: score pass ({result.backend}): {len(result.coverage)} views, {result.seconds:.2f}s, "
                      f"mean coverage {cov:.3f}{kept} of {model.num_points:,}", markup=False)
        seen = int((result.totals["hits"] > 0).sum())
        if not recovery and k > 1 and seen and int(result.totals["keep"].sum()) >= seen:
            CONSOLE.print(f"argp_ns: top-{k} keeps every Gaussian a pixel sees ({seen:,}): this round removes only the unseen "
                          "ones; a smaller --pipeline.model.top-k prunes", markup=False)
        return result.totals
