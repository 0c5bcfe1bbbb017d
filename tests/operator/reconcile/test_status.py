"""Pure status logic: phase from the PyTorchJob, mirrored and merged conditions, failed pods' reasons."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.api import JobPhase
from finetune_operator.reconcile.mirror import mirrored_status
from finetune_operator.reconcile.status import (
    condition,
    failure_details,
    merge_conditions,
    mirrored_conditions,
    phase_from_child,
    with_failure_details,
)

LATER = "2026-06-01T12:00:00Z"
"""The clock the status functions are handed (they never read one)."""


def child(*active: str, **status: Any) -> dict[str, Any]:
    conditions = [
        {
            "type": kind,
            "status": "True",
            "reason": f"PyTorchJob{kind}",
            "message": f"job is {kind.lower()}",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        for kind in active
    ]
    return {"metadata": {"name": "job", "namespace": "ns"}, "status": {"conditions": conditions, **status}}


@pytest.mark.parametrize(
    ("active", "phase"),
    [
        ((), JobPhase.Pending),
        (("Created",), JobPhase.Pending),
        (("Created", "Running"), JobPhase.Running),
        (("Created", "Restarting"), JobPhase.Running),
        (("Created", "Suspended"), JobPhase.Suspended),
        (("Created", "Running", "Succeeded"), JobPhase.Succeeded),
        (("Created", "Running", "Failed"), JobPhase.Failed),
    ],
)
def test_phase_from_child_conditions(active: tuple[str, ...], phase: JobPhase) -> None:
    assert phase_from_child(child(*active)) == phase


def test_false_conditions_do_not_count() -> None:
    job = child("Created")
    job["status"]["conditions"].append({"type": "Running", "status": "False"})
    assert phase_from_child(job) == JobPhase.Pending
    assert phase_from_child(None) == JobPhase.Pending


def test_mirrored_conditions_keep_kubernetes_fields_only() -> None:
    job = child("Created")
    job["status"]["conditions"][0]["lastUpdateTime"] = "x"
    (mirrored,) = mirrored_conditions(job, LATER)
    assert set(mirrored) == {"type", "status", "reason", "message", "lastTransitionTime"}


def test_merge_replaces_by_type_and_keeps_transition_time_when_status_is_unchanged() -> None:
    first = condition("SpecChangeRejected", False, "SpecApplied", "", "2026-01-01T00:00:00Z")
    same = condition("SpecChangeRejected", False, "SpecApplied", "", LATER)
    flipped = condition("SpecChangeRejected", True, "ImmutableFieldChanged", "spec.model.name", LATER)
    assert merge_conditions([first], [same])[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    (merged,) = merge_conditions([first], [flipped])
    assert merged["status"] == "True"
    assert merged["lastTransitionTime"] == LATER


def failed_pod(name: str, code: int, reason: str = "Error") -> dict[str, Any]:
    terminated = {"exitCode": code, "reason": reason}
    return {
        "metadata": {"name": name},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "pytorch", "state": {"terminated": terminated}}]},
    }


def test_failure_details_name_pod_container_and_exit_code() -> None:
    pods = [failed_pod("job-master-0", 137, "OOMKilled"), {"metadata": {"name": "ok"}, "status": {"phase": "Running"}}]
    assert failure_details(pods) == "pod job-master-0: container pytorch exited with code 137 (OOMKilled)"


def test_failure_details_reach_the_failed_condition_once() -> None:
    conditions = mirrored_conditions(child("Created", "Failed"), LATER)
    details = "pod a: container pytorch exited with code 2 (Error)"
    once = with_failure_details(conditions, details)
    twice = with_failure_details(once, details)
    failed = next(item for item in twice if item["type"] == "Failed")
    assert failed["message"].count(details) == 1
    assert next(item for item in twice if item["type"] == "Created")["message"] == "job is created"


def test_mirrored_status_sets_completion_only_when_finished() -> None:
    running = mirrored_status({}, child("Created", "Running", startTime="2026-01-01T00:00:00Z"), "", LATER)
    assert running["phase"] == "Running"
    assert running["startTime"] == "2026-01-01T00:00:00Z"
    assert "completionTime" not in running
    done = mirrored_status({}, child("Created", "Succeeded", completionTime="2026-01-01T01:00:00Z"), "", LATER)
    assert done["completionTime"] == "2026-01-01T01:00:00Z"


def test_an_early_stopped_job_is_not_overwritten_by_its_dying_child() -> None:
    assert mirrored_status({"phase": "EarlyStopped"}, child("Created", "Failed"), "", LATER) == {}
