"""Create, adopt and keep in line the PyTorchJob of a FineTuneJob. Idempotent: safe to run any number of times.

Called on create, on resume (operator start) and on every spec change. The child's name is deterministic, so a
crash between creating it and recording it in status is harmless: the next run finds it (409), checks it is
ours (ownerReference uid) and adopts it. The immutable part of the spec the child was made from is kept in an
annotation on the child, which is how later changes are recognised — across restarts and reverts.
"""

from __future__ import annotations

import json
from typing import Any

import kopf

from finetune_operator import changes, status
from finetune_operator.api import FineTuneJob, Phase
from finetune_operator.kube import ApiException, is_status, owned_by, owner_reference
from finetune_operator.reconcile.common import Context, Manifest, post_event, status_of, update_status
from finetune_operator.render import LABEL_QUEUE, render
from finetune_operator.validation import InvalidInputError, validate_manifest

APPLIED_SPEC = "finetune.dev/applied-spec"


def sync_child(ctx: Context, job: Manifest) -> None:
    """Bring the child in line with the FineTuneJob: validate, create or adopt, apply mutable changes."""
    namespace = job["metadata"]["namespace"]
    try:
        model = validate_manifest({key: job[key] for key in ("apiVersion", "kind", "metadata", "spec")})
    except InvalidInputError as error:
        mark_invalid(ctx, job, error)
        return
    rendered = render(model, trainer_image=ctx.config.trainer_image)
    # A job whose status names no child yet (a new one) has none, almost always: create straight away (a 409
    # adopts one that exists) instead of a GET that answers 404 first.
    never_created = not status_of(job).get("pytorchJobName") and not _finished(job)
    child = None if never_created else ctx.kube.get_child(namespace, rendered["metadata"]["name"])
    if child is None and _finished(job):
        return  # ended (e.g. early-stopped): never resurrect its training
    if child is None:
        child = create_or_adopt(ctx, job, model, rendered)
    elif not owned_by(child, job):
        raise kopf.PermanentError(f"PyTorchJob {child['metadata']['name']} exists and belongs to someone else")
    rejected = rejected_paths(child, model)
    apply_mutable(ctx, child, model)
    record(ctx, job, child, rejected)


def create_or_adopt(ctx: Context, job: Manifest, model: FineTuneJob, rendered: Manifest) -> Manifest:
    """Create the child; on 409 adopt the existing one if it is ours."""
    namespace = job["metadata"]["namespace"]
    manifest = dict(rendered)
    manifest["metadata"] = {
        **rendered["metadata"],
        "ownerReferences": [owner_reference(job)],
        "annotations": {APPLIED_SPEC: json.dumps(applied_spec(model), sort_keys=True, separators=(",", ":"))},
    }
    try:
        created = ctx.kube.create_child(namespace, manifest)
    except ApiException as error:
        if not is_status(error, 409):
            raise
        existing = ctx.kube.get_child(namespace, manifest["metadata"]["name"])
        if existing is None:
            raise kopf.TemporaryError("PyTorchJob vanished while adopting it", delay=1) from error
        if not owned_by(existing, job):
            raise kopf.PermanentError(
                f"PyTorchJob {manifest['metadata']['name']} exists and belongs to someone else"
            ) from error
        return existing
    post_event(ctx, job, "Normal", "Created", f"created PyTorchJob {created['metadata']['name']}")
    return created


def applied_spec(model: FineTuneJob) -> dict[str, Any]:
    return changes.immutable_part(model.spec.to_wire())


def rejected_paths(child: Manifest, model: FineTuneJob) -> list[str]:
    """Immutable fields whose value differs from what the child was created with."""
    recorded = (child["metadata"].get("annotations") or {}).get(APPLIED_SPEC)
    if recorded is None:
        return []
    return changes.changed_paths(json.loads(recorded), applied_spec(model))


def apply_mutable(ctx: Context, child: Manifest, model: FineTuneJob) -> None:
    """suspend ↔ runPolicy.suspend (the training-operator frees or recreates the pods); the Kueue queue label."""
    patch: Manifest = {}
    if bool(child["spec"].get("runPolicy", {}).get("suspend", False)) != model.spec.suspend:
        patch["spec"] = {"runPolicy": {"suspend": model.spec.suspend}}
    labels = child["metadata"].get("labels") or {}
    if labels.get(LABEL_QUEUE) != model.spec.queue_name:
        patch["metadata"] = {"labels": {LABEL_QUEUE: model.spec.queue_name}}
    if patch:
        ctx.kube.patch_child(child["metadata"]["namespace"], child["metadata"]["name"], patch)


def record(ctx: Context, job: Manifest, child: Manifest, rejected: list[str]) -> None:
    """Status after a sync: child name, generation, the spec conditions, Pending if nothing is known yet."""
    generation = job["metadata"].get("generation")
    if rejected:
        message = (
            f"{', '.join(rejected)} cannot change while the training exists; the PyTorchJob keeps the old values. "
            "Revert the change, or delete and recreate the FineTuneJob."
        )
        known = {(c.get("type"), c.get("status"), c.get("message")) for c in status_of(job).get("conditions") or []}
        if ("SpecChangeRejected", "True", message) not in known:  # once per distinct rejection, not per sync
            post_event(ctx, job, "Warning", "SpecChangeRejected", message)
        spec_condition = status.condition("SpecChangeRejected", True, "ImmutableFieldChanged", message, generation)
    else:
        spec_condition = status.condition("SpecChangeRejected", False, "SpecApplied", "", generation)

    def change(current_job: Manifest) -> Manifest:
        current = status_of(current_job)
        updates = [spec_condition]
        if _condition_true(current, "InvalidSpec"):
            updates.append(status.condition("InvalidSpec", False, "SpecValid", "", generation))
        conditions = status.merge_conditions(current.get("conditions") or [], updates)
        out: Manifest = {
            "pytorchJobName": child["metadata"]["name"],
            "observedGeneration": generation,
            "conditions": conditions,
        }
        if current.get("phase") is None or _condition_true(current, "InvalidSpec"):
            out["phase"] = str(status.phase_from_child(child))
        return out

    update_status(ctx, job["metadata"]["namespace"], job["metadata"]["name"], change, known=job)


def mark_invalid(ctx: Context, job: Manifest, error: InvalidInputError) -> None:
    """A spec only the operator can reject: Failed with every problem listed; nothing to retry."""
    message = "; ".join(str(item) for item in error.errors)
    generation = job["metadata"].get("generation")
    already = _condition_true(status_of(job), "InvalidSpec") and status_of(job).get("observedGeneration") == generation
    if already:
        return

    def change(current_job: Manifest) -> Manifest:
        current = status_of(current_job)
        invalid = status.condition("InvalidSpec", True, "InvalidSpec", message, generation)
        return {
            "phase": str(Phase.Failed),
            "observedGeneration": generation,
            "conditions": status.merge_conditions(current.get("conditions") or [], [invalid]),
        }

    post_event(ctx, job, "Warning", "InvalidSpec", message)
    update_status(ctx, job["metadata"]["namespace"], job["metadata"]["name"], change, known=job)


def _finished(job: Manifest) -> bool:
    current = status_of(job)
    return current.get("phase") in [str(phase) for phase in status.TERMINAL_PHASES] and not _condition_true(
        current, "InvalidSpec"
    )


def _condition_true(current: Manifest, condition_type: str) -> bool:
    return condition_type in status.true_types(current.get("conditions") or [])
