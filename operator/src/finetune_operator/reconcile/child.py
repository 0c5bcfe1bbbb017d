"""Create, adopt and keep in line the child (PyTorchJob or TrainJob) of a FineTuneJob. Idempotent: safe to run
any number of times.

Called for a new job, at operator start and on every spec change (reconcile/jobs.py decides which watch events).
The child's name is a function of the job's name only, and recorded in status: a crash between creating it and
recording it is harmless (the next run finds it: 409, checks it is ours by ownerReference uid, adopts it), and no
spec edit can make a second one. The immutable part of the spec the child was made from is kept in an
annotation on the child, which is how later changes are recognised — across restarts and reverts.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NoReturn

import kopf

from finetune_contract import names
from finetune_operator.api import FineTuneJob, JobPhase, changes
from finetune_operator.api.validation import InvalidInputError, validate_manifest
from finetune_operator.children import backends
from finetune_operator.children.trainjob import UnsupportedFieldError
from finetune_operator.kube import ApiException, is_status, owned_by, owner_reference
from finetune_operator.reconcile import recovery, status
from finetune_operator.reconcile.common import Context, Manifest, post_event, status_of, update_status

APPLIED_SPEC = "finetune.dev/applied-spec"
INVALID_SPEC = "InvalidSpec"
CHILD_CONFLICT = "ChildConflict"
FOREIGN_TERMINATING_RETRY_SECONDS = 2
FOREIGN_CHILD_RETRY_SECONDS = 10
RETRIABLE_CLIENT_ERRORS = (408, 409, 429)
KUEUE_RETRY_SECONDS = 2
KUEUE_GRACE_SECONDS = 10.0
"""How long after a queued child's creation its Kueue Workload is waited for (Kueue makes it within a second)."""


def sync_child(ctx: Context, job: Manifest) -> None:
    """Bring the child in line with the FineTuneJob: validate, create or adopt, apply mutable changes."""
    namespace = job["metadata"]["namespace"]
    try:
        model = validate_manifest({key: job[key] for key in ("apiVersion", "kind", "metadata", "spec")})
    except InvalidInputError as error:
        mark_invalid(ctx, job, INVALID_SPEC, "; ".join(str(item) for item in error.errors))
        return
    # The name recorded in status is the child's for life; a re-render is only for a job that recorded none.
    backend = ctx.backend_of(job)
    recorded = backends.child_name_of(status_of(job))
    try:
        rendered = backend.render(model, trainer_image=ctx.config.trainer_image, name=recorded)
    except UnsupportedFieldError as error:
        mark_invalid(ctx, job, INVALID_SPEC, f"{error.path}: {error.rule} (got {error.value!r})")
        return
    # A job whose status names no child yet (a new one) has none, almost always: create straight away (a 409
    # adopts one that exists) instead of a GET that answers 404 first.
    never_created = not recorded and not is_finished(job)
    child = None if never_created else ctx.kube.get_child(namespace, rendered["metadata"]["name"], backend)
    if child is None and is_finished(job):
        return  # ended (e.g. early-stopped): never resurrect its training
    if child is None:
        child = create_or_adopt(ctx, job, model, rendered)
        if child is None:
            return  # refused by the API server: the job is Failed with the server's reason
    elif not owned_by(child, job):
        wait_for_foreign_child(ctx, job, child)
    elif recovery.recovering(status_of(job)) is not None and (
        status.phase_from_child(child) == JobPhase.Failed or child["metadata"].get("deletionTimestamp")
    ):
        recovery.restart(ctx, job, child)  # raises: called again until the new child exists
    rejected = rejected_paths(child, model)
    waiting_for_kueue = apply_mutable(ctx, child, model)
    record(ctx, job, child, rejected)
    if waiting_for_kueue:
        raise kopf.TemporaryError("waiting for Kueue to make the child's Workload", delay=KUEUE_RETRY_SECONDS)


def create_or_adopt(ctx: Context, job: Manifest, model: FineTuneJob, rendered: Manifest) -> Manifest | None:
    """Create the child; on 409 adopt the existing one if it is ours. None when the API server refuses it.

    A refusal other than a conflict or throttling (e.g. 422 from a schema or an admission policy) is not fixed by
    retrying: the job ends Failed with the server's words, and a spec change tries again.
    """
    namespace = job["metadata"]["namespace"]
    manifest = dict(rendered)
    manifest["metadata"] = {
        **rendered["metadata"],
        "ownerReferences": [owner_reference(job)],
        "annotations": {APPLIED_SPEC: json.dumps(applied_spec(model), sort_keys=True, separators=(",", ":"))},
    }
    name = manifest["metadata"]["name"]
    backend = backends.backend_of_child(manifest)
    kind = backend.kind
    try:
        created = ctx.kube.create_child(namespace, manifest)
    except ApiException as error:
        if is_refusal(error):
            mark_invalid(ctx, job, "ChildRejected", f"the API server refused {kind} {name}: {api_message(error)}")
            return None
        if not is_status(error, 409):
            raise
        existing = ctx.kube.get_child(namespace, name, backend)
        if existing is None:
            raise kopf.TemporaryError(f"{kind} vanished while adopting it", delay=1) from error
        if not owned_by(existing, job):
            wait_for_foreign_child(ctx, job, existing)
        if existing["metadata"].get("deletionTimestamp"):  # our failed child, still going after a restart
            raise kopf.TemporaryError(f"{kind} {name} is still being deleted", delay=2) from error
        return existing
    return created  # its Event is the phase transition's ("phase - -> Pending: its PyTorchJob is ...")


