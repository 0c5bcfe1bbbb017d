"""The learning rate of every step, for each schedule, with and without warmup."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from finetune_trainer.config import Scheduler, TrainingSpec
from finetune_trainer.optim import build_optimizer, learning_rate

PEAK = 1e-3


def rates(kind: Scheduler, total: int, warmup: int) -> list[float]:
    return [learning_rate(step, total, PEAK, warmup, kind) for step in range(total)]


def test_constant_without_warmup_is_flat() -> None:
    assert rates(Scheduler.constant, 10, 0) == [PEAK] * 10


def test_warmup_rises_linearly_to_the_peak() -> None:
    values = rates(Scheduler.constant, 10, 4)
    assert values[:4] == pytest.approx([PEAK / 4, PEAK / 2, 3 * PEAK / 4, PEAK])
    assert values[4:] == [PEAK] * 6


def test_linear_decays_to_zero_after_warmup() -> None:
    values = rates(Scheduler.linear, 12, 2)
    decay = values[2:]
    assert decay[0] == pytest.approx(PEAK)
    assert all(later < earlier for earlier, later in itertools.pairwise(decay))
    steps = [b - a for a, b in itertools.pairwise(decay)]
    assert max(steps) == pytest.approx(min(steps))
    assert decay[-1] == pytest.approx(PEAK / 10)


def test_cosine_is_half_at_the_middle_and_monotonic() -> None:
    total, warmup = 21, 1
    values = rates(Scheduler.cosine, total, warmup)
    middle = warmup + (total - warmup) // 2
    assert values[middle] == pytest.approx(PEAK / 2)
    assert all(later <= earlier for earlier, later in itertools.pairwise(values[1:]))
    assert values[-1] == pytest.approx(PEAK * 0.5 * (1 + math.cos(math.pi * (total - 1 - warmup) / (total - warmup))))


def test_optimizer_takes_the_recipe() -> None:
    training = TrainingSpec.model_validate({"adamBetas": [0.8, 0.9], "adamEpsilon": 1e-6, "weightDecay": 0.1})
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), training, torch.device("cpu"))
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.9)
    assert group["eps"] == 1e-6
    assert group["weight_decay"] == 0.1
