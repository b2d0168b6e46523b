"""The three moves of 3D Gaussian Splatting as Markov Chain Monte Carlo (Kheradmand et al. 2024), in plain torch.

They follow gsplat 1.4.0's ``relocate``, ``sample_add`` and ``inject_noise_to_position`` (``gsplat/strategy/ops.py``),
written here so that one implementation runs on the CPU (gsplat's relocation and covariance kernels are CUDA only)
and on the GPU. One difference: a relocated row's Adam moments are zeroed at its new place as well as at its source
(gsplat 1.4.0 zeroes the source only, so a teleported Gaussian keeps the stale moments of the dead one it replaces).

Relocation (the paper's Eq. 9): a Gaussian of opacity o and scales s that is split into N copies gives each copy
``o' = 1 - (1 - o)^(1/N)`` and ``s' = o s / D``, with
``D = sum_{i=1}^{N} sum_{k=0}^{i-1} C(i-1, k) (-1)^k / sqrt(k + 1) o'^(k+1)``, so that the copies together render
as the original did.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

N_MAX = 51
"""Copies of one Gaussian that one move may make (gsplat's binomial table: ratios are clamped to it)."""
EPS = torch.finfo(torch.float32).eps


def relocation_table(n_max: int = N_MAX) -> Tensor:
    """``B[N, k] = sum_{i=k+1}^{N} C(i-1, k) (-1)^k / sqrt(k+1)`` [n_max + 1, n_max], float64: the coefficient of
    ``o'^(k+1)`` in D for N copies (D's double sum with the order of summation swapped)."""
    table = torch.zeros(n_max + 1, n_max, dtype=torch.float64)
    for n in range(1, n_max + 1):
        table[n] = table[n - 1]
        for k in range(n):
            table[n, k] += math.comb(n - 1, k) * (-1) ** k / math.sqrt(k + 1)
    return table


_TABLES: Dict[str, Tensor] = {}


def relocation(opacities: Tensor, scales: Tensor, ratios: Tensor) -> tuple:
    """(o', s') of each Gaussian split into ``ratios`` copies (clamped to 1..N_MAX), by the formula above.
    opacities [M], scales [M, 3] (activated), ratios [M] ints; computed in float64, returned in the inputs' dtype."""
    key = str(opacities.device)
    if key not in _TABLES:
        _TABLES[key] = relocation_table().to(opacities.device)
    n = ratios.long().clamp(1, N_MAX)
    o = opacities.double()
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n.double())
    powers = new_o[:, None] ** torch.arange(1, N_MAX + 1, device=o.device, dtype=torch.float64)[None, :]
    denom = (_TABLES[key][n] * powers).sum(-1)
    new_s = (o / denom)[:, None] * scales.double()
    return new_o.to(opacities.dtype), new_s.to(scales.dtype)


def update_rows(params, optimizers: Dict[str, torch.optim.Optimizer], param_fn: Callable[[str, Tensor], Tensor],
                moment_fn: Callable[[Tensor], Tensor]) -> None:
    """Replace every parameter p by ``param_fn(name, p)`` and every per-row optimizer state v (Adam's moments) by
    ``moment_fn(v)``, keeping each optimizer pointed at the new Parameter."""
    for name in list(params.keys()):
        old = params[name]
        new = torch.nn.Parameter(param_fn(name, old.data), requires_grad=old.requires_grad)
        params[name] = new
        opt = optimizers.get(name)
        if opt is None:
            continue
        group = opt.param_groups[0]
        state = opt.state.pop(group["params"][0], {})
        for key, v in state.items():
            if key != "step" and isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == old.shape[0]:
                state[key] = moment_fn(v)
        group["params"] = [new]
        opt.state[new] = state


