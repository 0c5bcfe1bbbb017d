"""Tell a FineTuneJob whose child cannot make its pods, from the training-operator's FailedCreatePod Events.

Why: the training-operator reports a pod it cannot create (a ResourceQuota, an admission policy, a limit the
API server refuses) only as an Event on the PyTorchJob, with no condition; the job would otherwise sit Pending
forever without a word. Why Events and not pods: the Events say why. The check is one field-selected LIST for all
watched jobs per interval (never one per job), so its cost does not grow with the number of jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_operator.api import JobPhase
from finetune_operator.reconcile import status
from finetune_operator.reconcile.common import Context, Manifest, post_event, status_of, update_status

CONDITION = "PodsNotCreated"
FAILED_CREATE_POD = "FailedCreatePod"
FRESH_FOR = timedelta(minutes=10)
"""An Event older than this no longer counts: the training-operator repeats it (count, lastTimestamp) while it
keeps failing, so a quiet one means the pods were created since."""


@dataclass(frozen=True)
class PodFailure:
    """The newest FailedCreatePod Event of one child."""

    message: str
    count: int
    last_seen: datetime


def failures_by_child(events: Iterable[Mapping[str, Any]], now: datetime) -> dict[tuple[str, str], PodFailure]:
    """(namespace, child name) -> its newest fresh FailedCreatePod Event (pure)."""
    out: dict[tuple[str, str], PodFailure] = {}
    for event in events:
        involved = event.get("involvedObject") or {}
        seen = _event_time(event)
        if event.get("reason") != FAILED_CREATE_POD or seen is None or now - seen > FRESH_FOR:
            continue
        key = (str(involved.get("namespace")), str(involved.get("name")))
        failure = PodFailure(str(event.get("message") or ""), int(event.get("count") or 1), seen)
        if key not in out or out[key].last_seen < seen:
            out[key] = failure
    return out


def pods_condition(current: Manifest, failure: PodFailure | None, generation: int | None, now: str) -> Manifest | None:
    """The condition to write for a Pending job (None: nothing changes). Pure."""
    was_true = CONDITION in status.true_types(current.get("conditions") or [])
    if failure is None:
        return status.condition(CONDITION, False, "PodsCreated", "", now, generation) if was_true else None
    message = f"the training-operator cannot create this job's pods ({failure.count}x): {failure.message}"
    existing = {c.get("type"): c for c in current.get("conditions") or []}.get(CONDITION) or {}
    if was_true and existing.get("message") == message:
        return None
    return status.condition(CONDITION, True, FAILED_CREATE_POD, message, now, generation)


def check_pod_creation(ctx: Context, jobs: Iterable[Manifest]) -> None:
    """One pass over the Pending jobs that have a child: set or clear PodsNotCreated from the Events."""
    pending = [
        job
        for job in jobs
        if status_of(job).get("phase") == str(JobPhase.Pending) and status_of(job).get("pytorchJobName")
    ]
    if not pending:
        return
    events = ctx.kube.list_child_events(ctx.config.namespaces, FAILED_CREATE_POD)
    failures = failures_by_child(events, ctx.clock())
    for job in pending:
        namespace = job["metadata"]["namespace"]
        failure = failures.get((namespace, status_of(job)["pytorchJobName"]))
        update = pods_condition(status_of(job), failure, job["metadata"].get("generation"), ctx.now())
        if update is None:
            continue
        if update["status"] == "True" and CONDITION not in status.true_types(status_of(job).get("conditions") or []):
            post_event(ctx, job, "Warning", FAILED_CREATE_POD, update["message"])
        _write(ctx, job, update)


def _write(ctx: Context, job: Manifest, update: Manifest) -> None:
    def change(current_job: Manifest) -> Manifest | None:
        if status_of(current_job).get("phase") != str(JobPhase.Pending):
            return None  # moved on meanwhile (the mirror clears the condition when pods run)
        conditions = status.merge_conditions(status_of(current_job).get("conditions") or [], [update])
        return {"conditions": conditions}

    update_status(ctx, job["metadata"]["namespace"], job["metadata"]["name"], change, known=job)


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    stamp = (
        event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get("creationTimestamp")
    )
    if not stamp:
        return None
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
