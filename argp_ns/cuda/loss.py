"""The fused training loss kernels (``fused_loss.cu`` + ``loss_bindings.cpp``), JIT-built on first use as
``argp_ns_loss`` like the score pass. :mod:`argp_ns.train_step` holds the formula, the PyTorch reference and
the autograd function that calls :func:`forward` and :func:`backward`."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from argp_ns.cuda import load_extension

NAME = "argp_ns_loss"
_SOURCES = ("loss_bindings.cpp", "fused_loss.cu")


def unavailable_reason() -> Optional[str]:
    """None if the kernels can be used, else a one-line reason. The first call on a CUDA machine builds them."""
    return load_extension(NAME, _SOURCES)[1]


def available() -> bool:
    """Whether :func:`forward` and :func:`backward` can run (a CUDA device, nvcc, a successful build)."""
    return unavailable_reason() is None


def forward(gt: Tensor, render: Tensor, window: Tensor, lam: float, grad: bool) -> Tuple[Tensor, Tensor]:
    """([loss, l1, ssim, mse] float32 on the render's device, the SSIM partials [3, H-10, W-10, 3] or empty).
    ``gt``, ``render``: contiguous float32 CUDA [H, W, 3], H and W >= 11; ``window``: the 11 taps, CPU float32."""
    out, parts = load_extension(NAME, _SOURCES)[0].forward(gt, render, window, lam, grad)
    return out, parts


def backward(gt: Tensor, render: Tensor, parts: Tensor, window: Tensor, grad_out: Tensor, lam: float) -> Tensor:
    """dLoss/drender [H, W, 3], scaled by ``grad_out`` (one float32 CUDA value; read on the device, no sync)."""
    return load_extension(NAME, _SOURCES)[0].backward(gt, render, parts, window, grad_out, lam)
