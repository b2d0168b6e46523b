"""The nerfstudio methods (the two pruning methods, their -big variants, and the MCMC baseline), registered through the ``nerfstudio.method_configs`` entry point.

All are built like nerfstudio's ``splatfacto`` (the same datamanager settings, optimizers, schedules, 30k steps);
the model config differs, and ``splatfacto-argp``'s position learning rate decays to :data:`ARGP_MEANS_LR_FINAL`.
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.splatfacto import SplatfactoModelConfig
from nerfstudio.plugins.types import MethodSpecification

from argp_ns.datamanager import LeanDatamanagerConfig
from argp_ns.model import SplatfactoArgpModelConfig, SplatfactoMcmcModelConfig, SplatfactoSafeguardModelConfig
from argp_ns.pipeline import PruningPipelineConfig
from argp_ns.train_step import FusedAdamOptimizerConfig
from argp_ns.trainer import ArgpTrainerConfig


def splatfacto_optimizers(max_steps: int = 30000) -> dict:
    """splatfacto's optimizers and schedules (nerfstudio 1.1.5 method_configs), with torch's fused Adam."""
    adam = lambda lr: FusedAdamOptimizerConfig(lr=lr, eps=1e-15)  # noqa: E731
    warm = lambda lr, final: ExponentialDecaySchedulerConfig(lr_final=final, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0)  # noqa: E731
    return {
        "means": {"optimizer": adam(1.6e-4), "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps)},
        "features_dc": {"optimizer": adam(0.0025), "scheduler": None},
        "features_rest": {"optimizer": adam(0.0025 / 20), "scheduler": None},
        "opacities": {"optimizer": adam(0.05), "scheduler": None},
        "scales": {"optimizer": adam(0.005), "scheduler": None},
        "quats": {"optimizer": adam(0.001), "scheduler": None},
        "camera_opt": {"optimizer": adam(1e-4), "scheduler": warm(1e-4, 5e-7)},
        "bilateral_grid": {"optimizer": adam(2e-3), "scheduler": warm(2e-3, 1e-4)},
    }


def splatfacto_trainer(method_name: str, model: SplatfactoModelConfig) -> TrainerConfig:
    """A TrainerConfig shaped like nerfstudio's ``splatfacto`` around ``model`` (checked before the run folder is written)."""
    return ArgpTrainerConfig(
        method_name=method_name,
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=30000,
        mixed_precision=False,
        pipeline=PruningPipelineConfig(
            datamanager=LeanDatamanagerConfig(
                dataparser=NerfstudioDataParserConfig(load_3D_points=True), cache_images_type="uint8"
            ),
            model=model,
        ),
        optimizers=splatfacto_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


ARGP_MEANS_LR_FINAL = 1.6e-5
"""splatfacto-argp's last position learning rate (``--optimizers.means.scheduler.lr-final``): 10x splatfacto's 1.6e-6,
so the position lr falls 10x over training instead of 100x. After each IRP deletion the survivors have to move into
the gaps, and under splatfacto's decay the lr at the rounds (40-73 % of training) is already 1/6-1/29 of its start.
Bonsai quick, 2 runs each: +0.15 dB at the default count, +0.13 to +0.19 dB at 10-20 % budgets; stock splatfacto
gains 0.06 dB with it (benchmarks/README.md, "Position learning rate")."""


def argp_trainer(method_name: str, model: SplatfactoArgpModelConfig) -> TrainerConfig:
    """:func:`splatfacto_trainer` with :data:`ARGP_MEANS_LR_FINAL`."""
    config = splatfacto_trainer(method_name, model)
    config.optimizers["means"]["scheduler"].lr_final = ARGP_MEANS_LR_FINAL
    return config


splatfacto_argp = MethodSpecification(
    config=argp_trainer("splatfacto-argp", SplatfactoArgpModelConfig()),
    description="splatfacto + ARGP: adaptive opacity pruning and iterative recovery pruning (~15% of the Gaussians).",
)

splatfacto_safeguard = MethodSpecification(
    config=splatfacto_trainer("splatfacto-safeguard", SplatfactoSafeguardModelConfig()),
    description="splatfacto + SafeguardGS: one pixel-level top-k prune (or LightGaussian/Mini-Splatting/RadSplat/EfficientGS).",
)

splatfacto_mcmc = MethodSpecification(
    config=splatfacto_trainer("splatfacto-mcmc", SplatfactoMcmcModelConfig()),
    description="splatfacto + gsplat's MCMC densification under a hard cap (--pipeline.model.budget N): the baseline.",
)


def splatfacto_big_trainer(method_name: str, model: SplatfactoModelConfig) -> TrainerConfig:
    """:func:`splatfacto_trainer` with the rest of nerfstudio's ``splatfacto-big`` changes: the bilateral grid's
    learning rate 5e-3. Its model fields (cull_alpha_thresh 0.005, densify_grad_thresh 0.0005) are set on ``model``."""
    config = splatfacto_trainer(method_name, model)
    config.optimizers["bilateral_grid"]["optimizer"].lr = 5e-3
    return config


# splatfacto-big resets opacities to 2 x cull_alpha_thresh = 0.01 and culls below 0.005; ARGP sets the reset value
# directly and keeps the cull as AOP's floor
splatfacto_argp_big = MethodSpecification(
    config=splatfacto_big_trainer("splatfacto-argp-big", SplatfactoArgpModelConfig(
        cull_alpha_thresh=0.005, densify_grad_thresh=0.0005, reset_opacity_value=0.01, aop_opacity_floor=0.005)),
    description="splatfacto-argp on splatfacto-big's settings (denser growth, opacity reset to 0.01, AOP floor 0.005).",
)

splatfacto_safeguard_big = MethodSpecification(
    config=splatfacto_big_trainer("splatfacto-safeguard-big", SplatfactoSafeguardModelConfig(
        cull_alpha_thresh=0.005, densify_grad_thresh=0.0005)),
    description="splatfacto-safeguard on splatfacto-big's settings (denser growth, opacity cull 0.005).",
)
