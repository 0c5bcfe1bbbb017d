"""Training metrics behind one interface, with Prometheus, JSONL and console backends.

Only rank 0 logs, and only globally reduced values: the trainer reduces before it calls `log_step`, so every
backend sees the same numbers and Prometheus never scrapes a rank-local view. The series names are the
contract with the operator's early-stopping policy and the dashboards (ARCHITECTURE.md, Metrics).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from finetune_contract import names
from finetune_contract.checkpoints import METRICS_FILE
from finetune_contract.records import KIND, KIND_EVAL, KIND_EVENT, StepRecord


@dataclass(frozen=True)
class Identity:
    """The FineTuneJob a run belongs to; the operator selects its series by these labels."""

    finetunejob: str
    namespace: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Identity:
        source = os.environ if env is None else env
        return cls(source.get(names.ENV_JOB_NAME, "local"), source.get(names.ENV_JOB_NAMESPACE, "local"))

    def labels(self) -> dict[str, str]:
        return {names.LABEL_JOB: self.finetunejob, names.LABEL_NAMESPACE: self.namespace}


class MetricLogger(Protocol):
    """What the trainer needs from any backend."""

    def log_step(self, record: StepRecord) -> None: ...

    def log_eval(self, step: int, loss: float) -> None: ...

    def log_event(self, event: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


class PrometheusLogger:
    """Serves /metrics over HTTP. Counters for samples/tokens (so tokens/s is rate()), gauges for the rest."""

    def __init__(self, identity: Identity, port: int, addr: str = "0.0.0.0", total_steps: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.labels = identity.labels()
        labels = list(names.IDENTITY_LABELS)
        gauges = {
            "loss": (names.METRIC_LOSS, "Training loss: token-weighted mean over the effective batch."),
            "grad_norm": (names.METRIC_GRAD_NORM, "Global L2 norm of the gradients before clipping."),
            "lr": (names.METRIC_LEARNING_RATE, "Learning rate of the last optimizer step."),
            "step": (names.METRIC_STEP, "Optimizer steps completed."),
            "total": (names.METRIC_TOTAL_STEPS, "Optimizer steps of the whole run."),
            "duration": (names.METRIC_STEP_DURATION, "Wall time of the last optimizer step."),
            "eval": (names.METRIC_EVAL_LOSS, "Evaluation loss (token-weighted mean over the eval split)."),
            "epoch": (names.METRIC_EPOCH, "Current epoch (0-based) within the current phase."),
        }
        self.gauges = {key: Gauge(name, doc, labels, registry=self.registry) for key, (name, doc) in gauges.items()}
        self.phase = Gauge(
            names.METRIC_TRAINING_PHASE,
            "1 for the training phase being trained.",
            [*labels, names.LABEL_TRAINING_PHASE],
            registry=self.registry,
        )
        self.samples = Counter(names.METRIC_SAMPLES, "Samples trained on.", labels, registry=self.registry)
        self.tokens = Counter(names.METRIC_TOKENS, "Loss-counted tokens trained on.", labels, registry=self.registry)
        self.nonfinite = Counter(
            names.METRIC_NONFINITE_STEPS, "Steps with NaN/Inf loss or gradient norm.", labels, registry=self.registry
        )
        self.gauges["total"].labels(**self.labels).set(total_steps)
        self.server, self.thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = self.server.server_port
        self._current_phase: str | None = None

    def log_step(self, record: StepRecord) -> None:
        values = {
            "loss": record.loss,
            "grad_norm": record.grad_norm,
            "lr": record.learning_rate,
            "step": record.step,
            "total": record.total_steps,
            "duration": record.step_duration_seconds,
            "epoch": record.epoch,
        }
        for key, value in values.items():
            self.gauges[key].labels(**self.labels).set(math.nan if value is None else value)
        self.samples.labels(**self.labels).inc(record.samples)
        self.tokens.labels(**self.labels).inc(record.tokens)
        if not record.finite:
            self.nonfinite.labels(**self.labels).inc()
        self._set_phase(record.phase)

    def _set_phase(self, phase: str) -> None:
        if phase == self._current_phase:
            return
        if self._current_phase is not None:
            self.phase.labels(**self.labels, **{names.LABEL_TRAINING_PHASE: self._current_phase}).set(0)
        self.phase.labels(**self.labels, **{names.LABEL_TRAINING_PHASE: phase}).set(1)
        self._current_phase = phase

    def log_eval(self, step: int, loss: float) -> None:
        self.gauges["eval"].labels(**self.labels).set(loss)

    def log_event(self, event: str, **fields: Any) -> None:
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class JsonlLogger:
    """The same records as Prometheus, one JSON object per line, next to the checkpoints (kept after the pod)."""

    def __init__(self, path: Path, identity: Identity) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.identity = identity.labels()
        self.file = path.open("a", encoding="utf-8")

    def _write(self, kind: str, payload: dict[str, Any]) -> None:
        line = {KIND: kind, "time": time.time(), **self.identity, **payload}
        self.file.write(json.dumps(line, allow_nan=True) + "\n")
        self.file.flush()

    def log_step(self, record: StepRecord) -> None:
        payload = record.to_json()
        self._write(payload.pop(KIND), payload)

    def log_eval(self, step: int, loss: float) -> None:
        self._write(KIND_EVAL, {"step": step, "eval_loss": loss})

    def log_event(self, event: str, **fields: Any) -> None:
        self._write(KIND_EVENT, {"event": event, **fields})

    def close(self) -> None:
        self.file.close()


class ConsoleLogger:
    """A live progress line on a terminal; one structured line per step otherwise (pod logs)."""

    def __init__(self, stream: TextIO = sys.stderr, interactive: bool | None = None) -> None:
        self.stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self.started = time.monotonic()
        self.first_step: int | None = None

    def log_step(self, record: StepRecord) -> None:
        if self.first_step is None:
            self.first_step = record.step - 1
        tokens_per_s = record.tokens / record.step_duration_seconds if record.step_duration_seconds > 0 else 0.0
        eta = self._eta(record)
        text = (
            f"step {record.step}/{record.total_steps} loss {_shown(record.loss, '.4f')} "
            f"grad_norm {_shown(record.grad_norm, '.4f')} lr {_shown(record.learning_rate, '.3g')} "
            f"tok/s {tokens_per_s:,.0f} eta {eta} phase {record.phase}"
        )
        if self.interactive:
            self.stream.write("\r\033[K" + text)
            if record.step == record.total_steps:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _eta(self, record: StepRecord) -> str:
        done = record.step - (self.first_step or 0)
        if done <= 0:
            return "?"
        remaining = (time.monotonic() - self.started) / done * (record.total_steps - record.step)
        minutes, seconds = divmod(int(remaining), 60)
        return f"{minutes}m{seconds:02d}s"

    def log_eval(self, step: int, loss: float) -> None:
        self.stream.write(("\n" if self.interactive else "") + f"eval step {step} loss {loss:.4f}\n")

    def log_event(self, event: str, **fields: Any) -> None:
        details = " ".join(f"{key}={value}" for key, value in fields.items())
        self.stream.write(("\n" if self.interactive else "") + f"{event} {details}".rstrip() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class MultiLogger:
    """Fans every call out to several backends."""

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        self.loggers = list(loggers)

    def log_step(self, record: StepRecord) -> None:
        for logger in self.loggers:
            logger.log_step(record)

    def log_eval(self, step: int, loss: float) -> None:
        for logger in self.loggers:
            logger.log_eval(step, loss)

    def log_event(self, event: str, **fields: Any) -> None:
        for logger in self.loggers:
            logger.log_event(event, **fields)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def build_logger(
    rank: int,
    output_dir: Path,
    port: int | None,
    total_steps: int,
    identity: Identity | None = None,
    addr: str = "0.0.0.0",
) -> MetricLogger:
    """All backends on rank 0 (port None or 0 = no HTTP endpoint); nothing on other ranks."""
    if rank != 0:
        return MultiLogger([])
    who = identity or Identity.from_env()
    loggers: list[MetricLogger] = [ConsoleLogger(), JsonlLogger(output_dir / METRICS_FILE, who)]
    if port:
        loggers.append(PrometheusLogger(who, port, addr=addr, total_steps=total_steps))
    return MultiLogger(loggers)


def _shown(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)