def _sample(weights: Tensor, n: int, generator: Optional[torch.Generator]) -> Tensor:
    """n indices drawn with replacement in proportion to ``weights``."""
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _split(params, sampled: Tensor, min_opacity: float) -> Callable[[str, Tensor], Tensor]:
    """A copy-maker for :func:`update_rows`: parameter ``name``'s tensor with the sampled rows' opacity and scales
    replaced by their relocated values, each row split into (its draws + 1) copies (other parameters unchanged)."""
    opacities = torch.sigmoid(params["opacities"].flatten())
    ratios = torch.bincount(sampled, minlength=opacities.numel())[sampled] + 1
    new_o, new_s = relocation(opacities[sampled], torch.exp(params["scales"])[sampled], ratios)
    logit_o, log_s = torch.logit(new_o.clamp(min=min_opacity, max=1.0 - EPS)), torch.log(new_s)

    def split(name: str, p: Tensor) -> Tensor:
        p = p.clone()
        if name == "opacities":
            p[sampled] = logit_o.view(-1, *p.shape[1:])
        elif name == "scales":
            p[sampled] = log_s
        return p

    return split


@torch.no_grad()
def relocate(params, optimizers, dead: Tensor, min_opacity: float, generator: Optional[torch.Generator] = None) -> int:
    """Teleport the ``dead`` Gaussians onto live ones drawn in proportion to opacity: each drawn Gaussian and its
    copies take the relocated opacity and scales; the moments of both rows are zeroed. Returns how many moved."""
    dead_idx = torch.nonzero(dead).squeeze(1)
    alive_idx = torch.nonzero(~dead).squeeze(1)
    if dead_idx.numel() == 0 or alive_idx.numel() == 0:
        return 0
    weights = torch.sigmoid(params["opacities"].flatten())[alive_idx]
    sampled = alive_idx[_sample(weights, dead_idx.numel(), generator)]
    split = _split(params, sampled, min_opacity)
    touched = torch.cat([sampled, dead_idx])

    def param_fn(name: str, p: Tensor) -> Tensor:
        p = split(name, p)
        p[dead_idx] = p[sampled]
        return p

    def moment_fn(v: Tensor) -> Tensor:
        v = v.clone()
        v[touched] = 0
        return v

    update_rows(params, optimizers, param_fn, moment_fn)
    return int(dead_idx.numel())


@torch.no_grad()
def add(params, optimizers, n: int, min_opacity: float, generator: Optional[torch.Generator] = None) -> int:
    """Append n Gaussians, copies of ones drawn in proportion to opacity (with their relocated opacity and scales;
    the drawn rows take them too); the new rows' moments are zero. Returns n."""
    if n <= 0:
        return 0
    sampled = _sample(torch.sigmoid(params["opacities"].flatten()), n, generator)
    split = _split(params, sampled, min_opacity)

    def param_fn(name: str, p: Tensor) -> Tensor:
        p = split(name, p)
        return torch.cat([p, p[sampled]])

    update_rows(params, optimizers, param_fn, lambda v: torch.cat([v, v.new_zeros((n, *v.shape[1:]))]))
    return n


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``R diag(s)^2 R^T`` [N, 3, 3] from (unnormalised) quaternions (w, x, y, z) and scales."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).view(-1, 3, 3)
    M = R * scales[:, None, :]
    return M @ M.transpose(1, 2)


@torch.no_grad()
def inject_noise(params, scaler: float, generator: Optional[torch.Generator] = None) -> None:
    """The MCMC position noise: ``mu += Sigma (eps * g(1 - o) * scaler)``, eps ~ N(0, I),
    ``g(x) = 1 / (1 + exp(-100 (x - 0.995)))`` (only near-transparent Gaussians move far), Sigma the covariance."""
    means = params["means"]
    opacities = torch.sigmoid(params["opacities"].flatten())
    gate = torch.sigmoid(100.0 * ((1.0 - opacities) - 0.995))
    eps = torch.randn(means.shape, device=means.device, dtype=means.dtype, generator=generator)
    noise = eps * gate[:, None] * scaler
    cov = covariances(params["quats"], torch.exp(params["scales"]))
    means.add_(torch.einsum("bij,bj->bi", cov, noise))
