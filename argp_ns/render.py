"""Rendering: splatfacto's ``get_outputs`` for every model here, with gsplat on CUDA and the PyTorch twin on the CPU.

:func:`render_outputs` is nerfstudio 1.1.5's ``SplatfactoModel.get_outputs`` with these differences only:

1. the rasterizer is :func:`rasterize` (gsplat's ``rasterization`` on CUDA tensors, :func:`argp_ns.twin.rasterization`
   otherwise; splatfacto calls gsplat's, which has no CPU path);
2. the rows the strategy blocks (:meth:`argp_ns.strategy.ArgpStrategy.blocked`: IRP candidates in the frozen and
   hidden modes) get no gradient in training, and no opacity when the strategy hides them;
3. a training view's world-to-camera matrix, intrinsics and size are made once and kept (:class:`ViewCache`) while
   the camera optimizer is off: splatfacto builds them each step on the host, reading values back from the device;
4. the output resolution is scaled on the intrinsics, without ``Cameras.rescale_output_resolution`` changing the
   camera (so the cached view stays valid).
Everything else (crop box, SH degree schedule, background, bilateral grid, depth, the strategy's pre-backward hook)
is splatfacto's, in its order.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from argp_ns import twin


def rasterize(**kwargs: Any) -> Tuple[Tensor, Tensor, Dict]:
    """``gsplat.rasterization(**kwargs)`` on the GPU; :func:`argp_ns.twin.rasterization` on the CPU."""
    if kwargs["means"].is_cuda:
        from gsplat.rendering import rasterization

        return rasterization(**kwargs)
    return twin.rasterization(**kwargs)


def viewmat_from_c2w(c2w: Tensor) -> Tensor:
    """World-to-camera [C,4,4] from nerfstudio camera-to-world [C,3,4] (OpenGL axes -> OpenCV axes)."""
    R = torch.cat([c2w[:, :3, :1], -c2w[:, :3, 1:3]], dim=2)  # y and z axes flipped; no host-to-device copy
    R_inv = R.transpose(1, 2)
    out = torch.eye(4, device=c2w.device, dtype=c2w.dtype).repeat(c2w.shape[0], 1, 1)
    out[:, :3, :3] = R_inv
    out[:, :3, 3:] = -R_inv @ c2w[:, :3, 3:4]
    return out


class ViewCache:
    """Per training view (its ``cam_idx``): (world-to-camera [1, 4, 4], intrinsics [1, 3, 3]) on the device and its
    full (W, H) on the host, made once: ``get_intrinsics_matrices`` builds K on the host, reading fx, fy, cx, cy back
    from the device, and the size would be read back each step."""

    def __init__(self) -> None:
        self.matrices: Dict[int, Tuple[Tensor, Tensor]] = {}
        self.sizes: Dict[int, Tensor] = {}

    def view_matrices(self, camera: Cameras, c2w: Tensor, training: bool, fixed_pose: bool, device) -> Tuple[Tensor, Tensor]:
        """(viewmat, K); a training view's pair is kept while its pose and intrinsics are fixed (``fixed_pose``)."""
        idx = (camera.metadata or {}).get("cam_idx")
        if not (training and idx is not None and fixed_pose):
            return viewmat_from_c2w(c2w), camera.get_intrinsics_matrices().to(device)
        if idx not in self.matrices:
            self.matrices[idx] = (viewmat_from_c2w(c2w), camera.get_intrinsics_matrices().to(device))
        return self.matrices[idx]

    def render_size(self, camera: Cameras, scale: int, training: bool) -> Tuple[int, int]:
        """(W, H) of the render at downscale ``scale`` (``Cameras.rescale_output_resolution``'s arithmetic, on the host)."""
        idx = (camera.metadata or {}).get("cam_idx")
        size = self.sizes.get(idx) if training else None
        if size is None:
            size = torch.stack([camera.width.reshape(-1)[0], camera.height.reshape(-1)[0]]).cpu()
            if training and idx is not None:
                self.sizes[idx] = size
        if scale != 1:
            size = (size * (1 / scale)).to(torch.int64)
        w, h = size.tolist()
        return int(w), int(h)


