"""Pure status logic: the FineTuneJob's phase and conditions from its PyTorchJob and pods. No I/O, no clock: the
time a condition is stamped with is passed in (the reconcile functions take it from their Context's clock).

The PyTorchJob's conditions are mirrored one to one (type, status, reason, message, lastTransitionTime); the
operator's own conditions (InvalidSpec, SpecChangeRejected, later MetricsUnavailable and EarlyStopped) are kept
alongside them. The phase is derived, terminal states first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from finetune_contract import names
from finetune_operator.api import JobPhase
from finetune_operator.children import backends

CHILD_CONDITION_TYPES = ("Created", "Running", "Restarting", "Succeeded", "Suspended", "Failed")
TERMINAL_PHASES = (JobPhase.Succeeded, JobPhase.Failed, JobPhase.EarlyStopped)
Condition = dict[str, Any]


def rfc3339(moment: datetime) -> str:
    """RFC 3339 with second precision in UTC, as Kubernetes writes timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def true_types(conditions: Iterable[Mapping[str, Any]]) -> set[str]:
    return {str(condition.get("type")) for condition in conditions if condition.get("status") == "True"}


def phase_from_child(child: Mapping[str, Any] | None) -> JobPhase:
    """The phase a child's conditions imply (either kind): terminal first, then suspended, running, pending."""
    if child is None:
        return JobPhase.Pending
    return backends.phase_from_conditions(backends.backend_of_child(child).conditions(child))


QUEUED = "Queued"


def kueue_holds(child: Mapping[str, Any], user_suspended: bool | None) -> bool:
    """The child is suspended by Kueue, waiting for admission: it is queued (its label) and suspended, and the
    user did not ask for a suspend."""
    labels = (child.get("metadata") or {}).get("labels") or {}
    backend = backends.backend_of_child(child)
    return bool(labels.get(names.QUEUE_LABEL)) and backend.suspended(child) and user_suspended is False


def phase_for(child: Mapping[str, Any] | None, user_suspended: bool | None) -> JobPhase:
    """phase_from_child, except that a child Kueue holds suspended is Pending (queued), not Suspended."""
    phase = phase_from_child(child)
    if child is not None and phase == JobPhase.Suspended and kueue_holds(child, user_suspended):
        return JobPhase.Pending
    return phase


def queued_conditions(
    current: Mapping[str, Any], child: Mapping[str, Any], phase: JobPhase, now: str
) -> list[Condition]:
    """Queued=True while Kueue holds the child for admission (naming the LocalQueue); False once it runs."""
    was = QUEUED in true_types(current.get("conditions") or [])
    queue = ((child.get("metadata") or {}).get("labels") or {}).get(names.QUEUE_LABEL)
    kind = backends.backend_of_child(child).kind
    if phase == JobPhase.Pending and queue and backends.backend_of_child(child).suspended(child):
        message = f"waiting for Kueue to admit it from LocalQueue {queue}; Kueue keeps the {kind} suspended until then"
        return [condition(QUEUED, True, "WaitingForAdmission", message, now)]
    if was and phase in (JobPhase.Running, JobPhase.Succeeded, JobPhase.Failed):
        return [condition(QUEUED, False, "Admitted", f"admitted by Kueue from LocalQueue {queue}", now)]
    return []


def mirrored_conditions(child: Mapping[str, Any], now: str) -> list[Condition]:
    """The child's conditions in our form (only the fields Kubernetes conditions have); `now` stands in for a
    missing transition time."""
    out = []
    for condition in backends.backend_of_child(child).conditions(child):
        if condition.get("type") not in CHILD_CONDITION_TYPES:
            continue
        out.append(
            {
                "type": condition["type"],
                "status": condition.get("status", "Unknown"),
                "reason": condition.get("reason", ""),
                "message": condition.get("message", ""),
                "lastTransitionTime": condition.get("lastTransitionTime") or condition.get("lastUpdateTime") or now,
            }
        )
    return out


def merge_conditions(current: Sequence[Condition], updates: Sequence[Condition]) -> list[Condition]:
    """Replace conditions by type; a condition whose status did not change keeps its lastTransitionTime (updates
    carry theirs, made by `condition`)."""
    merged = {str(condition["type"]): dict(condition) for condition in current}
    for update in updates:
        previous = merged.get(str(update["type"]))
        condition = dict(update)
        if previous and previous.get("status") == condition.get("status") and previous.get("lastTransitionTime"):
            condition["lastTransitionTime"] = previous["lastTransitionTime"]
        merged[str(update["type"])] = condition
    return list(merged.values())


def condition(
    condition_type: str, status: bool, reason: str, message: str, now: str, generation: int | None = None
) -> Condition:
    """A condition in the Kubernetes form, stamped `now` (kept by merge_conditions when the status is unchanged)."""
    out: Condition = {
        "type": condition_type,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def failure_details(pods: Iterable[Mapping[str, Any]]) -> str:
    """Why pods failed, from their container statuses: 'pod X: container pytorch exited with code 137 (Error)'."""
    lines = []
    for pod in pods:
        if pod.get("status", {}).get("phase") != "Failed":
            continue
        name = pod.get("metadata", {}).get("name", "?")
        statuses = pod.get("status", {}).get("containerStatuses") or []
        found = False
        for status in statuses:
            terminated = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get(
                "terminated"
            )
            if terminated:
                found = True
                reason = terminated.get("reason") or "Error"
                message = f": {terminated['message']}" if terminated.get("message") else ""
                lines.append(
                    f"pod {name}: container {status.get('name')} exited with code "
                    f"{terminated.get('exitCode')} ({reason}){message}"
                )
        if not found:
            pod_reason = pod.get("status", {}).get("reason") or "Failed"
            lines.append(f"pod {name}: {pod_reason} {pod.get('status', {}).get('message', '')}".rstrip())
    return "; ".join(lines)


def with_failure_details(conditions: list[Condition], details: str) -> list[Condition]:
    """Append pod failure details to the Failed condition's message (the child's says only 'replica failed')."""
    if not details:
        return conditions
    out = []
    for item in conditions:
        if item["type"] == "Failed" and item["status"] == "True" and details not in item.get("message", ""):
            item = {**item, "message": f"{item.get('message', '')} {details}".strip()}
        out.append(item)
    return out


def progress(step: int | None, total: int | None) -> str | None:
    if step is None or not total:
        return None
    return f"{step}/{total}"
