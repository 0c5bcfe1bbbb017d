"""The per-step record: what the trainer logs for every optimizer step, and what everyone else reads.

One type for one thing: the trainer writes it (to Prometheus, to `metrics.jsonl`, to the console), `finetune
local` reads it back from the JSONL file, and the early-stopping policy judges a series of them (built from
Prometheus samples or a direct scrape, where a metric may be missing: None). JSONL lines carry a `kind`
(step, eval, event), the job identity labels, and for steps every field below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

KIND: Final = "kind"
KIND_STEP: Final = "step"
KIND_EVAL: Final = "eval"
KIND_EVENT: Final = "event"


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step, globally reduced (rank 0 logs it after the all-reduce).

    `loss` / `grad_norm` are None only where a reader could not observe them (a scrape that missed a series);
    the trainer always sets them (NaN when the step was non-finite). `time` is when the step was logged or
    observed (unix seconds). `tokens` are loss-counted tokens (what the loss averages over). `phase` is the
    training phase of phased training (`stacked` for one-phase runs), never the job's lifecycle phase.
    """

    step: int
    loss: float | None
    grad_norm: float | None
    time: float | None = None
    total_steps: int = 0
    learning_rate: float | None = None
    samples: int = 0
    tokens: int = 0
    step_duration_seconds: float = 0.0
    epoch: int = 0
    phase: str = ""
    micro_steps: int = 1

    def to_json(self) -> dict[str, Any]:
        """The JSONL payload (the writer adds the identity labels)."""
        return {KIND: KIND_STEP, **asdict(self)}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> StepRecord:
        """A record read back from JSONL; fields a writer left out take their defaults."""
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in record.items() if key in known}
        for key in ("loss", "grad_norm", "learning_rate", "time"):
            if values.get(key) is not None:
                values[key] = float(values[key])
        for key in ("step", "total_steps", "samples", "tokens", "epoch", "micro_steps"):
            if key in values:
                values[key] = int(values[key])
        values.setdefault("loss", None)
        values.setdefault("grad_norm", None)
        return cls(**values)

    @property
    def finite(self) -> bool:
        """Loss and grad norm both observed and finite."""
        return all(value is not None and math.isfinite(value) for value in (self.loss, self.grad_norm))


def is_step(record: Mapping[str, Any]) -> bool:
    return record.get(KIND) == KIND_STEP
