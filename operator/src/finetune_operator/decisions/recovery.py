"""Was a failed run the cluster's fault or its own? Pure: pods in, a classification out; and the restart backoff.

Restarting is worth it only when the same recipe can succeed on a second try: the pod was taken away (evicted for
node pressure, preempted by the scheduler or Kueue, its node lost or shut down) or the trainer was killed from
outside (SIGKILL / SIGTERM — a host OOM killer, a preemption that killed the process before the pod's status said
why). Everything else would fail again and burn GPU-hours doing it: the trainer's own verdicts (exit 2: bad recipe
or data; exit 3: non-finite loss), any other exit code, and an OOM kill by the container's own memory limit (the
same batch needs the same memory).

When several pods failed, one taken away is enough: the other ranks of a multi-node run die of it (NCCL errors,
exit 1), and those are consequences, not causes. A pod being deleted (a drain, `kubectl delete pod`) or a failed
run whose failed pod is gone altogether was taken away by whoever deleted it — but only when no pod failed on its
own: the training-operator deletes the still-running pods of a job that failed (cleanPodPolicy), and that must not
turn a bug into a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from finetune_contract import names

POD_REASONS = {
    "Evicted": "PodEvicted",
    "Preempting": "PodPreempted",
    "NodeLost": "NodeLost",
    "Shutdown": "NodeShutdown",
    "NodeShutdown": "NodeShutdown",
    "Terminated": "NodeShutdown",
    "UnexpectedAdmissionError": "PodDisrupted",
}
"""A failed pod's status.reason (set by the kubelet or the node lifecycle controller) → our restart reason."""
DISRUPTION_REASONS = {
    "PreemptionByScheduler": "PodPreempted",
    "PreemptionByKueue": "PodPreempted",
    "EvictionByEvictionAPI": "PodEvicted",
    "DeletionByTaintManager": "NodeLost",
    "DeletionByPodGC": "NodeLost",
    "TerminationByKubelet": "NodeShutdown",
}
"""The DisruptionTarget pod condition's reasons (Kubernetes ≥ 1.26) → our restart reason; others: PodDisrupted."""
KILLED_EXIT_CODES = {137: "SIGKILL", 143: "SIGTERM"}
WEAK_REASONS = ("PodDeleted", "PodGone")
"""Taken away, as far as anyone can tell — but a pod is also deleted by the training-operator itself once the job
failed (cleanPodPolicy), so these explain a failure only when no pod failed on its own."""
TRAINER_EXIT_CODES = {2: "bad recipe or data", 3: "non-finite loss"}
TRAINER_CONTAINERS = (names.TRAINER_CONTAINER, names.TRAINJOB_CONTAINER)
"""The trainer's container in a PyTorchJob's pods and in a TrainJob's."""


@dataclass(frozen=True)
class Failure:
    """Why the run failed, and whether a restart can help."""

    retriable: bool
    reason: str
    message: str


def classify(pods: Iterable[Mapping[str, Any]]) -> Failure:
    """The failure of a run whose PyTorchJob failed, from its pods (any order)."""
    causes: list[Failure] = []
    for pod in pods:
        cause = pod_failure(pod)
        if cause is not None:
            causes.append(cause)
    for chosen in (
        [cause for cause in causes if cause.retriable and cause.reason not in WEAK_REASONS],
        [cause for cause in causes if not cause.retriable],
        causes,
    ):
        if chosen:
            return chosen[0]
    # The child failed and no failed pod is left to say why: someone deleted it (a drain, a preemption, the pod
    # garbage collector after a lost node, a person) — the run was taken away, as by an eviction.
    return Failure(True, "PodGone", "the failed pod is gone (deleted: a drain, a preemption, a lost node, by hand)")


def pod_failure(pod: Mapping[str, Any]) -> Failure | None:
    """One pod's failure; None for a pod that did not fail."""
    status = pod.get("status") or {}
    name = (pod.get("metadata") or {}).get("name", "?")
    disruption = _condition(status, "DisruptionTarget")
    if disruption is not None:
        reason = DISRUPTION_REASONS.get(str(disruption.get("reason")), "PodDisrupted")
        return Failure(True, reason, f"pod {name}: {disruption.get('reason')}: {disruption.get('message', '')}".strip())
    if status.get("phase") != "Failed":
        return None
    pod_reason = str(status.get("reason") or "")
    if pod_reason in POD_REASONS:
        return Failure(True, POD_REASONS[pod_reason], f"pod {name}: {pod_reason}: {status.get('message', '')}".strip())
    terminated = _trainer_termination(status)
    deleted = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    if terminated is None:
        if deleted:
            return Failure(True, "PodDeleted", f"pod {name} was deleted while it ran")
        return Failure(False, pod_reason or "PodFailed", f"pod {name} failed: {status.get('message', '')}".strip())
    code = terminated.get("exitCode")
    why = str(terminated.get("reason") or "")
    if why == "OOMKilled":
        return Failure(False, "OOMKilled", f"pod {name}: the trainer exceeded its container's memory limit")
    if deleted and code not in TRAINER_EXIT_CODES:
        return Failure(True, "PodDeleted", f"pod {name} was deleted while it ran (the trainer exited {code})")
    if code in KILLED_EXIT_CODES:
        return Failure(True, "Killed", f"pod {name}: the trainer was killed ({KILLED_EXIT_CODES[code]}, exit {code})")
    what = TRAINER_EXIT_CODES.get(code) if isinstance(code, int) else None
    detail = f" ({what})" if what else ""
    return Failure(False, "TrainerFailed", f"pod {name}: the trainer exited with code {code}{detail}")


def backoff_seconds(restarts_done: int, base: int, cap: int) -> int:
    """Wait before the next restart: base, twice that, four times … capped."""
    return int(min(cap, base * 2 ** min(restarts_done, 30)))


def _condition(status: Mapping[str, Any], condition_type: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == condition_type and condition.get("status") == "True":
            found: Mapping[str, Any] = condition
            return found
    return None


def _trainer_termination(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The trainer container's termination record (its current or last state)."""
    for container in status.get("containerStatuses") or []:
        if container.get("name") not in TRAINER_CONTAINERS:
            continue
        state = container.get("state") or {}
        last = container.get("lastState") or {}
        found: Mapping[str, Any] | None = state.get("terminated") or last.get("terminated")
        return found
    return None
