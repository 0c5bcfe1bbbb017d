"""Tell a FineTuneJob whose child cannot make its pods, from the Events of whoever makes them.

Why: the training-operator reports a pod it cannot create (a ResourceQuota, an admission policy, a limit the
API server refuses) only as a FailedCreatePod Event on the PyTorchJob, with no condition; a TrainJob's pods are
made by the Job controller, which reports FailedCreate on the Job (<jobset>-node-<i>, the JobSet named like the
TrainJob). The job would otherwise sit Pending forever without a word. Why Events and not pods: the Events say
why. The check is one field-selected LIST per child kind with Pending jobs, per interval (never one per job), so
its cost does not grow with the number of jobs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_contract import names
from finetune_operator.api import JobPhase
from finetune_operator.children import backends
from finetune_operator.reconcile import status
from finetune_operator.reconcile.common import Context, Manifest, post_event, status_of, update_status

CONDITION = "PodsNotCreated"
FAILED_CREATE_POD = "FailedCreatePod"
FAILED_CREATE = "FailedCreate"
"""The Job controller's reason for a pod it cannot create (a TrainJob's pods)."""
JOBSET_JOB_NAME = re.compile(rf"^(?P<jobset>.+)-{re.escape(names.TRAINJOB_CONTAINER)}-\d+$")
FRESH_FOR = timedelta(minutes=10)
"""An Event older than this no longer counts: the training-operator repeats it (count, lastTimestamp) while it
keeps failing, so a quiet one means the pods were created since."""


@dataclass(frozen=True)
class PodFailure:
    """The newest FailedCreatePod Event of one child."""

    message: str
    count: int
    last_seen: datetime


def failures_by_child(
    events: Iterable[Mapping[str, Any]],
    now: datetime,
    reason: str = FAILED_CREATE_POD,
    child_of: Callable[[str], str | None] = lambda name: name,
) -> dict[tuple[str, str], PodFailure]:
    """(namespace, child name) -> its newest fresh Event of `reason` (pure). `child_of` maps the Event's object
    to the child's name (None: not one of ours): itself for a PyTorchJob, the JobSet's for a TrainJob's Job."""
    out: dict[tuple[str, str], PodFailure] = {}
    for event in events:
        involved = event.get("involvedObject") or {}
        seen = _event_time(event)
        if event.get("reason") != reason or seen is None or now - seen > FRESH_FOR:
            continue
        child = child_of(str(involved.get("name")))
        if child is None:
            continue
        key = (str(involved.get("namespace")), child)
        failure = PodFailure(str(event.get("message") or ""), int(event.get("count") or 1), seen)
        if key not in out or out[key].last_seen < seen:
            out[key] = failure
    return out


def trainjob_of_job(job_name: str) -> str | None:
    """The TrainJob (= JobSet) a Job of its `node` replicated job belongs to; None for any other Job."""
    found = JOBSET_JOB_NAME.match(job_name)
    return found.group("jobset") if found else None


def pods_condition(current: Manifest, failure: PodFailure | None, generation: int | None, now: str) -> Manifest | None:
    """The condition to write for a Pending job (None: nothing changes). Pure."""
    was_true = CONDITION in status.true_types(current.get("conditions") or [])
    if failure is None:
        return status.condition(CONDITION, False, "PodsCreated", "", now, generation) if was_true else None
    message = f"this job's pods cannot be created ({failure.count}x): {failure.message}"
    existing = {c.get("type"): c for c in current.get("conditions") or []}.get(CONDITION) or {}
    if was_true and existing.get("message") == message:
        return None
    return status.condition(CONDITION, True, FAILED_CREATE_POD, message, now, generation)


def check_pod_creation(ctx: Context, jobs: Iterable[Manifest]) -> None:
    """One pass over the Pending jobs that have a child: set or clear PodsNotCreated from the Events."""
    pending = [
        (job, recorded)
        for job in jobs
        if status_of(job).get("phase") == str(JobPhase.Pending)
        and (recorded := backends.recorded_child(status_of(job))) is not None
    ]
    if not pending:
        return
    failures: dict[tuple[str, str], PodFailure] = {}
    kinds = {backend.name for _, (backend, _) in pending}
    if "pytorchjob" in kinds:
        events = ctx.kube.list_child_events(ctx.config.namespaces, FAILED_CREATE_POD, names.PYTORCHJOB_KIND)
        failures |= failures_by_child(events, ctx.clock())
    if "trainjob" in kinds:
        events = ctx.kube.list_child_events(ctx.config.namespaces, FAILED_CREATE, "Job")
        failures |= failures_by_child(events, ctx.clock(), FAILED_CREATE, trainjob_of_job)
    for job, (_, child) in pending:
        namespace = job["metadata"]["namespace"]
        failure = failures.get((namespace, child))
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
