"""AdamW and the learning-rate schedule.

The schedule is a pure function of the optimizer step, so a resumed run needs no scheduler state and a test can
check every step's rate without running a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from finetune_trainer.config import Scheduler, TrainingSpec


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, kind: Scheduler) -> float:
    """The rate for optimizer step `step` (0-based): linear warmup to `peak`, then constant/linear/cosine to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if kind == Scheduler.constant:
        return peak
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == Scheduler.linear:
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    params: Iterable[torch.nn.Parameter], training: TrainingSpec, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with the recipe's betas, epsilon and decoupled weight decay (fused kernels on CUDA)."""
    beta1, beta2 = training.adam_betas
    return torch.optim.AdamW(
        [param for param in params if param.requires_grad],
        lr=training.learning_rate,
        betas=(beta1, beta2),
        eps=training.adam_epsilon,
        weight_decay=training.weight_decay,
        fused=device.type == "cuda",
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value
