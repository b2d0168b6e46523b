"""The lean step's datamanager: the same views in the same order as nerfstudio's, each camera made once; the score
pass's views made one at a time."""

import copy
from collections.abc import Iterator

import pytest
import torch
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

from argp_ns.datamanager import LeanDatamanager, LeanDatamanagerConfig
from argp_ns.method_config import splatfacto_safeguard


def setup(config_cls, scene, device):
    config = config_cls(dataparser=BlenderDataParserConfig(data=scene), cache_images_type="uint8")
    return config.setup(device=device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_same_views_in_the_same_order_as_nerfstudio(demo_scene, device):
    stock, lean = setup(FullImageDatamanagerConfig, demo_scene, device), setup(LeanDatamanagerConfig, demo_scene, device)
    assert isinstance(lean, LeanDatamanager)
    n = len(lean.train_dataset)
    seen = {}
    for step in range(3 * n + 2):  # past two epoch boundaries: the sampler's new orders
        (cam_a, data_a), (cam_b, data_b) = stock.next_train(step), lean.next_train(step)
        idx = cam_b.metadata["cam_idx"]
        assert cam_a.metadata["cam_idx"] == idx
        assert torch.equal(data_a["image"], data_b["image"]) and data_a["image_idx"] == data_b["image_idx"] == idx
        for name in ("camera_to_worlds", "fx", "fy", "cx", "cy", "width", "height", "camera_type"):
            assert torch.equal(getattr(cam_a, name), getattr(cam_b, name)), name
        assert seen.setdefault(idx, cam_b) is cam_b  # made once, handed out again
        assert cam_b.device.type == data_b["image"].device.type == device
    assert len(seen) == n
    assert lean.train_cameras.metadata is None or "cam_idx" not in lean.train_cameras.metadata


def test_our_methods_train_on_it():
    from nerfstudio.configs.method_configs import all_methods

    for name in ("splatfacto-argp", "splatfacto-safeguard", "splatfacto-argp-big", "splatfacto-safeguard-big", "splatfacto-mcmc"):
        assert type(all_methods[name].pipeline.datamanager) is LeanDatamanagerConfig
    assert type(all_methods["splatfacto"].pipeline.datamanager) is FullImageDatamanagerConfig  # stock: untouched


def test_score_pass_views_are_made_one_at_a_time(demo_scene):
    """The model's score-pass views come one at a time (a float image per view only while the pass is on it) and
    are the training views with their cached images, in order."""
    config = copy.deepcopy(splatfacto_safeguard.config.pipeline)
    config.datamanager.dataparser = BlenderDataParserConfig(data=demo_scene)
    config.datamanager.cache_images_type = "uint8"
    pipeline = config.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    views = pipeline.pruning.training_views()  # the pruning loop beside the model feeds the score pass
    assert isinstance(views, Iterator) and not isinstance(views, (list, tuple))
    cached = pipeline.datamanager.cached_train
    seen = 0
    for i, view in enumerate(views):
        expected = cached[i]["image"].float() / 255.0
        assert view.image.shape[:2] == expected.shape[:2] == (view.height, view.width)
        assert torch.allclose(view.image, pipeline.model.composite_with_background(expected, view.background))
        seen += 1
    assert seen == len(pipeline.datamanager.train_dataset)


def test_a_top_k_that_keeps_every_seen_gaussian_says_so(demo_scene, capsys):
    """A score pass whose top-k keeps every Gaussian some pixel sees says so in one line (the round can then remove
    only unseen ones); top-1 does not. The twin's cost does not grow with k (it sorts each pixel's whole list)."""
    from argp_ns.scores import ScoreSpec

    config = copy.deepcopy(splatfacto_safeguard.config.pipeline)
    config.datamanager.dataparser = BlenderDataParserConfig(data=demo_scene)
    config.datamanager.cache_images_type = "uint8"
    pipeline = config.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    for k, says in ((1, False), (100_000, True)):
        totals = pipeline.pruning.score(ScoreSpec(), k=k, tile_scope=False, recovery=False)
        line = f"argp_ns: top-{k} keeps every Gaussian a pixel sees ({int((totals['hits'] > 0).sum()):,})"
        assert (line in capsys.readouterr().out) is says
