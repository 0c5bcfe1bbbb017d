"""The early-stopping loop: read each running job's metrics, ask the policy, write status, stop failing runs.

One background thread for the whole operator (not a Kopf timer or daemon per object: those put a finalizer on
every FineTuneJob, and a finalizer can wedge a deletion while the operator is down). Each job is evaluated every
`earlyStopping.evaluationIntervalSeconds`, read live from its spec, so thresholds can be edited on a running job.
A stop is recorded first (phase EarlyStopped, condition, event) and the PyTorchJob deleted second: if the operator
dies in between, the next evaluation finds the job EarlyStopped with its child still there and deletes it.
Unreadable metrics are never a reason to stop: the verdict is unknown, MetricsUnavailable is set, and the job is
retried with exponential backoff.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from finetune_contract import names
from finetune_operator.api import EarlyStoppingSpec, FineTuneJob, JobPhase, Verdict
from finetune_operator.children.pytorchjob import child_name
from finetune_operator.decisions.policy import evaluate
from finetune_operator.metrics.source import JobMetrics, MetricsUnavailableError, PrometheusSource, ScrapeSource
from finetune_operator.reconcile import status
from finetune_operator.reconcile.common import Context, Manifest, post_event, status_of, update_status
from finetune_operator.reconcile.pod_creation import check_pod_creation

logger = logging.getLogger("finetune_operator.reconcile.early_stop")
MAX_BACKOFF_SECONDS = 60.0
STALE_AFTER_SECONDS = 600.0


class JobIndex:
    """The latest body of every watched FineTuneJob, fed by the operator's own watch stream (Kopf's event handler).

    The evaluator used to LIST every FineTuneJob each second: at 2,000 jobs that list was most of the operator's
    CPU and a steady load on the API server, for information the watch already delivers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], Manifest] = {}

    def observe(self, event_type: str | None, job: Manifest) -> None:
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        with self._lock:
            if event_type == "DELETED":
                self._jobs.pop(key, None)
            else:
                self._jobs[key] = _slim(job)

    def get(self, namespace: str, name: str) -> Manifest | None:
        with self._lock:
            return self._jobs.get((namespace, name))

    def snapshot(self) -> list[Manifest]:
        with self._lock:
            return list(self._jobs.values())


_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp")


def _slim(job: Manifest) -> Manifest:
    """What early stopping and status writes read; managedFields and annotations (Kopf's copy of the last handled
    spec among them) are about half of a FineTuneJob's size and are never read from here."""
    metadata = job.get("metadata") or {}
    slim: Manifest = {key: job[key] for key in ("apiVersion", "kind", "spec", "status") if key in job}
    slim["metadata"] = {key: metadata[key] for key in _KEPT_METADATA if key in metadata}
    return slim