def gate_blocked(params: Dict[str, Tensor], opacities: Tensor, blocked: Optional[Tensor], hide: bool):
    """Rows in ``blocked`` get no gradient (``x.detach()`` there) and, with ``hide``, zero opacity."""
    if blocked is None or blocked.numel() != opacities.numel():
        return params, opacities
    gate = lambda x: torch.where(blocked.view(-1, *([1] * (x.dim() - 1))), x.detach(), x)  # noqa: E731
    params = {k: gate(v) for k, v in params.items()}
    opacities = gate(opacities)
    if hide:
        opacities = torch.where(blocked, torch.zeros_like(opacities), opacities)
    return params, opacities


def render_outputs(model, camera: Cameras) -> Dict[str, Union[Tensor, List]]:
    """splatfacto's forward pass for ``model`` (a :class:`argp_ns.model.PruningModel`); see the module docstring."""
    if not isinstance(camera, Cameras):
        return {}
    c = model.config
    if model.training:
        assert camera.shape[0] == 1, "Only one camera at a time"
        c2w = model.camera_optimizer.apply_to_camera(camera)
    else:
        c2w = camera.camera_to_worlds
    crop = None
    if model.crop_box is not None and not model.training:
        crop = model.crop_box.within(model.means).squeeze()
        if crop.sum() == 0:
            return model.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), model.background_color)
    params = {k: (v if crop is None else v[crop]) for k, v in model.gauss_params.items()}
    opacities = torch.sigmoid(params["opacities"]).squeeze(-1)
    if model.training:
        blocked = model.strategy.blocked(model.strategy_state)
        params, opacities = gate_blocked(params, opacities, blocked, model.strategy.hides_blocked)
    colors = torch.cat((params["features_dc"][:, None, :], params["features_rest"]), dim=1)
    scale = model._get_downscale_factor()
    viewmat, K = model.views.view_matrices(camera, c2w, model.training, model.camera_optimizer.config.mode == "off", model.device)
    if scale != 1:  # Cameras.rescale_output_resolution(1 / scale), without changing the camera
        K = K.clone()
        K[..., :2, :] *= 1 / scale
    W, H = model.views.render_size(camera, scale, model.training)
    model.last_size = (H, W)
    if c.rasterize_mode not in ("antialiased", "classic"):
        raise ValueError(f"Unknown rasterize_mode: {c.rasterize_mode}")
    render_mode = "RGB+ED" if c.output_depth_during_training or not model.training else "RGB"
    if c.sh_degree > 0:
        sh_degree: Optional[int] = min(model.step // c.sh_degree_interval, c.sh_degree)
    else:
        colors, sh_degree = torch.sigmoid(colors).squeeze(1), None
    rgb, alpha, model.info = rasterize(
        means=params["means"], quats=params["quats"], scales=torch.exp(params["scales"]), opacities=opacities,
        colors=colors, viewmats=viewmat, Ks=K, width=W, height=H, packed=False, near_plane=0.01, far_plane=1e10,
        render_mode=render_mode, sh_degree=sh_degree, sparse_grad=False, absgrad=model.strategy.absgrad,
        rasterize_mode=c.rasterize_mode,
    )
    if model.training:
        model.strategy.step_pre_backward(model.gauss_params, model.optimizers, model.strategy_state, model.step, model.info)
    background = model._get_background_color()
    out_rgb = torch.clamp(rgb[..., :3] + (1 - alpha) * background, 0.0, 1.0)
    if c.use_bilateral_grid and model.training and camera.metadata and "cam_idx" in camera.metadata:
        out_rgb = model._apply_bilateral_grid(out_rgb, camera.metadata["cam_idx"], H, W)
    depth = None
    if render_mode == "RGB+ED":
        depth = torch.where(alpha > 0, rgb[..., 3:4], rgb[..., 3:4].detach().max()).squeeze(0)
    if background.shape[0] == 3 and not model.training:
        background = background.expand(H, W, 3)
    return {"rgb": out_rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}
