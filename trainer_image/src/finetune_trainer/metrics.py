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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

ENV_JOB_NAME = "FINETUNE_JOB_NAME"
ENV_JOB_NAMESPACE = "FINETUNE_JOB_NAMESPACE"
ENV_METRICS_PORT = "FINETUNE_METRICS_PORT"
IDENTITY_LABELS = ("finetunejob", "namespace")


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step, globally reduced. `tokens` are loss-counted tokens (what the loss averages over)."""

    step: int
    total_steps: int
    loss: float
    grad_norm: float
    learning_rate: float
    samples: int
    tokens: int
    step_duration_seconds: float
    epoch: int
    phase: str
    micro_steps: int = 1
    time: float = 0.0


@dataclass(frozen=True)
class Identity:
    """The FineTuneJob a run belongs to; the operator selects its series by these labels."""

    finetunejob: str
    namespace: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Identity:
        source = os.environ if env is None else env
        return cls(source.get(ENV_JOB_NAME, "local"), source.get(ENV_JOB_NAMESPACE, "local"))

    def labels(self) -> dict[str, str]:
        return {"finetunejob": self.finetunejob, "namespace": self.namespace}


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
        names = list(IDENTITY_LABELS)
        gauges = {
            "loss": ("finetune_train_loss", "Training loss: token-weighted mean over the effective batch."),
            "grad_norm": ("finetune_grad_norm", "Global L2 norm of the gradients before clipping."),
            "lr": ("finetune_learning_rate", "Learning rate of the last optimizer step."),
            "step": ("finetune_optimizer_step", "Optimizer steps completed."),
            "total": ("finetune_total_steps", "Optimizer steps of the whole run."),
            "duration": ("finetune_step_duration_seconds", "Wall time of the last optimizer step."),
            "eval": ("finetune_eval_loss", "Evaluation loss (token-weighted mean over the eval split)."),
            "epoch": ("finetune_epoch", "Current epoch (0-based) within the current phase."),
        }
        self.gauges = {key: Gauge(name, doc, names, registry=self.registry) for key, (name, doc) in gauges.items()}
        self.phase = Gauge(
            "finetune_phase", "1 for the phase being trained.", [*names, "phase"], registry=self.registry
        )
        self.samples = Counter("finetune_samples", "Samples trained on.", names, registry=self.registry)
        self.tokens = Counter("finetune_tokens", "Loss-counted tokens trained on.", names, registry=self.registry)
        self.nonfinite = Counter(
            "finetune_nonfinite_steps", "Steps with NaN/Inf loss or gradient norm.", names, registry=self.registry
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
            self.gauges[key].labels(**self.labels).set(value)
        self.samples.labels(**self.labels).inc(record.samples)
        self.tokens.labels(**self.labels).inc(record.tokens)
        if not (math.isfinite(record.loss) and math.isfinite(record.grad_norm)):
            self.nonfinite.labels(**self.labels).inc()
        self._set_phase(record.phase)

    def _set_phase(self, phase: str) -> None:
        if phase == self._current_phase:
            return
        if self._current_phase is not None:
            self.phase.labels(**self.labels, phase=self._current_phase).set(0)
        self.phase.labels(**self.labels, phase=phase).set(1)
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
        line = {"kind": kind, "time": time.time(), **self.identity, **payload}
        self.file.write(json.dumps(line, allow_nan=True) + "\n")
        self.file.flush()

    def log_step(self, record: StepRecord) -> None:
        self._write("step", asdict(record))

    def log_eval(self, step: int, loss: float) -> None:
        self._write("eval", {"step": step, "eval_loss": loss})

    def log_event(self, event: str, **fields: Any) -> None:
        self._write("event", {"event": event, **fields})

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
            f"step {record.step}/{record.total_steps} loss {record.loss:.4f} grad_norm {record.grad_norm:.4f} "
            f"lr {record.learning_rate:.3g} tok/s {tokens_per_s:,.0f} eta {eta} phase {record.phase}"
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
    loggers: list[MetricLogger] = [ConsoleLogger(), JsonlLogger(output_dir / "metrics.jsonl", who)]
    if port:
        loggers.append(PrometheusLogger(who, port, addr=addr, total_steps=total_steps))
    return MultiLogger(loggers)
