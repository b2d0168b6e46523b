"""What argp_ns takes from torch beyond its public API, and the torch it was written for: 2.11 to 2.14.

* ``torch._fused_adam_``: the kernel that ``torch.optim.Adam(fused=True)`` runs for a parameter group, after
  ``torch._foreach_add_`` of the group's step counts (``torch.optim.adam._fused_adam``). :mod:`argp_ns.train_step`
  calls it for all of nerfstudio's optimizers in one host call each, without ``Optimizer.step``'s Python around it.
* ``torch.optim.optimizer``'s global step hooks and an optimizer's own (``_optimizer_step_pre_hooks`` /
  ``_optimizer_step_post_hooks``): that call skips them, so it is only taken where none is registered.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim import optimizer as _optimizer_module

WRITTEN_FOR = ("2.11", "2.14")
"""The torch releases these internals were read from (both have the same ``_fused_adam_`` signature)."""

__all__ = ["WRITTEN_FOR", "AdamCall", "fused_adam_steps", "has_step_hooks"]

AdamCall = Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor], List[Tensor], float, float, float, float]
"""One parameter group's fused Adam step: (params, grads, exp_avgs, exp_avg_sqs, step counts, lr, beta1, beta2, eps)."""


def fused_adam_steps(calls: Sequence[AdamCall]) -> None:
    """One Adam step of each group, in place, as ``Adam(fused=True).step()`` makes it: every step count t += 1 (one
    ``_foreach_add_`` for all groups), then per group, without weight decay, amsgrad or maximise,
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, ``p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``."""
    steps = [step for call in calls for step in call[4]]
    if steps:
        torch._foreach_add_(steps, 1)
    for params, grads, exp_avgs, exp_avg_sqs, group_steps, lr, beta1, beta2, eps in calls:
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], group_steps, amsgrad=False, lr=lr, beta1=beta1,
                           beta2=beta2, weight_decay=0.0, eps=eps, maximize=False, grad_scale=None, found_inf=None)


def has_step_hooks(optimizer: Optimizer) -> bool:
    """Whether a step hook is registered for every optimizer or for this one (``Optimizer.step`` would run it)."""
    return bool(_optimizer_module._global_optimizer_pre_hooks or _optimizer_module._global_optimizer_post_hooks
                or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks)
