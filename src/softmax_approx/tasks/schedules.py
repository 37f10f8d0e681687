"""Learning-rate schedules, as ``_partial_`` targets of the ``scheduler`` config node.

``BaseTask.configure_optimizers`` calls ``scheduler(optimizer=..., total_steps=...)`` and steps
it every optimizer step. All three are ``torch.optim.lr_scheduler.LambdaLR`` with a factor of
the step: warm-up then linear decay has no single built-in (``SequentialLR`` of two ``LinearLR``
warns and re-steps at the milestone), and one function is easier to check against a table.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from softmax_approx.utils.errors import ConfigError


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up to the base learning rate over ``warmup_steps``, then linear decay to 0."""
    warmup_steps = max(0, min(int(warmup_steps), max(int(total_steps) - 1, 0)))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(total_steps - warmup_steps, 1)
        return max(0.0, 1.0 - (step - warmup_steps) / remaining)

    return LambdaLR(optimizer, factor)


def constant_lr(optimizer: torch.optim.Optimizer, total_steps: int | None = None, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up over ``warmup_steps`` (0: none), then the base learning rate unchanged.

    With ``warmup_steps=0`` it equals no scheduler; it exists so a task file can pick "no
    schedule" for one profile from a table column (a column cannot remove the node).
    """
    warmup_steps = max(0, int(warmup_steps))
    return LambdaLR(optimizer, lambda step: (step + 1) / warmup_steps if step < warmup_steps else 1.0)


def inverse_sqrt(optimizer: torch.optim.Optimizer, total_steps: int | None = None, warmup_steps: int = 4000) -> LambdaLR:
    """fairseq's ``inverse_sqrt``: lr = base_lr * min(n / warmup, sqrt(warmup / n)).

    ``n`` is the number of the update being taken (1 for the first), so the first update uses
    base_lr / warmup rather than fairseq's 0 (its ``warmup_init_lr`` default). ``total_steps``
    is accepted for the harness's scheduler signature and ignored: the schedule never ends.
    """
    if int(warmup_steps) < 1:
        raise ConfigError(f"scheduler.warmup_steps={warmup_steps}: inverse_sqrt needs >= 1 (use scheduler=null for a constant lr)")
    warmup = int(warmup_steps)

    def factor(step: int) -> float:
        n = step + 1
        return min(n / warmup, math.sqrt(warmup / n))

    return LambdaLR(optimizer, factor)
