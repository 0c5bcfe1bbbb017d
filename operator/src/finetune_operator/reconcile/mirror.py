"""Mirror a child's (PyTorchJob's or TrainJob's) state into its FineTuneJob's status: phase, conditions, times,
failed pods' reasons."""

from __future__ import annotations

from collections.abc import Callable

from finetune_operator.api import JobPhase
from finetune_operator.children import backends
from finetune_operator.decisions.recovery import classify
from finetune_operator.kube import parent_of
from finetune_operator.metrics.operator import instrumented
from finetune_operator.reconcile import pod_creation, recovery, status
from finetune_operator.reconcile.common import Context, Manifest, status_of, update_status


@instrumented("mirror")
def mirror_child(
    ctx: Context,
    child: Manifest,
    cached: Callable[[str, str], Manifest | None] | None = None,
    schedule: Callable[[str, str, float], object] | None = None,
) -> None:
    """Called on every PyTorchJob event; a no-op write when nothing changed.

    `cached(namespace, name)`: the FineTuneJob as last seen on the watch, tried before a GET (update_status guards
    every write with its resourceVersion, so a stale copy costs a conflict and a fresh read, never a lost write).
    A failed child whose failure a restart can help puts the job in recovery instead (reconcile/recovery.py), and
    `schedule(namespace, name, delay)` asks for the sync that restarts it when the backoff is over."""
    parent = parent_of(child)
    if parent is None:
        return
    namespace, name, uid = parent
    details = ""
    failure = None
    if status.phase_from_child(child) == JobPhase.Failed:
        pods = ctx.kube.child_pods(namespace, child["metadata"]["name"], backends.backend_of_child(child))
        details = status.failure_details(pods)
        failure = classify(pods)
    restart_in: list[float] = []

    def change(job: Manifest) -> Manifest | None:
        restart_in.clear()
        if job["metadata"].get("uid") != uid:
            return None  # a new FineTuneJob of the same name; this child belongs to the old one
        if str(child["metadata"].get("uid")) in recovery.replaced_uids(status_of(job)):
            return None  # the failed child of a restart, on its way out
        if failure is not None:
            planned = recovery.planned_restart(job, child, failure, ctx.now())
            if planned is not None:
                restart_in.append(recovery.seconds_left({**job, "status": status_of(job) | planned}, ctx.clock()))
                return planned
            note = details + recovery.exhausted_note(job, failure)
            return mirrored_status(status_of(job), child, note, ctx.now(), _user_suspended(job))
        return mirrored_status(status_of(job), child, details, ctx.now(), _user_suspended(job))

    known = cached(namespace, name) if cached else None
    update_status(ctx, namespace, name, change, known=known, confirm_noop=False)
    if restart_in and schedule is not None:
        schedule(namespace, name, restart_in[0])


def mirrored_status(
    current: Manifest, child: Manifest, details: str, now: str, user_suspended: bool | None = None
) -> Manifest:
    """The status fields the child determines (pure; `now` stamps new conditions and a missing completion time).

    `user_suspended`: the job's spec.suspend (None: unknown, taken as the child's own suspend). A child Kueue holds
    suspended while the user did not ask for it is queued, not suspended: phase Pending, condition Queued."""
    if current.get("phase") == str(JobPhase.EarlyStopped):
        return {}  # the operator ended this run; the child's last words do not change that
    phase = status.phase_for(child, user_suspended)
    conditions = status.with_failure_details(status.mirrored_conditions(child, now), details)
    conditions.extend(status.queued_conditions(current, child, phase, now))
    if phase != JobPhase.Pending and pod_creation.CONDITION in status.true_types(current.get("conditions") or []):
        conditions.append(status.condition(pod_creation.CONDITION, False, "PodsCreated", "", now))
    out: Manifest = {
        "phase": str(phase),
        backends.backend_of_child(child).status_field: child["metadata"]["name"],
        "conditions": status.merge_conditions(current.get("conditions") or [], conditions),
    }
    child_status = child.get("status") or {}
    if child_status.get("startTime"):
        out["startTime"] = child_status["startTime"]
    elif phase == JobPhase.Running and not current.get("startTime"):
        out["startTime"] = now  # a TrainJob has no start time: the first time it is seen running stands in
    if phase in (JobPhase.Succeeded, JobPhase.Failed):
        out["completionTime"] = child_status.get("completionTime") or current.get("completionTime") or now
    return out


def _user_suspended(job: Manifest) -> bool:
    return bool((job.get("spec") or {}).get("suspend", False))
