"""The lean training step of the pruning methods: splatfacto's loss in one fused pass, and fused Adam stepped for
all parameter groups at once (:class:`FusedOptimizers`).

The loss is exactly splatfacto's ``(1 - lambda) L1 + lambda (1 - SSIM)``, with pytorch_msssim's SSIM (11-tap
Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1, valid filtering, the mean over channels and
positions; a dimension shorter than the window is not filtered, as pytorch_msssim does). On CUDA it runs as
the kernels of ``argp_ns/cuda/fused_loss.cu`` on the [H, W, 3] images as they come (six launches forward and
backward instead of about sixty, no layout conversion); elsewhere, or where they cannot build, as
:func:`loss_reference`. Both also return the mean squared error for the PSNR metric, so no separate metric
pass runs, and nothing here reads a value back to the host.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from nerfstudio.engine.optimizers import AdamOptimizerConfig, Optimizers
from torch import Tensor

from argp_ns import torch_compat
from argp_ns.cuda import loss as kernel

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


@functools.lru_cache(maxsize=None)
def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> Tensor:
    """The normalised 1-D Gaussian window, float32 on the CPU: ``g_t = exp(-(t - size//2)^2 / (2 sigma^2)) / sum``."""
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: Tensor, win: Tensor) -> Tensor:
    """Valid separable filtering of [1, C, H, W] along H then W (a dimension shorter than the window is skipped)."""
    c = x.shape[1]
    for dim in (2, 3):
        if x.shape[dim] >= win.numel():
            shape = [1, 1, 1, 1]
            shape[dim] = win.numel()
            x = F.conv2d(x, win.view(shape).expand(c, 1, *shape[2:]).to(x), groups=c)
    return x


def ssim_reference(gt: Tensor, render: Tensor) -> Tensor:
    """pytorch_msssim's SSIM of two [H, W, 3] images (see the module doc): the mean of
    ``(2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_xx + s_yy + C2))`` over channels and positions."""
    x, y = gt.permute(2, 0, 1)[None].contiguous(), render.permute(2, 0, 1)[None].contiguous()
    win = gaussian_window()
    c1, c2 = K1**2, K2**2
    mu_x, mu_y = _filter(x, win), _filter(y, win)
    s_xx = _filter(x * x, win) - mu_x**2
    s_yy = _filter(y * y, win) - mu_y**2
    s_xy = _filter(x * y, win) - mu_x * mu_y
    cs = (2 * s_xy + c2) / (s_xx + s_yy + c2)
    return (((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * cs).mean()


def loss_reference(gt: Tensor, render: Tensor, lam: float) -> Tuple[Tensor, Tensor]:
    """(``(1 - lam) mean|render - gt| + lam (1 - SSIM)``, detached [l1, ssim, mse]) in PyTorch."""
    diff = render - gt
    l1 = diff.abs().mean()
    ssim = ssim_reference(gt, render)
    stats = torch.stack([l1, ssim, (diff * diff).mean()]).detach()
    return (1 - lam) * l1 + lam * (1 - ssim), stats


class _FusedLoss(torch.autograd.Function):
    """The CUDA loss: forward gives [loss, l1, ssim, mse]; only the render gets a gradient."""

    @staticmethod
    def forward(ctx, gt: Tensor, render: Tensor, lam: float) -> Tuple[Tensor, Tensor]:  # type: ignore[override]
        out, parts = kernel.forward(gt, render, gaussian_window(), lam, render.requires_grad)
        ctx.save_for_backward(gt, render, parts)
        ctx.lam = lam
        stats = out[1:]
        ctx.mark_non_differentiable(stats)
        return out[0], stats

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_stats: Optional[Tensor]):  # type: ignore[override]
        gt, render, parts = ctx.saved_tensors
        grad = kernel.backward(gt, render, parts, gaussian_window(), grad_loss.reshape(1).float().contiguous(), ctx.lam)
        return None, grad, None


def fused_applies(render: Tensor) -> bool:
    """Whether the CUDA loss runs for this render: a CUDA [H, W, 3] image at least a window wide, kernels built."""
    return (render.is_cuda and render.dim() == 3 and render.shape[-1] == 3 and min(render.shape[:2]) >= WINDOW
            and kernel.available())


def training_loss(gt: Tensor, render: Tensor, lam: float) -> Tuple[Tensor, Tensor]:
    """splatfacto's main loss of an [H, W, 3] render against its ground truth, and detached [l1, ssim, mse]:
    the fused CUDA kernels where :func:`fused_applies`, else :func:`loss_reference` (the same values)."""
    if fused_applies(render):
        loss, stats = _FusedLoss.apply(gt.float().contiguous(), render.float().contiguous(), float(lam))
        return loss, stats
    return loss_reference(gt, render, lam)


def psnr_from_mse(mse: Tensor) -> Tensor:
    """PSNR of images in [0, 1]: ``-10 log10(mse)`` (torchmetrics' PeakSignalNoiseRatio with data range 1)."""
    return -10.0 * torch.log10(mse)


def scale_regularisation(log_scales: Tensor, max_ratio: float) -> Tensor:
    """splatfacto's scale regulariser: ``0.1 mean(max(s_max / s_min, r) - r)``, s = exp(log_scales), r = max_ratio."""
    s = torch.exp(log_scales)
    return 0.1 * (torch.clamp_min(s.amax(dim=-1) / s.amin(dim=-1), max_ratio) - max_ratio).mean()


def fused_supported(params) -> bool:
    """Whether torch's fused Adam takes these parameters: floating point, all on CUDA or all on the CPU
    (torch >= 2.4 fuses there too)."""
    params = [p for p in params if isinstance(p, Tensor)]
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cuda", "cpu"} and all(p.is_floating_point() for p in params)


@dataclass
class FusedAdamOptimizerConfig(AdamOptimizerConfig):
    """nerfstudio's Adam config with ``fused=True`` where the parameters allow it (one kernel per step
    instead of six foreach passes); the same update rule, state and checkpoints as Adam."""

    _target: Type = torch.optim.Adam
    fused: bool = True
    """Use torch's fused Adam implementation where the parameters' device supports it."""

    def setup(self, params) -> torch.optim.Optimizer:
        params = list(params)
        kwargs = {k: v for k, v in vars(self).items() if k not in ("_target", "max_norm", "fused")}
        flat = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        return self._target(params, fused=True if self.fused and fused_supported(flat) else None, **kwargs)


def adam_call(optimizer: torch.optim.Optimizer) -> Optional[torch_compat.AdamCall]:
    """The fused Adam kernel call that ``optimizer.step()`` would make, or None where the optimizer is anything else:
    not torch's fused Adam, AdamW, amsgrad, weight decay, maximise, capturable, differentiable, a tensor learning
    rate, a step hook, a parameter without its state yet (the first step initialises it), or a sparse gradient.
    Parameters without a gradient are left out, as ``Adam.step`` leaves them (an empty call: nothing to step)."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1 or torch_compat.has_step_hooks(optimizer):
        return None
    group = optimizer.param_groups[0]
    if (not group.get("fused") or group.get("amsgrad") or group.get("weight_decay") or group.get("maximize")
            or group.get("capturable") or group.get("differentiable") or group.get("decoupled_weight_decay")
            or not isinstance(group["lr"], float)):
        return None
    params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        state = optimizer.state.get(p)
        if not state or p.grad.is_sparse:
            return None
        params.append(p)
        grads.append(p.grad)
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        steps.append(state["step"])
    beta1, beta2 = group["betas"]
    return params, grads, exp_avgs, exp_avg_sqs, steps, group["lr"], float(beta1), float(beta2), float(group["eps"])


class FusedOptimizers(Optimizers):
    """nerfstudio's ``Optimizers`` whose step over its parameter groups is one call into torch's fused Adam kernel
    per group (:func:`argp_ns.torch_compat.fused_adam_steps`, after one increment of every group's step count)
    instead of one ``Adam.step`` each, and whose zero_grad sets the gradients to None directly, as
    ``Optimizer.zero_grad`` does: the same update, state and checkpoints as ``torch.optim.Adam(fused=True)``. The
    step falls back to nerfstudio's own where any group is not fused Adam (:func:`adam_call`), clips its gradients
    (``max_norm``) or the grad scaler is on (mixed precision)."""

    def zero_grad_some(self, param_groups: List[str]) -> None:
        """Set the gradients of the named groups' parameters to None (``Optimizer.zero_grad(set_to_none=True)``)."""
        for name in param_groups:
            for group in self.optimizers[name].param_groups:
                for p in group["params"]:
                    p.grad = None

    def optimizer_scaler_step_some(self, grad_scaler: torch.amp.GradScaler, param_groups: List[str]) -> None:
        """Step the named groups: in one batch of fused Adam calls where each allows it, else nerfstudio's loop."""
        calls = None if grad_scaler.is_enabled() else [self._adam_call(name) for name in param_groups]
        if calls is None or any(call is None for call in calls):
            return super().optimizer_scaler_step_some(grad_scaler, param_groups)
        torch_compat.fused_adam_steps([call for call in calls if call[0]])

    def _adam_call(self, name: str) -> Optional[torch_compat.AdamCall]:
        """The group's fused Adam call (:func:`adam_call`), None also where the group clips its gradients."""
        return adam_call(self.optimizers[name]) if self.config[name]["optimizer"].max_norm is None else None