@dataclass
class Evaluator:
    ctx: Context
    index: JobIndex | None = None
    """Where the jobs come from; without one (no watch feeding it), each cycle lists them from the API."""
    tick_seconds: float = 1.0
    clock: Callable[[], float] = time.time
    stop_flag: threading.Event = field(default_factory=threading.Event)
    scrape: ScrapeSource = field(default_factory=ScrapeSource)
    _due: dict[tuple[str, str], float] = field(default_factory=dict)
    _failures: dict[tuple[str, str], int] = field(default_factory=dict)
    _stopped: set[tuple[str, str, str]] = field(default_factory=set)
    _pods_due: float = 0.0

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.tick()
            except Exception:  # one bad cycle must not end early stopping for every job
                logger.exception("early-stopping cycle failed")
            self.stop_flag.wait(self.tick_seconds)

    def tick(self) -> None:
        now = self.clock()
        jobs = self.index.snapshot() if self.index is not None else self.ctx.kube.list_jobs(self.ctx.config.namespaces)
        if now >= self._pods_due:
            self._pods_due = now + self.ctx.config.pod_check_interval_seconds
            check_pod_creation(self.ctx, jobs)
        for job in jobs:
            key = (job["metadata"]["namespace"], job["metadata"]["name"])
            phase = status_of(job).get("phase")
            if phase == JobPhase.EarlyStopped:
                if (*key, job["metadata"].get("uid", "")) not in self._stopped:
                    self._finish_stop(job)
                continue
            if phase != JobPhase.Running:
                self._due.pop(key, None)
                continue
            if now >= self._due.get(key, 0.0):
                self.evaluate_job(job, now)

    def evaluate_job(self, job: Manifest, now: float) -> Verdict | None:
        """One evaluation of one job; returns the verdict (None when the spec is unusable or disabled)."""
        try:
            model = FineTuneJob.model_validate({key: job[key] for key in ("apiVersion", "kind", "metadata", "spec")})
        except ValueError:
            return None  # the reconcile path reports invalid specs
        spec = model.spec.early_stopping
        key = (model.metadata.namespace, model.metadata.name)
        if not spec.enabled:
            return None
        self.ctx.metrics.record_thresholds(
            key[0], key[1], {"maxGradNorm": spec.max_grad_norm, "minLoss": spec.min_loss}
        )
        try:
            metrics = self._read(job, model)
        except MetricsUnavailableError as error:
            self._unavailable(job, key, spec, now, str(error))
            return None
        self._failures.pop(key, None)
        self._due[key] = now + spec.evaluation_interval_seconds
        verdict = evaluate(
            metrics.points, spec, now=now, stale_after_seconds=STALE_AFTER_SECONDS, evaluated_at=status.now()
        )
        self._record(job, metrics, verdict)
        if verdict.decision == "stop":
            self.stop_job(job, model, verdict, metrics)
        return verdict

    def _read(self, job: Manifest, model: FineTuneJob) -> JobMetrics:
        namespace, name = model.metadata.namespace, model.metadata.name
        prometheus = model.spec.metrics.prometheus_url or self.ctx.config.prometheus_url
        if prometheus:
            return PrometheusSource(prometheus).fetch(namespace, name)
        url = self._master_url(job, model)
        return self.scrape.fetch(namespace, name, url, now=self.clock())

    def _master_url(self, job: Manifest, model: FineTuneJob) -> str:
        child = status_of(job).get("pytorchJobName") or child_name(model.metadata.name)
        for pod in self.ctx.kube.child_pods(model.metadata.namespace, child):
            labels = pod["metadata"].get("labels") or {}
            address = (pod.get("status") or {}).get("podIP")
            if labels.get(names.TRAINING_OPERATOR_REPLICA_LABEL, "").lower() == "master" and address:
                return f"http://{address}:{model.spec.metrics.port}/metrics"
        raise MetricsUnavailableError(f"no running Master pod with an IP for PyTorchJob {child}")

    def _unavailable(self, job: Manifest, key: tuple[str, str], spec: EarlyStoppingSpec, now: float, why: str) -> None:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(MAX_BACKOFF_SECONDS, spec.evaluation_interval_seconds * 2 ** (failures - 1))
        self._due[key] = now + delay
        uses_prometheus = bool(job["spec"].get("metrics", {}).get("prometheusUrl") or self.ctx.config.prometheus_url)
        reason = "PrometheusUnavailable" if uses_prometheus else "ScrapeFailed"
        message = f"{why}; early stopping cannot judge this run (retry in {delay:.0f}s); it is not stopped for this"
        verdict = Verdict.model_validate(
            {"decision": "unknown", "reason": "MetricsUnavailable", "message": message, "evaluatedAt": status.now()}
        )
        condition = status.condition("MetricsUnavailable", True, reason, message)

        def change(current_job: Manifest) -> Manifest:
            current = status_of(current_job)
            return {
                "earlyStopping": verdict.to_wire(),
                "conditions": status.merge_conditions(current.get("conditions") or [], [condition]),
            }

        update_status(self.ctx, key[0], key[1], change)

    def _record(self, job: Manifest, metrics: JobMetrics, verdict: Verdict) -> None:
        latest = metrics.latest
        fields: Manifest = {"earlyStopping": verdict.to_wire()}
        if latest is not None:
            fields |= {"step": latest.step, "loss": _finite(latest.loss), "gradNorm": _finite(latest.grad_norm)}
            fields["progress"] = status.progress(latest.step, metrics.total_steps)
        fields |= {
            "totalSteps": metrics.total_steps,
            "learningRate": _finite(metrics.learning_rate),
            "tokensPerSecond": _finite(metrics.tokens_per_second),
        }
        fields = {key: value for key, value in fields.items() if value is not None}
        available = status.condition("MetricsUnavailable", False, "MetricsRead", "")

        def change(current_job: Manifest) -> Manifest:
            current = status_of(current_job)
            out = dict(fields)
            if "MetricsUnavailable" in {c.get("type") for c in current.get("conditions") or []}:
                out["conditions"] = status.merge_conditions(current.get("conditions") or [], [available])
            return out

        update_status(self.ctx, job["metadata"]["namespace"], job["metadata"]["name"], change)

    def stop_job(self, job: Manifest, model: FineTuneJob, verdict: Verdict, metrics: JobMetrics) -> None:
        """Record the stop (phase, condition, event), then free the GPUs by deleting the PyTorchJob."""
        message = f"{verdict.message}{_evidence_text(verdict)}"
        stopped = status.condition("EarlyStopped", True, verdict.reason, message)

        def change(current_job: Manifest) -> Manifest:
            current = status_of(current_job)
            return {
                "phase": str(JobPhase.EarlyStopped),
                "earlyStopping": verdict.to_wire(),
                "completionTime": status.now(),
                "conditions": status.merge_conditions(current.get("conditions") or [], [stopped]),
            }

        written = update_status(self.ctx, model.metadata.namespace, model.metadata.name, change)
        if written is None:
            return
        rule = verdict.evidence.rule if verdict.evidence and verdict.evidence.rule else verdict.reason
        self.ctx.metrics.record_early_stop(model.metadata.namespace, model.metadata.name, rule)
        self.ctx.metrics.gpu_seconds_saved.inc(_gpu_seconds_saved(job, model, metrics, self.clock()))
        logger.warning("early-stopped %s/%s: %s", model.metadata.namespace, model.metadata.name, verdict.message)
        self._finish_stop(job)

    def _finish_stop(self, job: Manifest) -> None:
        """Delete the child of an EarlyStopped job (again, if a crash interrupted the first attempt).

        Done once per job and operator process: a restarted operator checks every EarlyStopped job once more,
        which is what completes an interrupted stop; after that an ended job costs no API call per cycle."""
        namespace = job["metadata"]["namespace"]
        child = status_of(job).get("pytorchJobName")
        if child and self.ctx.kube.delete_child(namespace, child):
            post_event(self.ctx, job, "Warning", "PyTorchJobDeleted", f"deleted PyTorchJob {child}: its GPUs are free")
        self.scrape.forget(namespace, job["metadata"]["name"])
        self._stopped.add((namespace, job["metadata"]["name"], job["metadata"].get("uid", "")))


def _evidence_text(verdict: Verdict) -> str:
    """The evidence in one line a person reads in `kubectl describe`; the structured copy is in status."""
    evidence = verdict.evidence
    if evidence is None:
        return ""
    steps = f"steps {evidence.from_step}-{evidence.to_step}" if evidence.from_step is not None else "steps ?"
    threshold = f", threshold {evidence.threshold}" if evidence.threshold is not None else ""
    return f" [rule {evidence.rule}: {evidence.statistic} {evidence.metric} over {steps} = {evidence.value}{threshold}]"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _gpu_seconds_saved(job: Manifest, model: FineTuneJob, metrics: JobMetrics, now: float) -> float:
    """(planned steps - done steps) x seconds per step so far x GPUs: what the rest of the run would have used."""
    latest, total = metrics.latest, metrics.total_steps
    started = status_of(job).get("startTime")
    if latest is None or not total or not started or latest.step <= 0:
        return 0.0
    from datetime import datetime

    elapsed = now - datetime.fromisoformat(str(started).replace("Z", "+00:00")).timestamp()
    gpus = model.spec.resources.nodes * max(model.spec.resources.gpus_per_node, 0)
    return max(0.0, (total - latest.step) * elapsed / latest.step * gpus)
