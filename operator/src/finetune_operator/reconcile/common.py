"""Shared by the reconcile functions: the context they run in and the one way status is written."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from finetune_operator.children import backends
from finetune_operator.children.backends import PYTORCHJOB, Backend
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import ApiException, Kube, is_status
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile import status

logger = logging.getLogger("finetune_operator")
Manifest = dict[str, Any]
StatusChange = Callable[[Manifest], Manifest | None]
WARNING_PHASES = ("Failed", "EarlyStopped")
_MAX_CONFLICTS = 8


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    """What every reconcile function runs with: the API seam, the config, the operator's metrics and the clock
    (status timestamps come from here, so the status logic stays pure and the tests can fix the time)."""

    kube: Kube
    config: OperatorConfig
    metrics: OperatorMetrics
    clock: Callable[[], datetime] = utc_now
    backend: Backend = PYTORCHJOB
    """The child kind for jobs that have none yet (config.backend resolved at start); a job keeps its own."""

    def backend_of(self, job: Manifest) -> Backend:
        """The job's child kind: the one recorded in its status, else the operator's."""
        return backends.backend_of(status_of(job), self.backend)

    def now(self) -> str:
        """The clock as Kubernetes writes timestamps (RFC 3339, UTC, seconds)."""
        return status.rfc3339(self.clock())


def status_of(job: Manifest) -> Manifest:
    return dict(job.get("status") or {})


def update_status(
    ctx: Context,
    namespace: str,
    name: str,
    change: StatusChange,
    known: Manifest | None = None,
    confirm_noop: bool = True,
) -> Manifest | None:
    """Read the job, compute a status change from it, write it guarded by resourceVersion; retry on conflict.

    `change` returns the fields to set (None or {} for nothing). A phase transition posts one Event.
    Returns the job as read before the write (None if it is gone or nothing changed).
    `known`: a copy of the job the caller already holds (the body of the event being handled), tried first instead
    of a GET. Safe because every write is guarded by its resourceVersion (a stale copy gets 409 and a fresh read);
    a "nothing to change" answer from it is confirmed on a fresh read, so a stale copy never skips a write —
    unless `confirm_noop` is False: for a caller whose `known` is the watch's latest copy and whose change only
    mirrors another object (a later change of the job brings its own event), that read is one GET per event for
    nothing.
    """
    for _ in range(_MAX_CONFLICTS):
        from_known = known is not None and bool(known["metadata"].get("resourceVersion"))
        job = known if from_known else ctx.kube.get_job(namespace, name)
        known = None  # one try only: a conflict or a no-op answer reads the job afresh
        if job is None:
            return None
        changes = change(job) or {}
        current = status_of(job)
        if all(current.get(key) == value for key, value in changes.items()):
            if from_known and confirm_noop:
                continue
            if current.get("phase"):
                ctx.metrics.record_phase(namespace, name, current["phase"])
            return None
        try:
            ctx.kube.patch_job_status(namespace, name, changes, job["metadata"].get("resourceVersion"))
        except ApiException as error:
            if is_status(error, 409):
                continue
            raise
        _after_write(ctx, job, current, changes)
        return job
    raise kopf.TemporaryError(f"status of {namespace}/{name} kept changing under us", delay=2)


def _after_write(ctx: Context, job: Manifest, before: Manifest, changes: Manifest) -> None:
    metadata = job["metadata"]
    phase = changes.get("phase", before.get("phase"))
    if phase:
        ctx.metrics.record_phase(metadata["namespace"], metadata["name"], phase)
    if "phase" in changes and changes["phase"] != before.get("phase"):
        kind = "Warning" if changes["phase"] in WARNING_PHASES else "Normal"
        message = f"phase {before.get('phase') or '-'} -> {changes['phase']}{_detail(before, changes)}"
        post_event(ctx, job, kind, str(changes["phase"]), message)
        logger.info("phase %s -> %s", before.get("phase"), changes["phase"], extra=_identity(job))


def _detail(before: Manifest, changes: Manifest) -> str:
    """What explains the new phase: the condition saying why, else the child this write recorded first (the one
    Event a new job gets for its child: a separate "Created" Event was one more POST per job at scale)."""
    wanted = {changes["phase"], "InvalidSpec", "EarlyStopped"}
    for condition in changes.get("conditions") or []:
        if condition.get("type") in wanted and condition.get("status") == "True" and condition.get("message"):
            return f": {condition['message']}"
    for backend in backends.BACKENDS.values():
        child = changes.get(backend.status_field)
        if child and child != before.get(backend.status_field):
            return f": its {backend.kind} is {child}"
    return ""


def post_event(ctx: Context, job: Manifest, kind: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the FineTuneJob. Written through the API (not Kopf's queue) so the early-stopping
    loop can post too; a failure to post is logged, never allowed to fail the reconcile. A namespace being deleted
    refuses new Events (403) while its jobs still change: that is expected, not worth a warning."""
    try:
        ctx.kube.create_event(job, kind, reason, message)
    except ApiException as error:
        terminating = is_status(error, 403) and "being terminated" in str(error.body or "")
        log = logger.debug if terminating else logger.warning
        log("could not post event %s on %s: %s", reason, job["metadata"].get("name"), error.reason)


def _identity(job: Manifest) -> dict[str, str]:
    return {"namespace": job["metadata"]["namespace"], "job": job["metadata"]["name"]}
