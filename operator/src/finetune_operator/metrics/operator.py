"""The operator's own Prometheus metrics: reconciles, errors and latency by handler, jobs by phase, early stops."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from finetune_contract import names

PHASES = ("Pending", "Running", "Succeeded", "Failed", "EarlyStopped", "Suspended")
P = ParamSpec("P")
R = TypeVar("R")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "finetune_operator_reconciles", "Reconcile calls by handler.", ["handler"], registry=self.registry
        )
        self.errors = Counter(
            "finetune_operator_reconcile_errors",
            "Reconcile calls that raised, by handler.",
            ["handler"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "finetune_operator_reconcile_duration_seconds",
            "Reconcile latency by handler.",
            ["handler"],
            registry=self.registry,
        )
        self.jobs = Gauge("finetune_operator_jobs", "FineTuneJobs by phase.", ["phase"], registry=self.registry)
        self.early_stops = Counter(
            "finetune_operator_early_stops",
            "PyTorchJobs deleted by the early-stopping policy.",
            ["rule"],
            registry=self.registry,
        )
        self.gpu_seconds_saved = Counter(
            "finetune_operator_gpu_seconds_saved",
            "GPU-seconds not spent because early stopping ended runs before their planned last step (estimate).",
            registry=self.registry,
        )
        self.thresholds = Gauge(
            "finetune_operator_job_threshold",
            "Early-stopping thresholds in force for a running job (rule maxGradNorm or minLoss); absent when unset.",
            [names.LABEL_NAMESPACE, names.LABEL_JOB, "rule"],
            registry=self.registry,
        )
        self.stopped = Gauge(
            "finetune_operator_job_early_stopped",
            "1 for a job the early-stopping policy stopped, labelled with the rule that fired.",
            [names.LABEL_NAMESPACE, names.LABEL_JOB, "rule"],
            registry=self.registry,
        )
        self._job_series: dict[tuple[str, str], set[tuple[Gauge, str]]] = {}
        self._phases: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def record_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Remember a job's phase (None: the job is gone) and refresh the jobs-by-phase gauge."""
        with self._lock:
            before = self._phases.get((namespace, name))
            if phase is None:
                self._phases.pop((namespace, name), None)
                self._forget(namespace, name)
            else:
                self._phases[(namespace, name)] = phase
            if before == phase:
                return
            # Counted as it changes, not recounted: every watch event of every job comes through here.
            for value, delta in ((before, -1), (phase, 1)):
                if value is not None:
                    self._counts[value] = self._counts.get(value, 0) + delta
            for value in PHASES:
                self.jobs.labels(phase=value).set(self._counts.get(value, 0))

    def record_thresholds(self, namespace: str, name: str, thresholds: dict[str, float | None]) -> None:
        """Export the thresholds a job is judged by, so dashboards can draw them next to its series."""
        with self._lock:
            for rule, value in thresholds.items():
                if value is None:
                    self._remove(self.thresholds, namespace, name, rule)
                else:
                    self.thresholds.labels(namespace=namespace, finetunejob=name, rule=rule).set(value)
                    self._job_series.setdefault((namespace, name), set()).add((self.thresholds, rule))

    def record_early_stop(self, namespace: str, name: str, rule: str) -> None:
        """Count the stop (by rule) and mark the job, for per-job annotations."""
        with self._lock:
            self.early_stops.labels(rule=rule).inc()
            self.stopped.labels(namespace=namespace, finetunejob=name, rule=rule).set(1)
            self._job_series.setdefault((namespace, name), set()).add((self.stopped, rule))

    def _remove(self, gauge: Gauge, namespace: str, name: str, rule: str) -> None:
        try:
            gauge.remove(namespace, name, rule)
        except KeyError:
            return
        self._job_series.get((namespace, name), set()).discard((gauge, rule))

    def _forget(self, namespace: str, name: str) -> None:
        """A deleted job's per-job series go with it (no unbounded label growth)."""
        for gauge, rule in self._job_series.pop((namespace, name), set()):
            try:
                gauge.remove(namespace, name, rule)
            except KeyError:
                continue

    @contextlib.contextmanager
    def timed(self, handler: str) -> Iterator[None]:
        """Count, time and count the failures of one handler call."""
        self.reconciles.labels(handler=handler).inc()
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.errors.labels(handler=handler).inc()
            raise
        finally:
            self.latency.labels(handler=handler).observe(time.perf_counter() - started)

    def observe_job(self, event_type: str | None, job: Mapping[str, Any]) -> None:
        """Every watch event of a FineTuneJob: its phase counts, whatever the reconcile does with it (after a
        restart, jobs that ended long ago get no status write, yet belong in finetune_operator_jobs{phase})."""
        metadata = job.get("metadata") or {}
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not namespace or not name:
            return
        if event_type == "DELETED":
            self.record_phase(namespace, name, None)
            return
        phase = (job.get("status") or {}).get("phase")
        if phase:
            self.record_phase(namespace, name, str(phase))


class HasMetrics(Protocol):
    metrics: OperatorMetrics


C = TypeVar("C", bound=HasMetrics)


def instrumented(handler: str) -> Callable[[Callable[Concatenate[C, P], R]], Callable[Concatenate[C, P], R]]:
    """Count, time and count the failures of a reconcile function, labelled `handler`; its first argument is the
    reconcile Context (anything with `.metrics`)."""

    def decorate(function: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
        @functools.wraps(function)
        def wrapper(ctx: C, /, *args: P.args, **kwargs: P.kwargs) -> R:
            with ctx.metrics.timed(handler):
                return function(ctx, *args, **kwargs)

        return wrapper

    return decorate
