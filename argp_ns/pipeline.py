"""The pipeline of this plugin's methods: nerfstudio's ``VanillaPipeline`` with a :class:`argp_ns.pruning.PruningLoop`
beside its model, whose callbacks run around the model's own after each training step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Type

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from argp_ns.pruning import PruningLoop


@dataclass
class PruningPipelineConfig(VanillaPipelineConfig):
    """nerfstudio's pipeline config, building a :class:`PruningPipeline`."""

    _target: Type = field(default_factory=lambda: PruningPipeline)


class PruningPipeline(VanillaPipeline):
    """``VanillaPipeline`` whose training callbacks are the datamanager's and the model's wrapped by the pruning loop
    (:meth:`argp_ns.pruning.PruningLoop.wrap`)."""

    def __init__(self, config: PruningPipelineConfig, device: str, **kwargs: Any) -> None:
        super().__init__(config, device, **kwargs)
        self.pruning = PruningLoop(self.model, self.datamanager)

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        self.pruning.run_dir = attrs.trainer.base_dir
        self.pruning.report.method = attrs.trainer.config.method_name
        return self.pruning.wrap(super().get_training_callbacks(attrs))


def as_pruning_pipeline(config: VanillaPipelineConfig) -> PruningPipelineConfig:
    """The same pipeline settings as a :class:`PruningPipelineConfig` (config.yml files of earlier releases hold
    nerfstudio's ``VanillaPipelineConfig``)."""
    if isinstance(config, PruningPipelineConfig):
        return config
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(VanillaPipelineConfig) if f.init and f.name != "_target"}
    return PruningPipelineConfig(**values)
