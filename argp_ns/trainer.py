"""nerfstudio's TrainerConfig and Trainer for our methods: a bad input ends in one line and leaves no run folder.

``ns-train`` (nerfstudio's ``scripts/train.py`` ``main``) calls ``config.save_config()``, which makes the run
folder, before it builds the Trainer. :meth:`ArgpTrainerConfig.save_config` first checks the device, the data
path, the checkpoint a resume loads (the newest intact one, an unreadable newer one skipped with one line) and
our model flags against the run's length (:mod:`argp_ns.checks`). A failure in :meth:`ArgpTrainer.setup` (a
data file missing, a flag refused by the model) removes the run folder this process made, while it holds no
checkpoint. A Ctrl-C during training stops after the step under way, saves a checkpoint (the model with its
pruning state, the optimizers, the schedulers) and says in one line how to resume; a second Ctrl-C quits at once.
Loading one of our runs from its config.yml (``ns-eval``, ``ns-export``, ``ns-viewer``,
``argp-ns prune``) makes nerfstudio's ``eval_setup`` check the run's checkpoint before ``torch.load``, and checks
the output paths of the ``ns-eval`` or ``ns-export`` loading it before the pipeline is built. The optimizers
step as one batch (:class:`argp_ns.train_step.FusedOptimizers`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Type

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from argp_ns.checks import (CHECKPOINT, ConfigError, check_dataset, check_device, check_eval_output, check_export_dir,
                            check_model, check_run_data, check_writable, checkpoint_readable, resolve_checkpoint, unreadable)
from argp_ns.compat import guard_eval_checkpoints, remove_new_export_dir, running_script
from argp_ns.model import LeanModelConfig
from argp_ns.pipeline import as_pruning_pipeline
from argp_ns.train_step import FusedOptimizers

RESUME_HINT = "ARGP_NS_RESUME_HINT"
"""Environment variable: how to resume, said in the one line a Ctrl-C ends training with, in place of the ns-train
flags (``argp-ns demo`` sets it: its own rerun continues)."""


def interrupt_line(step: int, checkpoint_dir: Path, left: int) -> str:
    """The one line a Ctrl-C ends training with: the step saved, where, and how to resume (:data:`RESUME_HINT`'s
    text when set, else the ns-train flags that train the ``left`` steps to the planned end)."""
    resume = os.environ.get(RESUME_HINT) or f"resume with the same ns-train command plus --load-dir {checkpoint_dir} --max-num-iterations {left}"
    return f"argp_ns: interrupted after step {step}; checkpoint saved in {checkpoint_dir}; {resume}"


_CHECKED: "weakref.WeakValueDictionary[int, ArgpTrainerConfig]" = weakref.WeakValueDictionary()
"""The configs :meth:`ArgpTrainerConfig.checked` has checked, by id."""
_NEW_RUN_DIRS: Dict[Path, Path] = {}
"""Run folder -> the outermost folder that :meth:`ArgpTrainerConfig.save_config` created for it in this process."""


def fail(err: ConfigError) -> SystemExit:
    """The one-line exit for a bad input."""
    return SystemExit(f"argp_ns: {err}")


@dataclass
class ArgpTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig, checked before the run folder is written."""

    _target: Type = field(default_factory=lambda: ArgpTrainer)

    def check(self) -> None:
        """Device, the run folder can be made, the dataset (parsed by nerfstudio's dataparser, every image's header), resume checkpoint and model
        flags; raises :class:`ConfigError`."""
        check_device(self.machine.device_type)
        try:
            check_writable(self.get_base_dir())
        except ConfigError as err:
            raise ConfigError(f"ns-train --output-dir: {err}; choose another --output-dir") from None
        datamanager = self.pipeline.datamanager
        check_dataset(datamanager.dataparser, datamanager.data or datamanager.dataparser.data)
        check_model(self.pipeline.model, self.first_step() + self.max_num_iterations, self.machine.device_type)

    def first_step(self) -> int:
        """The run's first step: 0, or one past the checkpoint a resume loads. With ``load_dir``, that is the
        newest intact checkpoint (or ``load_step``'s); it is set as ``load_step`` for nerfstudio's loader."""
        if self.load_dir is not None:
            step, path, skipped = resolve_checkpoint(self.load_dir, self.load_step, fall_back=True)
            if skipped:
                CONSOLE.print(f"argp_ns: {', '.join(p.name for p in skipped)} unreadable (corrupt or truncated); "
                              f"resuming from {path}", markup=False, soft_wrap=True)
            self.load_step = step
            return step + 1
        if self.load_checkpoint is not None:
            if not checkpoint_readable(self.load_checkpoint):
                raise ConfigError(unreadable(self.load_checkpoint))
            named = CHECKPOINT.match(Path(self.load_checkpoint).name)
            return int(named.group(1)) + 1 if named else 0
        return 0

    def checked(self) -> None:
        """:meth:`check` once per config object (``ns-train`` prints the config, then saves it); a failure exits in
        one line (:func:`fail`)."""
        if _CHECKED.get(id(self)) is self:
            return
        try:
            self.check()
        except ConfigError as err:
            raise fail(err) from None
        _CHECKED[id(self)] = self

    def print_to_terminal(self) -> None:
        """nerfstudio's config dump, after the checks: a bad input is one line, not the dump and then the line."""
        self.checked()
        super().print_to_terminal()

    def save_config(self) -> None:
        """Check everything, then write the run folder and its config.yml (nerfstudio's), remembering which
        folders this made."""
        self.checked()
        base = self.get_base_dir().absolute()
        outermost = base
        while not outermost.parent.exists():
            outermost = outermost.parent
        made = not base.exists()
        # config.yml names no checkpoint step: ns-eval and ns-export then load the run's newest checkpoint (a resume's
        # starting checkpoint is deleted by its first save when only the latest is kept)
        load_step, self.load_step = self.load_step, None
        try:
            super().save_config()
        finally:
            self.load_step = load_step
        if made:
            _NEW_RUN_DIRS[base] = outermost

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """Loading a run's config.yml (PyYAML and copy call this): arm the checkpoint check of ``eval_setup`` and
        check the outputs of the ``ns-eval`` or ``ns-export`` that loads it, before it builds the pipeline."""
        self.__dict__.update(state)
        if isinstance(self.pipeline.model, LeanModelConfig):  # config.yml of an earlier release: nerfstudio's pipeline
            self.pipeline = as_pruning_pipeline(self.pipeline)
        guard_eval_checkpoints(check_loaded_checkpoint)
        check_script_outputs(self)


