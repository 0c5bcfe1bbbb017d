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
        self.sweep_trials = Gauge(
            "finetune_operator_sweep_trials",
            "Trials of each FineTuneSweep by phase.",
            [names.LABEL_NAMESPACE, "sweep", "phase"],
            registry=self.registry,
        )
        self.sweep_pruned = Counter(
            "finetune_operator_sweep_pruned", "Trials pruned by their sweep.", registry=self.registry
        )
        self.sweep_gpu_seconds_saved = Gauge(
            "finetune_operator_sweep_gpu_seconds_saved",
            "GPU-seconds each sweep's pruned trials would still have used.",
            [names.LABEL_NAMESPACE, "sweep"],
            registry=self.registry,
        )
        self.sweep_rho = Gauge(
            "finetune_operator_sweep_score_objective_rho",
            "Spearman rho between each sweep's first-rung score and its final objective.",
            [names.LABEL_NAMESPACE, "sweep"],
            registry=self.registry,
        )
        self.sweep_trial = Gauge(
            "finetune_operator_sweep_trial",
            "1 for each trial of a sweep, labelled with its phase: joins a trial's trainer series to its sweep.",
            [names.LABEL_NAMESPACE, "sweep", names.LABEL_JOB, "trial", "phase"],
            registry=self.registry,
        )
        self.sweep_trial_pruned = Gauge(
            "finetune_operator_sweep_trial_pruned",
            "1 for each trial its sweep pruned, labelled with the rung step: the sweep dashboard's annotations.",
            [names.LABEL_NAMESPACE, "sweep", names.LABEL_JOB, "rung"],
            registry=self.registry,
        )
        self._sweep_rows: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        self._pruned_trials: set[tuple[str, str, str]] = set()
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

    def record_prune(self, namespace: str, sweep: str, trial: str, rung: int | None) -> None:
        self.sweep_pruned.inc()
        self.sweep_trial_pruned.labels(namespace=namespace, sweep=sweep, finetunejob=trial, rung=str(rung)).set(1)
        self._pruned_trials.add((namespace, sweep, trial))

    def record_sweep(self, namespace: str, sweep: str, status: Mapping[str, Any]) -> None:
        """A sweep's trial counts by phase, its savings and rho, as its status now says."""
        counts: dict[str, int] = {}
        for row in status.get("trials") or []:
            counts[str(row.get("phase"))] = counts.get(str(row.get("phase")), 0) + 1
        with self._lock:
            for phase in ("Pending", "Running", "Pruned", "Succeeded", "Failed", "EarlyStopped", "Suspended"):
                self.sweep_trials.labels(namespace=namespace, sweep=sweep, phase=phase).set(counts.get(phase, 0))
            saved = float(status.get("gpuSecondsSaved") or 0.0)
            self.sweep_gpu_seconds_saved.labels(namespace=namespace, sweep=sweep).set(saved)
            rho = (status.get("scoreObjectiveCorrelation") or {}).get("rho")
            if rho is not None:
                self.sweep_rho.labels(namespace=namespace, sweep=sweep).set(float(rho))
            rows = {
                (str(row.get("name")), str(row.get("index")), str(row.get("phase")))
                for row in status.get("trials") or []
            }
            for gone in self._sweep_rows.get((namespace, sweep), set()) - rows:  # a trial's phase label moved on
                self.sweep_trial.remove(namespace, sweep, *gone)
            for row in status.get("trials") or []:  # pruning annotations survive an operator restart
                key = (namespace, sweep, str(row.get("name")))
                if row.get("phase") == "Pruned" and row.get("rung") is not None and key not in self._pruned_trials:
                    self.sweep_trial_pruned.labels(
                        namespace=namespace, sweep=sweep, finetunejob=key[2], rung=str(row["rung"])
                    ).set(1)
                    self._pruned_trials.add(key)
            for name, index, phase in rows:
                self.sweep_trial.labels(
                    namespace=namespace, sweep=sweep, finetunejob=name, trial=index, phase=phase
                ).set(1)
            self._sweep_rows[(namespace, sweep)] = rows

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
