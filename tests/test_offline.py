"""Offline machines: LPIPS is absent, never faked; checkpoints with numpy scalars load under weights_only."""

import io

import numpy as np
import pytest
import torch

from argp_ns import compat


def test_checkpoint_with_numpy_scalars_loads_safely():
    buf = io.BytesIO()
    torch.save({"lr": np.float64(0.1), "step": 3, "t": torch.ones(2), "dt": np.dtype("float64")}, buf)
    buf.seek(0)
    out = torch.load(buf, weights_only=True)
    assert out["lr"] == 0.1 and out["step"] == 3


class Evil:
    """Not on the allowlist."""


def test_arbitrary_globals_still_refused():
    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    buf.seek(0)
    with pytest.raises(Exception):
        torch.load(buf, weights_only=True)


@pytest.mark.skipif(compat.lpips_available(), reason="pretrained LPIPS weights are cached here")
def test_stock_splatfacto_builds_offline_without_lpips():
    from nerfstudio.models.splatfacto import SplatfactoModelConfig
    from nerfstudio.data.scene_box import SceneBox

    model = SplatfactoModelConfig(num_random=100).setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=4, metadata={})
    assert isinstance(model.lpips, compat.UnavailableLPIPS)
    model.eval()
    img = torch.rand(8, 8, 4)
    out = {"rgb": torch.rand(8, 8, 3), "background": torch.zeros(3)}
    metrics, _ = model.get_image_metrics_and_images(out, {"image": img})
    assert "lpips" not in metrics and "psnr" in metrics and "ssim" in metrics