class ArgpTrainer(Trainer):
    """nerfstudio's Trainer; a failed setup removes the run folder this process made (while it holds no checkpoint)."""

    config: ArgpTrainerConfig

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        try:
            super().setup(test_mode=test_mode)
        except OSError as err:  # a data file missing or unreadable
            self.remove_new_run_dir()
            where = f"{err.strerror}: {err.filename}" if err.filename else str(err)
            raise SystemExit(f"argp_ns: {where}") from None
        except BaseException:
            self.remove_new_run_dir()
            raise

    def setup_optimizers(self) -> FusedOptimizers:
        """nerfstudio's optimizers of the pipeline's parameter groups, stepped as one batch (FusedOptimizers)."""
        return FusedOptimizers(self.config.optimizers.copy(), self.pipeline.get_param_groups())

    def train(self) -> None:
        """nerfstudio's training loop. The first Ctrl-C asks to stop: the step under way ends, a checkpoint of the last
        finished step is saved and one line says how to resume (a non-zero exit); a second Ctrl-C quits at once."""
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            return super().train()
        self._stop_asked = False
        self.callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._stop_if_asked))

        def ask_to_stop(signum, frame) -> None:
            self._stop_asked = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C: KeyboardInterrupt at once
            CONSOLE.print("argp_ns: Ctrl-C: stopping after this step to save a checkpoint (Ctrl-C again to quit at once)",
                          markup=False)

        previous = signal.signal(signal.SIGINT, ask_to_stop)
        try:
            super().train()
        except _StopAsked as stop:
            raise SystemExit(self._save_on_stop(stop.step)) from None
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop_if_asked(self, step: int) -> None:
        """Before a step: after a Ctrl-C, stop here (the step before it is the last one done)."""
        if self._stop_asked:
            raise _StopAsked(step - 1)

    def _save_on_stop(self, step: int) -> str:
        """Save the checkpoint of ``step`` (the last finished one) and return the one line that ends the run."""
        if step < self._start_step:
            return "argp_ns: interrupted before the first step; nothing to save"
        self.save_checkpoint(step)
        left = self._start_step + self.config.max_num_iterations - (step + 1)  # a resume trains max_num_iterations more
        return interrupt_line(step, self.checkpoint_dir, left)

    def remove_new_run_dir(self) -> None:
        """Remove the run folder (and the parents made with it) if this process made it and it holds no checkpoint."""
        base = self.base_dir.absolute()
        outermost = _NEW_RUN_DIRS.get(base)
        if outermost is None or any(self.checkpoint_dir.glob("*.ckpt")):
            return
        shutil.rmtree(outermost, ignore_errors=True)
        del _NEW_RUN_DIRS[base]


class _StopAsked(Exception):
    """Raised between two steps after a Ctrl-C; ``step`` is the last finished step."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


def as_argp_config(config: TrainerConfig) -> ArgpTrainerConfig:
    """The same settings as an :class:`ArgpTrainerConfig` (for runs written by ``argp-ns prune``)."""
    if isinstance(config, ArgpTrainerConfig):
        return config
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainerConfig) if f.init and f.name != "_target"}
    return ArgpTrainerConfig(**values)


def check_loaded_checkpoint(config) -> None:
    """Before nerfstudio's ``eval_load_checkpoint`` (wrapped by :func:`compat.guard_eval_checkpoints`): for our runs,
    a missing or unreadable checkpoint ends in one line instead of torch's traceback, and the empty folder ns-export
    made is removed."""
    if isinstance(config, ArgpTrainerConfig):
        try:
            resolve_checkpoint(config.load_dir, config.load_step, fall_back=False)
        except ConfigError as err:
            remove_new_export_dir()
            raise fail(err) from None


def check_script_outputs(config: "ArgpTrainerConfig") -> None:
    """For ``ns-eval`` (``--output-path``, ``--render-output-path``) and ``ns-export`` (``--output-dir``) loading one
    of our runs: a path that cannot be written, or the run's dataset no longer where it was, ends in one line before
    the pipeline is built."""
    script = running_script()
    try:
        if hasattr(script, "output_path"):
            check_eval_output(script.output_path, getattr(script, "render_output_path", None))
        elif hasattr(script, "output_dir"):
            check_export_dir(script.output_dir, getattr(script, "output_filename", None))
    except ConfigError as err:  # a file or a folder that cannot be written: neither is one ns-export just made
        raise fail(err) from None
    if script is not None:
        try:
            check_run_data(config.pipeline.datamanager, getattr(script, "load_config", None))
        except ConfigError as err:
            remove_new_export_dir()
            raise fail(err) from None
