"""Automatic resume: a run that failed for the cluster's reasons gets a new child (PyTorchJob or TrainJob), which
resumes from the newest complete checkpoint (the trainer finds it in its output directory).

The steps, each safe to repeat and to interrupt (an operator restart picks up from the job's status):
1. The mirror sees the child Failed; `decisions.recovery.classify` says whether a restart can help. If it can and
   restarts are left, the job goes to Pending with the condition Recovering=True (its reason the failure's class,
   its lastTransitionTime the start of the backoff) instead of Failed, and a retry is scheduled at the backoff's end.
2. At the backoff's end a sync counts the restart in status (restarts, restartHistory with the failed child's uid:
   counted once per child, whatever happens next), posts a `Restarting` Event, and deletes the failed child in the
   foreground (it goes only when its pods are gone, so the new pods' names are free).
3. The child's DELETED event syncs the job: no child, not finished, so it is created again under the same name;
   that sync sets Recovering=False (reason Restarted) and drops the old child's mirrored conditions.
While the failed child is being deleted its events are ignored (its uid is in the history).
"""

from __future__ import annotations

import logging
from datetime import datetime

import kopf
from pydantic import ValidationError

from finetune_operator.api import JobPhase, RecoverySpec
from finetune_operator.children import backends
from finetune_operator.decisions.recovery import Failure, backoff_seconds
from finetune_operator.reconcile import status
from finetune_operator.reconcile.common import Context, Manifest, post_event, status_of, update_status

logger = logging.getLogger("finetune_operator.reconcile.recovery")
RECOVERING = "Recovering"
HISTORY_KEPT = 16
DELETION_POLL_SECONDS = 2
ENDED = (str(JobPhase.EarlyStopped), str(JobPhase.Failed), str(JobPhase.Succeeded))


def settings(job: Manifest) -> RecoverySpec:
    """The job's recovery settings (the defaults when its spec is unreadable: that job fails validation anyway)."""
    try:
        return RecoverySpec.model_validate((job.get("spec") or {}).get("recovery") or {})
    except ValidationError:
        return RecoverySpec()


def replaced_uids(current: Manifest) -> set[str]:
    return {str(record.get("replacedUid")) for record in current.get("restartHistory") or []}


def recovering(current: Manifest) -> Manifest | None:
    """The Recovering condition when it is True."""
    for condition in current.get("conditions") or []:
        if condition.get("type") == RECOVERING and condition.get("status") == "True":
            found: Manifest = condition
            return found
    return None


def planned_restart(job: Manifest, child: Manifest, failure: Failure, now: str) -> Manifest | None:
    """Status fields that put a failed run on its way to a restart (pure); None when it stays Failed: the failure
    is the run's own, the job was early-stopped, or no restart is left."""
    current = status_of(job)
    if current.get("phase") in ENDED or not failure.retriable:
        return None  # an ended job stays ended: e.g. one that failed before this operator version, at its start
    config = settings(job)
    done = int(current.get("restarts") or 0)
    if done >= config.max_restarts:
        return None
    wait = backoff_seconds(done, config.backoff_seconds, config.max_backoff_seconds)
    message = (
        f"restart {done + 1} of {config.max_restarts} in {wait}s, resuming from the newest checkpoint: "
        f"{failure.message}"
    )[:1024]
    condition = status.condition(RECOVERING, True, failure.reason, message, now)
    return {
        "phase": str(JobPhase.Pending),
        backends.backend_of_child(child).status_field: child["metadata"]["name"],
        "conditions": status.merge_conditions(current.get("conditions") or [], [condition]),
    }


def exhausted_note(job: Manifest, failure: Failure) -> str:
    """Said on the Failed condition of a run the cluster broke that is not restarted any more."""
    if not failure.retriable:
        return ""
    config = settings(job)
    if config.max_restarts == 0:
        return "; not restarted: spec.recovery.maxRestarts is 0"
    done = int(status_of(job).get("restarts") or 0)
    return f"; not restarted: {done} of {config.max_restarts} automatic restarts used"


def seconds_left(job: Manifest, now: datetime) -> float:
    """Of the backoff that started when the Recovering condition turned True."""
    current = status_of(job)
    condition = recovering(current)
    if condition is None:
        return 0.0
    config = settings(job)
    wait = backoff_seconds(int(current.get("restarts") or 0), config.backoff_seconds, config.max_backoff_seconds)
    started = _parse(str(condition.get("lastTransitionTime") or ""))
    if started is None:
        return 0.0
    return max(0.0, wait - (now - started).total_seconds())


def restart(ctx: Context, job: Manifest, child: Manifest) -> None:
    """Steps 2 of the module's doc for a job in recovery whose failed child still exists. Raises TemporaryError to
    be called again (the backoff not over, or the child still being deleted)."""
    namespace, name = job["metadata"]["namespace"], child["metadata"]["name"]
    uid = str(child["metadata"].get("uid"))
    terminating = bool(child["metadata"].get("deletionTimestamp"))
    if uid not in replaced_uids(status_of(job)):
        left = 0.0 if terminating else seconds_left(job, ctx.clock())  # deleted by someone else: it goes anyway
        if left > 0:
            raise kopf.TemporaryError(f"restart of {name} in {left:.0f}s", delay=left)
        count_restart(ctx, job, uid)
    backend = backends.backend_of_child(child)
    if terminating:
        raise kopf.TemporaryError(f"{backend.kind} {name} is being deleted for a restart", delay=DELETION_POLL_SECONDS)
    logger.info("deleting failed %s %s/%s (uid %s) to restart it", backend.kind, namespace, name, uid)
    ctx.kube.delete_child(namespace, name, uid=uid, foreground=True, backend=backend)
    raise kopf.TemporaryError(f"waiting for {backend.kind} {name} to go", delay=DELETION_POLL_SECONDS)


def count_restart(ctx: Context, job: Manifest, uid: str) -> None:
    """restarts + 1 and a history record, once per failed child (guarded by its uid); then one Event."""
    condition = recovering(status_of(job)) or {}
    record = {
        "time": ctx.now(),
        "reason": str(condition.get("reason") or "Unknown"),
        "message": str(condition.get("message") or "")[:1024],
        "replacedUid": uid,
    }

    def change(current_job: Manifest) -> Manifest | None:
        current = status_of(current_job)
        if uid in replaced_uids(current):
            return None
        history = [*(current.get("restartHistory") or []), record][-HISTORY_KEPT:]
        return {"restarts": int(current.get("restarts") or 0) + 1, "restartHistory": history}

    written = update_status(ctx, job["metadata"]["namespace"], job["metadata"]["name"], change, known=job)
    if written is not None:
        done = int(status_of(written).get("restarts") or 0) + 1
        post_event(ctx, job, "Warning", "Restarting", f"restart {done}: {record['message']}")


def after_new_child(current: Manifest, child: Manifest, now: str) -> Manifest:
    """Status fields once a new child exists after a restart (pure): recovery done, the old child's conditions
    dropped (its Failed condition described the run that was replaced; the history keeps why)."""
    if recovering(current) is None or str(child["metadata"].get("uid")) in replaced_uids(current):
        return {}
    kept = [c for c in current.get("conditions") or [] if c.get("type") not in status.CHILD_CONDITION_TYPES]
    done = int(current.get("restarts") or 0)
    message = f"restart {done}: {backends.backend_of_child(child).kind} {child['metadata']['name']} created again"
    return {
        "phase": str(status.phase_from_child(child)),
        "conditions": status.merge_conditions(kept, [status.condition(RECOVERING, False, "Restarted", message, now)]),
    }


def _parse(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
