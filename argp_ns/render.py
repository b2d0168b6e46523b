"""Rasterizer dispatch: gsplat's CUDA ``rasterization`` for CUDA tensors, the PyTorch twin otherwise."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from torch import Tensor

from argp_ns import twin


def rasterize(**kwargs: Any) -> Tuple[Tensor, Tensor, Dict]:
    """``gsplat.rasterization(**kwargs)`` on the GPU; :func:`argp_ns.twin.rasterization` on the CPU."""
    if kwargs["means"].is_cuda:
        from gsplat.rendering import rasterization

        return rasterization(**kwargs)
    return twin.rasterization(**kwargs)
