"""Post-hoc pruning of a finished splatfacto run (stock ``splatfacto`` or ours): ``argp-ns prune``.

Loads the run with nerfstudio's ``eval_setup``, rebuilt as a ``splatfacto-safeguard`` model (same
splatfacto fields), scores it over its training views with the score pass, prunes once (Gaussians and
their Adam moments), and writes a new run directory (config.yml + checkpoint with the pruned optimizer
state and the run's schedulers) that ``ns-eval``, ``ns-viewer`` and ``ns-export`` load as is. With
``--finetune-steps N`` nerfstudio's Trainer then resumes that checkpoint for N more steps, without
densification or further pruning, at the learning rates where the run ended.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.splatfacto import SplatfactoModelConfig

from argp_ns.checks import ConfigError, check_model, check_run_data, check_writable, resolve_checkpoint
from argp_ns.model import SplatfactoSafeguardModelConfig
from argp_ns.options import BackendOption, PruneMethod, ScoreRuleOptions, options_of
from argp_ns.pipeline import as_pruning_pipeline
from argp_ns.pruning import PruningLoop
from argp_ns.strategy import PruneError, check_budget, prune
from argp_ns.trainer import as_argp_config


class PosthocError(RuntimeError):
    """A post-hoc prune that cannot start; nothing was written."""


def as_flag(message: str) -> str:
    """A check's message with its leading setting written as this command's flag (``top_k`` -> ``--top-k``)."""
    name, _, rest = message.partition(" ")
    return f"--{name.replace('_', '-')} {rest}" if name in {f.name for f in dataclasses.fields(Prune)} else message


def load_run(load_config: Path, **overrides):
    """Load a finished splatfacto-family run as a ``splatfacto-safeguard`` model (its splatfacto fields kept,
    ``overrides`` set): (config, pipeline, checkpoint, step, the pruning loop of its model and datamanager)."""
    from nerfstudio.utils.eval_utils import eval_setup

    def swap(c: TrainerConfig) -> TrainerConfig:
        fields = {f.name: getattr(c.pipeline.model, f.name) for f in dataclasses.fields(SplatfactoModelConfig) if f.name != "_target"}
        model = SplatfactoSafeguardModelConfig(**fields, **overrides)
        return dataclasses.replace(c, pipeline=dataclasses.replace(c.pipeline, model=model))

    try:
        config, pipeline, ckpt, step = eval_setup(load_config, test_mode="test", update_config_callback=swap)
    except (RuntimeError, KeyError, ValueError) as err:
        raise PosthocError(f"the checkpoint does not match its config ({str(err).splitlines()[0][:200]})") from None
    return config, pipeline, ckpt, step, PruningLoop(pipeline.model, pipeline.datamanager)


@dataclass(kw_only=True)
class Prune(ScoreRuleOptions, BackendOption):
    """Score a finished run over its training views, prune it once, write a new run (the rule's options:
    :class:`argp_ns.options.ScoreRuleOptions`, as ``splatfacto-safeguard`` has them)."""

    load_config: Path
    """config.yml of the finished run (splatfacto, splatfacto-argp, splatfacto-safeguard, ...)."""
    output_dir: Path
    """Where the new run goes (must not exist)."""
    method: PruneMethod = "safeguard"
    """safeguard / efficientgs (per-pixel top-k), lightgaussian, minisplatting, radsplat, or argp (keep by recovery score)."""
    finetune_steps: int = 0
    """Train the pruned model this many more steps (no densification, no further prune); 0: prune only."""

    def main(self) -> None:
        try:
            self.run()
        except (PosthocError, ConfigError, PruneError) as err:
            raise SystemExit(f"argp-ns prune: {err}") from None

    def _check(self) -> TrainerConfig:
        """Everything that needs no model, before anything is loaded or written: the flags, the output folder,
        the run's config, its dataset and its checkpoint."""
        if self.finetune_steps < 0:
            raise PosthocError(f"finetune-steps must be >= 0, got {self.finetune_steps}")
        self._check_flags()
        if self.output_dir.exists():
            raise PosthocError(f"output directory {self.output_dir} exists; nothing was overwritten")
        check_writable(self.output_dir)
        source = self.load_config.resolve().parent  # the run folder (its config.yml beside its checkpoints), links followed
        target = self.output_dir.resolve()  # the existing part with its links followed: a link into the run is inside it
        inside = source == target or source in target.parents
        if inside and (source / "nerfstudio_models").is_dir():
            raise PosthocError(f"output directory {self.output_dir} is inside the source run {source}; a later run there "
                               "could overwrite its source: choose a folder outside it")
        config = self._read_config()
        if (config.pipeline.datamanager.data or config.pipeline.datamanager.dataparser.data) is None:
            raise PosthocError(f"{self.load_config} names no dataset (the score pass needs its training images)")
        check_run_data(config.pipeline.datamanager, self.load_config)
        resolve_checkpoint(config.get_checkpoint_dir(), config.load_step, fall_back=False)  # the one eval_setup loads
        return config

    def _overrides(self) -> dict:
        """The ``splatfacto-safeguard`` model settings this prune runs with."""
        return dict(prune_method=self.method, score_backend=self.score_backend, **options_of(self, ScoreRuleOptions))

    def _check_flags(self) -> None:
        """The flags, by the checks training runs (:func:`argp_ns.checks.check_model`), named as this command's flags."""
        model = SplatfactoSafeguardModelConfig(**self._overrides())
        try:
            check_model(model, max_steps=model.prune_step + 1)  # a post-hoc prune has no schedule to fit in
        except ConfigError as err:
            raise ConfigError(as_flag(str(err))) from None

    def _read_config(self) -> TrainerConfig:
        """The run's config.yml: a nerfstudio TrainerConfig of a splatfacto-family method."""
        if not self.load_config.is_file():
            raise PosthocError(f"no config at {self.load_config}")
        try:
            config = yaml.load(self.load_config.read_text(), Loader=yaml.Loader)
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise PosthocError(f"{self.load_config} is not a nerfstudio config.yml ({str(err).splitlines()[0]})") from None
        if not isinstance(config, TrainerConfig):
            raise PosthocError(f"{self.load_config} is not a nerfstudio config.yml (it holds no TrainerConfig)")
        if not isinstance(config.pipeline.model, SplatfactoModelConfig):
            raise PosthocError(f"{self.load_config} is a {config.method_name} run, not a splatfacto method")
        return config

    def run(self) -> Path:
        self._check()
        config, pipeline, ckpt, step, loop = load_run(self.load_config, **self._overrides())
        model = pipeline.model
        n_before = model.num_points
        if self.budget:
            try:
                check_budget(self.budget, n_before, self.method)
            except PruneError as err:
                raise PosthocError(f"{err}; nothing was written") from None
        psnr_before = loop.eval_psnr()
        scores = loop.score(**model.strategy.pass_options(step))
        mask = model.strategy.prune_mask(model.gauss_params, scores)
        saved = torch.load(ckpt, map_location="cpu")
        optimizers = self._saved_optimizers(model, saved.get("optimizers", {}))
        event = prune(model.gauss_params, optimizers, model.strategy_state, mask, step, self.method)
        model.prune_events.append(event)
        psnr_after = loop.eval_psnr()
        saved["optimizers"] = {**saved.get("optimizers", {}), **{k: o.state_dict() for k, o in optimizers.items()}}
        out, run_dir = self._write(config, pipeline, step, ckpt, saved)
        fmt = lambda v: "absent" if v is None else f"{v:.2f} dB"  # noqa: E731
        print(f"argp-ns prune ({self.method}): {n_before:,} -> {model.num_points:,} Gaussians "
              f"({100.0 * model.num_points / n_before:.1f}%); eval PSNR {fmt(psnr_before)} -> {fmt(psnr_after)}")
        if self.finetune_steps:
            tuned = self._finetune(out)
            print(f"argp-ns prune: fine-tuned {self.finetune_steps} steps: {tuned.model.num_points:,} Gaussians; "
                  f"eval PSNR {fmt(psnr_after)} -> {fmt(tuned.pruning.eval_psnr())}")
        print(f"  new run: {run_dir / 'config.yml'}")
        return run_dir

    @staticmethod
    def _saved_optimizers(model, saved) -> dict:
        """One Adam per Gaussian parameter, holding the run's saved state (moments, learning rate) where present."""
        optimizers = {}
        for name, param in model.gauss_params.items():
            optimizers[name] = torch.optim.Adam([param], lr=0.0)
            if name in saved:
                optimizers[name].load_state_dict(saved[name])
        return optimizers

    def _finetune(self, out: TrainerConfig):
        """Resume the written run (densification and the prune step already over: see :meth:`_write`) with
        nerfstudio's Trainer for ``finetune_steps`` steps, checkpoints into the same run."""
        ft = copy.deepcopy(out)
        ft.load_dir = out.get_checkpoint_dir()
        ft.max_num_iterations = self.finetune_steps
        ft.vis = "tensorboard"
        trainer = ft.setup(local_rank=0, world_size=1)
        trainer.setup()
        trainer.train()
        return trainer.pipeline

    def _write(self, config: TrainerConfig, pipeline, step: int, ckpt: Path, saved: dict):
        """The new run (config.yml, dataparser transforms, checkpoint); a failed write leaves no output folder."""
        out = as_argp_config(copy.deepcopy(config))
        out.pipeline = as_pruning_pipeline(out.pipeline)
        out.method_name = "splatfacto-safeguard"
        out.output_dir = self.output_dir
        out.timestamp = "pruned"
        out.load_dir = None
        # densification and the prune are over at the loaded step: a resume (--finetune-steps) neither grows nor prunes
        out.pipeline.model.stop_split_at = min(out.pipeline.model.stop_split_at, step)
        out.pipeline.model.prune_step = step
        run_dir = out.get_base_dir()
        ckpt_dir = out.get_checkpoint_dir()
        try:
            ckpt_dir.mkdir(parents=True)
            TrainerConfig.save_config(out)  # nerfstudio's writer: the training checks (device, schedule) are not for a written prune
            transforms = self.load_config.parent / "dataparser_transforms.json"
            if transforms.exists():
                shutil.copy(transforms, run_dir / transforms.name)
            torch.save({"step": step, "pipeline": pipeline.state_dict(), "optimizers": saved["optimizers"],
                        "schedulers": saved.get("schedulers", {}), "scalers": saved.get("scalers", {})}, ckpt_dir / ckpt.name)
        except OSError as err:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            raise PosthocError(f"cannot write the new run in {self.output_dir} ({err}); nothing was left") from None
        return out, run_dir
