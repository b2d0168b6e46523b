"""The plugin registers both methods with nerfstudio and their configs build."""

import dataclasses
import subprocess

import pytest
import tyro

from argp_ns.datamanager import LeanDatamanagerConfig
from argp_ns.model import SplatfactoArgpModelConfig, SplatfactoMcmcModelConfig, SplatfactoSafeguardModelConfig


def test_entry_points_discovered():
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    assert methods["splatfacto-argp"].method_name == "splatfacto-argp"
    assert methods["splatfacto-safeguard"].method_name == "splatfacto-safeguard"
    assert isinstance(methods["splatfacto-argp"].pipeline.model, SplatfactoArgpModelConfig)
    assert isinstance(methods["splatfacto-safeguard"].pipeline.model, SplatfactoSafeguardModelConfig)
    assert "ARGP" in descriptions["splatfacto-argp"]
    assert isinstance(methods["splatfacto-mcmc"].pipeline.model, SplatfactoMcmcModelConfig)
    assert "MCMC" in descriptions["splatfacto-mcmc"]


def test_configs_match_splatfacto():
    from nerfstudio.configs.method_configs import all_methods

    from argp_ns.method_config import ARGP_MEANS_LR_FINAL

    base = all_methods["splatfacto"]
    for name in ("splatfacto-argp", "splatfacto-safeguard", "splatfacto-mcmc"):
        cfg = all_methods[name]
        assert cfg.max_num_iterations == base.max_num_iterations
        assert set(cfg.optimizers) == set(base.optimizers)
        for key, opt in base.optimizers.items():
            assert cfg.optimizers[key]["optimizer"].lr == opt["optimizer"].lr
            if opt["scheduler"] is not None:  # the same schedules, but for ARGP's slower position decay
                ours_s, theirs_s = cfg.optimizers[key]["scheduler"], opt["scheduler"]
                slower = name == "splatfacto-argp" and key == "means"
                assert ours_s.lr_final == (ARGP_MEANS_LR_FINAL if slower else theirs_s.lr_final), (name, key)
                assert ours_s.max_steps == theirs_s.max_steps
        ours, theirs = cfg.pipeline.datamanager, base.pipeline.datamanager
        assert type(ours) is LeanDatamanagerConfig and isinstance(ours, type(theirs))  # the lean step's datamanager
        for f in dataclasses.fields(theirs):  # with splatfacto's settings
            if f.name not in ("_target", "dataparser"):
                assert getattr(ours, f.name) == getattr(theirs, f.name), f.name
        assert type(ours.dataparser) is type(theirs.dataparser) and ours.dataparser == theirs.dataparser


def test_ns_train_help_lists_methods():
    out = subprocess.run(["ns-train", "--help"], capture_output=True, text=True, check=True).stdout
    assert "splatfacto-argp" in out and "splatfacto-safeguard" in out


@pytest.mark.parametrize(
    "method,field,value",
    [("splatfacto-argp", "irp_mode", "frozen"), ("splatfacto-argp", "mark_ratio", "0.5"), ("splatfacto-argp", "irp_preset", "earlier"),
     ("splatfacto-argp", "prune_quantile", "0.02"), ("splatfacto-argp", "aop_opacity_floor", "0.0"),
     ("splatfacto-safeguard", "top_k", "4"),
     ("splatfacto-safeguard", "prune_method", "radsplat"), ("splatfacto-safeguard", "topk_scope", "tile")],
)
def test_flags_exposed(method, field, value):
    from nerfstudio.configs.method_configs import all_methods

    default = all_methods[method]
    cfg = tyro.cli(type(default), default=default, args=[f"--pipeline.model.{field.replace('_', '-')}", value])
    assert str(getattr(cfg.pipeline.model, field)) == value


@pytest.mark.parametrize("args,ratios", [
    ([], (0.7, 0.5)), (["--pipeline.model.irp-preset", "released"], (0.7, 0.4)),
    (["--pipeline.model.irp-preset", "earlier"], (0.5, 0.35)),
    (["--pipeline.model.irp-preset", "earlier", "--pipeline.model.mark-ratio", "0.6"], (0.6, 0.35)),
])
def test_irp_presets_and_overrides(args, ratios):
    from nerfstudio.configs.method_configs import all_methods

    default = all_methods["splatfacto-argp"]
    assert tyro.cli(type(default), default=default, args=args).pipeline.model.irp_ratios() == ratios


@pytest.mark.parametrize("args,reset", [([], 0.2), (["--pipeline.model.reset-opacity-value", "0.01"], 0.01)])
def test_opacity_reset_value_reaches_the_strategy(args, reset):
    """gsplat's DefaultStrategy resets opacities to 2 * prune_opa; the flag sets that value."""
    import torch
    from nerfstudio.configs.method_configs import all_methods
    from nerfstudio.data.scene_box import SceneBox

    default = all_methods["splatfacto-argp"]
    cfg = tyro.cli(type(default), default=default, args=args).pipeline.model
    cfg.random_init, cfg.num_random = True, 500
    model = cfg.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])), num_train_data=4, metadata={},
                      device="cpu")
    assert model.strategy.prune_opa * 2 == pytest.approx(reset) and model.num_points == 500