def wait_for_foreign_child(ctx: Context, job: Manifest, child: Manifest) -> NoReturn:
    """The child's name is held by an object this job does not own: say so on the job and retry later.

    Usually the child of an earlier FineTuneJob of the same name, still being garbage-collected: it goes soon,
    so the retry is quick. Otherwise someone else's PyTorchJob: the job waits (Pending, condition ChildConflict)
    until it is deleted, and never adopts or overwrites it.
    """
    name, kind = child["metadata"]["name"], backends.backend_of_child(child).kind
    if child["metadata"].get("deletionTimestamp"):
        reason, delay = "PreviousChildTerminating", FOREIGN_TERMINATING_RETRY_SECONDS
        message = f"{kind} {name} of an earlier FineTuneJob of this name is being deleted; waiting for it to go"
    else:
        reason, delay = "ChildNameTaken", FOREIGN_CHILD_RETRY_SECONDS
        message = (
            f"{kind} {name} exists and is not owned by this FineTuneJob; "
            "it is left alone, and this job's training starts once it is deleted"
        )
    generation = job["metadata"].get("generation")
    conflict = status.condition(CHILD_CONFLICT, True, reason, message, ctx.now(), generation)
    if (CHILD_CONFLICT, "True", reason) not in _condition_keys(status_of(job)):
        post_event(ctx, job, "Warning" if reason == "ChildNameTaken" else "Normal", reason, message)

    def change(current_job: Manifest) -> Manifest:
        current = status_of(current_job)
        out: Manifest = {"conditions": status.merge_conditions(current.get("conditions") or [], [conflict])}
        if current.get("phase") is None:
            out["phase"] = str(JobPhase.Pending)
        return out

    update_status(ctx, job["metadata"]["namespace"], job["metadata"]["name"], change, known=job)
    raise kopf.TemporaryError(message, delay=delay)


def is_refusal(error: ApiException) -> bool:
    """A 4xx that a retry of the same request cannot fix (not a conflict, timeout or throttling)."""
    code = getattr(error, "status", None) or 0
    return 400 <= code < 500 and code not in RETRIABLE_CLIENT_ERRORS


def api_message(error: ApiException) -> str:
    """The API server's own explanation (the Status object's message), else the HTTP reason."""
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{error.status} {error.reason}"


def applied_spec(model: FineTuneJob) -> dict[str, Any]:
    return changes.immutable_part(model.spec.to_wire())


def rejected_paths(child: Manifest, model: FineTuneJob) -> list[str]:
    """Immutable fields whose value differs from what the child was created with."""
    recorded = (child["metadata"].get("annotations") or {}).get(APPLIED_SPEC)
    if recorded is None:
        return []
    return changes.changed_paths(json.loads(recorded), applied_spec(model))


def apply_mutable(ctx: Context, child: Manifest, model: FineTuneJob) -> bool:
    """suspend ↔ the child's suspend (its controller frees or recreates the pods); the Kueue queue label.

    Who owns the child's suspend: without a queue, the operator (it is the job's spec.suspend). With a queue and
    Kueue installed, Kueue: its webhook suspends the child at creation, it unsuspends it on admission and
    suspends it again on preemption — so the operator never writes it, and a user's spec.suspend goes to Kueue's
    own switch, the child's Workload `spec.active` (false: Kueue evicts and keeps it suspended; true: queued
    again). Writing the child's suspend instead would fight Kueue: it unsuspends an admitted job that is
    suspended, and suspends an unadmitted one that is not. Kueue makes the Workload a moment after the child:
    until then (KUEUE_GRACE_SECONDS of the child's life) a change waits — True: call again; a queued child that
    still has no Workload after that is not Kueue's (Kueue stopped, or its namespace not managed), and the
    operator writes its suspend itself."""
    backend = backends.backend_of_child(child)
    namespace, name = child["metadata"]["namespace"], child["metadata"]["name"]
    patch: Manifest = {}
    labels = child["metadata"].get("labels") or {}
    queued = bool(labels.get(names.QUEUE_LABEL)) and bool(model.spec.queue_name)
    if queued:
        kueue, workload = ctx.kube.child_workload(namespace, str(child["metadata"].get("uid")))
    else:
        kueue, workload = False, None
    waiting = False
    differs = backend.suspended(child) != model.spec.suspend
    if workload is not None:
        if bool(workload.get("spec", {}).get("active", True)) == model.spec.suspend:
            ctx.kube.set_workload_active(namespace, workload["metadata"]["name"], not model.spec.suspend)
    elif kueue and _age_seconds(child, ctx.clock()) < KUEUE_GRACE_SECONDS:
        # A suspend must reach the Workload once it exists (Kueue would admit and unsuspend the child otherwise).
        waiting = differs or model.spec.suspend
    elif differs:
        patch.update(backend.suspend_patch(model.spec.suspend))
    if labels.get(names.QUEUE_LABEL) != model.spec.queue_name:
        patch["metadata"] = {"labels": {names.QUEUE_LABEL: model.spec.queue_name}}
    if patch:
        ctx.kube.patch_child(namespace, name, patch, backend)
    return waiting


