"""The early-stopping loop: read each running job's metrics, ask the policy, write status, stop failing runs.

One loop for the whole operator (not a Kopf timer or daemon per object: those put a finalizer on every
FineTuneJob, and a finalizer can wedge a deletion while the operator is down), reading the jobs from the operator's
Kopf index and writing status from the body in hand (resourceVersion-guarded, no GET first). Each job is evaluated every
`earlyStopping.evaluationIntervalSeconds`, read live from its spec, so thresholds can be edited on a running job.
A stop is recorded first (phase EarlyStopped, condition, event) and the PyTorchJob deleted second: if the operator
dies in between, the next evaluation finds the job EarlyStopped with its child still there and deletes it.
Unreadable metrics are never a reason to stop: the verdict is unknown, MetricsUnavailable is set, and the job is
retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from finetune_operator.api import FineTuneJob, JobPhase, Verdict
from finetune_operator.children import backends
from finetune_operator.decisions.policy import evaluate
from finetune_operator.metrics.source import (
    JobMetrics,
    MetricsSourceChoice,
    MetricsUnavailableError,
    PrometheusSource,
    ScrapeSource,
    choose_source,
)
from finetune_operator.reconcile import status
from finetune_operator.reconcile.common import Context, Manifest, post_event, status_of, update_status
from finetune_operator.reconcile.node_loss import check_lost_nodes
from finetune_operator.reconcile.pod_creation import check_pod_creation

logger = logging.getLogger("finetune_operator.reconcile.early_stop")
TICK_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
STALE_AFTER_SECONDS = 600.0


_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "ownerReferences")


def index_entry(job: Manifest) -> Manifest:
    """What early stopping and status writes read of a FineTuneJob, as kept in the operator's Kopf index.

    managedFields and annotations (Kopf's copy of the last handled spec among them) are about half of a
    FineTuneJob's size and are never read from here; at 2,000 jobs that is most of the index's memory."""
    metadata = job.get("metadata") or {}
    slim: Manifest = {key: job[key] for key in ("apiVersion", "kind", "spec", "status") if key in job}
    slim["metadata"] = {key: metadata[key] for key in _KEPT_METADATA if key in metadata}
    return slim


async def run_early_stopping(
    ctx: Context, snapshot: Callable[[], list[Manifest]], tick_seconds: float = TICK_SECONDS
) -> None:
    """The loop, as a task in Kopf's event loop: the jobs are read from Kopf's index there (never while the watch
    writes it, no LIST), each tick's I/O runs in a worker thread. Cancelled at operator cleanup."""
    evaluator = Evaluator(ctx)
    loop = asyncio.get_running_loop()
    while True:
        jobs = snapshot()
        try:
            await loop.run_in_executor(None, evaluator.tick, jobs)
        except Exception:  # one bad cycle must not end early stopping for every job
            logger.exception("early-stopping cycle failed")
        await asyncio.sleep(tick_seconds)


@dataclass
class Evaluator:
    """Judges every Running job once per its interval; finishes every early stop (child deleted) once per process."""

    ctx: Context
    scrape: ScrapeSource = field(default_factory=ScrapeSource)
    _due: dict[tuple[str, str], float] = field(default_factory=dict)
    _failures: dict[tuple[str, str], int] = field(default_factory=dict)
    _stopped: set[tuple[str, str, str]] = field(default_factory=set)
    _pods_due: float = 0.0
    _nodes_readable: bool = True

    def tick(self, jobs: list[Manifest]) -> None:
        now = self.ctx.clock().timestamp()
        if now >= self._pods_due:
            self._pods_due = now + self.ctx.config.pod_check_interval_seconds
            check_pod_creation(self.ctx, jobs)
            if self._nodes_readable:
                try:
                    self._nodes_readable = check_lost_nodes(self.ctx, jobs)
                except Exception:  # a failed check must not hold up the scoring below
                    logger.exception("lost-node check failed")
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
            self._unavailable(job, model, now, str(error))
            return None
        self._failures.pop(key, None)
        self._due[key] = now + spec.evaluation_interval_seconds
        verdict = evaluate(
            metrics.points, spec, now=now, stale_after_seconds=STALE_AFTER_SECONDS, evaluated_at=self.ctx.now()
        )
        written = self._record(job, metrics, verdict)
        if verdict.decision == "stop" and written is not None:
            self._stopped_now(job, model, verdict, metrics)
        return verdict

    def _source(self, model: FineTuneJob) -> MetricsSourceChoice:
        return choose_source(model.spec.metrics.prometheus_url, self.ctx.config.prometheus_url)

    def _read(self, job: Manifest, model: FineTuneJob) -> JobMetrics:
        namespace, name = model.metadata.namespace, model.metadata.name
        source = self._source(model)
        if source.prometheus_url:
            return PrometheusSource(source.prometheus_url).fetch(namespace, name)
        url = self._master_url(job, model)
        return self.scrape.fetch(namespace, name, url, now=self.ctx.clock().timestamp())

    def _master_url(self, job: Manifest, model: FineTuneJob) -> str:
        backend = self.ctx.backend_of(job)
        child = backends.child_name_of(status_of(job)) or backend.child_name(model.metadata.name)
        for pod in self.ctx.kube.child_pods(model.metadata.namespace, child, backend):
            address = (pod.get("status") or {}).get("podIP")
            if backend.is_rank0(pod) and address:
                return f"http://{address}:{model.spec.metrics.port}/metrics"
        raise MetricsUnavailableError(f"no running rank-0 pod with an IP for {backend.kind} {child}")

    def _unavailable(self, job: Manifest, model: FineTuneJob, now: float, why: str) -> None:
        key, spec = (model.metadata.namespace, model.metadata.name), model.spec.early_stopping
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(MAX_BACKOFF_SECONDS, spec.evaluation_interval_seconds * 2 ** (failures - 1))
        self._due[key] = now + delay
        reason = self._source(model).unavailable_reason
        message = f"{why}; early stopping cannot judge this run (retry in {delay:.0f}s); it is not stopped for this"
        verdict = Verdict.model_validate(
            {"decision": "unknown", "reason": "MetricsUnavailable", "message": message, "evaluatedAt": self.ctx.now()}
        )
        condition = status.condition("MetricsUnavailable", True, reason, message, self.ctx.now())

        def change(current_job: Manifest) -> Manifest:
            current = status_of(current_job)
            return {
                "earlyStopping": verdict.to_wire(),
                "conditions": status.merge_conditions(current.get("conditions") or [], [condition]),
            }

        update_status(self.ctx, key[0], key[1], change, known=job)

    def _record(self, job: Manifest, metrics: JobMetrics, verdict: Verdict) -> Manifest | None:
        """One status write per evaluation: the figures and the verdict, and for a stop the phase, the condition
        and the completion time too (one PATCH from the body in hand, not a write plus a stale second one).
        Returns what update_status returns (None: nothing written, e.g. the job is gone)."""
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
        updates = [status.condition("MetricsUnavailable", False, "MetricsRead", "", self.ctx.now())]
        if verdict.decision == "stop":
            message = f"{verdict.message}{_evidence_text(verdict)}"
            updates = [*updates, status.condition("EarlyStopped", True, verdict.reason, message, self.ctx.now())]
            fields |= {"phase": str(JobPhase.EarlyStopped), "completionTime": self.ctx.now()}

        def change(current_job: Manifest) -> Manifest | None:
            current = status_of(current_job)
            if verdict.decision == "stop" and current.get("phase") != str(JobPhase.Running):
                return None  # ended meanwhile (e.g. Succeeded): a late verdict does not rewrite history
            out = dict(fields)
            present = {c.get("type") for c in current.get("conditions") or []}
            wanted = [c for c in updates if c["type"] in present or c["status"] == "True"]
            if wanted:
                out["conditions"] = status.merge_conditions(current.get("conditions") or [], wanted)
            return out

        return update_status(self.ctx, job["metadata"]["namespace"], job["metadata"]["name"], change, known=job)

    def _stopped_now(self, job: Manifest, model: FineTuneJob, verdict: Verdict, metrics: JobMetrics) -> None:
        """After the stop is recorded (phase, condition, event): count it, then free the GPUs (delete the child)."""
        rule = verdict.evidence.rule if verdict.evidence and verdict.evidence.rule else verdict.reason
        self.ctx.metrics.record_early_stop(model.metadata.namespace, model.metadata.name, rule)
        saved = _gpu_seconds_saved(job, model, metrics, self.ctx.clock().timestamp())
        self.ctx.metrics.gpu_seconds_saved.inc(saved)
        logger.warning("early-stopped %s/%s: %s", model.metadata.namespace, model.metadata.name, verdict.message)
        self._finish_stop(job)

    def _finish_stop(self, job: Manifest) -> None:
        """Delete the child of an EarlyStopped job (again, if a crash interrupted the first attempt).

        Done once per job and operator process: a restarted operator checks every EarlyStopped job once more,
        which is what completes an interrupted stop; after that an ended job costs no API call per cycle."""
        namespace = job["metadata"]["namespace"]
        recorded = backends.recorded_child(status_of(job))
        if recorded is not None and self.ctx.kube.delete_child(namespace, recorded[1], backend=recorded[0]):
            backend, child = recorded
            post_event(
                self.ctx, job, "Warning", f"{backend.kind}Deleted", f"deleted {backend.kind} {child}: its GPUs are free"
            )
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
    elapsed = now - datetime.fromisoformat(str(started).replace("Z", "+00:00")).timestamp()
    gpus = model.spec.resources.nodes * max(model.spec.resources.gpus_per_node, 0)
    return max(0.0, (total - latest.step) * elapsed / latest.step * gpus)