def _age_seconds(obj: Manifest, now: datetime) -> float:
    """Seconds since the object was created (0 when the server has not said: taken as new)."""
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return 0.0
    return (now - datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))).total_seconds()


def record(ctx: Context, job: Manifest, child: Manifest, rejected: list[str]) -> None:
    """Status after a sync: child name, generation, the spec conditions, Pending if nothing is known yet."""
    generation = job["metadata"].get("generation")
    if rejected:
        message = (
            f"{', '.join(rejected)} cannot change while the training exists; the "
            f"{backends.backend_of_child(child).kind} keeps the old values. "
            "Revert the change, or delete and recreate the FineTuneJob."
        )
        known = {(c.get("type"), c.get("status"), c.get("message")) for c in status_of(job).get("conditions") or []}
        if ("SpecChangeRejected", "True", message) not in known:  # once per distinct rejection, not per sync
            post_event(ctx, job, "Warning", "SpecChangeRejected", message)
        spec_condition = status.condition(
            "SpecChangeRejected", True, "ImmutableFieldChanged", message, ctx.now(), generation
        )
    else:
        spec_condition = status.condition("SpecChangeRejected", False, "SpecApplied", "", ctx.now(), generation)

    def change(current_job: Manifest) -> Manifest:
        current = status_of(current_job)
        updates = [spec_condition]
        if _condition_true(current, INVALID_SPEC):
            updates.append(status.condition(INVALID_SPEC, False, "SpecValid", "", ctx.now(), generation))
        if _condition_true(current, CHILD_CONFLICT):
            updates.append(status.condition(CHILD_CONFLICT, False, "ChildOwned", "", ctx.now(), generation))
        conditions = status.merge_conditions(current.get("conditions") or [], updates)
        out: Manifest = {
            backends.backend_of_child(child).status_field: child["metadata"]["name"],
            "observedGeneration": generation,
            "conditions": conditions,
        }
        if current.get("phase") is None or _condition_true(current, INVALID_SPEC):
            out["phase"] = str(status.phase_for(child, bool(job.get("spec", {}).get("suspend", False))))
        restarted = recovery.after_new_child(current | {"conditions": conditions}, child, ctx.now())
        return out | restarted

    update_status(ctx, job["metadata"]["namespace"], job["metadata"]["name"], change, known=job)


def mark_invalid(ctx: Context, job: Manifest, reason: str, message: str) -> None:
    """A spec that cannot run (refused by our validation or by the API server): Failed with the reason, once.

    The condition is InvalidSpec either way, so a later spec change is tried again (see `_finished`)."""
    generation = job["metadata"].get("generation")
    current = status_of(job)
    already = (INVALID_SPEC, "True", reason) in _condition_keys(current) and current.get(
        "observedGeneration"
    ) == generation
    if already:
        return

    def change(current_job: Manifest) -> Manifest:
        current = status_of(current_job)
        invalid = status.condition(INVALID_SPEC, True, reason, message, ctx.now(), generation)
        return {
            "phase": str(JobPhase.Failed),
            "observedGeneration": generation,
            "conditions": status.merge_conditions(current.get("conditions") or [], [invalid]),
        }

    post_event(ctx, job, "Warning", reason, message)
    update_status(ctx, job["metadata"]["namespace"], job["metadata"]["name"], change, known=job)


def _condition_keys(current: Manifest) -> set[tuple[str, str, str]]:
    return {(str(c.get("type")), str(c.get("status")), str(c.get("reason"))) for c in current.get("conditions") or []}


def is_finished(job: Manifest) -> bool:
    """Ended (Succeeded, Failed by the child, EarlyStopped): never resurrected. A job Failed for an invalid spec is
    not finished: a corrected spec runs."""
    current = status_of(job)
    return current.get("phase") in [str(phase) for phase in status.TERMINAL_PHASES] and not _condition_true(
        current, INVALID_SPEC
    )


def _condition_true(current: Manifest, condition_type: str) -> bool:
    return condition_type in status.true_types(current.get("conditions") or [])
