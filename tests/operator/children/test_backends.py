"""The facts that differ between the child kinds, and how `--backend auto` chooses."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.api import JobPhase
from finetune_operator.children.backends import (
    CHILD_CRDS,
    PYTORCHJOB,
    TRAINJOB,
    backend_of,
    backend_of_child,
    choose,
    phase_from_conditions,
    recorded_child,
)
from finetune_operator.children.trainjob import render_trainjob
from finetune_operator.reconcile.status import phase_from_child
from tests.manifests import minimal_job

TRAINJOB_CRD, PYTORCHJOB_CRD = "trainjobs.trainer.kubeflow.org", "pytorchjobs.kubeflow.org"


@pytest.mark.parametrize(
    ("requested", "installed", "chosen"),
    [
        ("auto", [TRAINJOB_CRD, PYTORCHJOB_CRD], TRAINJOB),
        ("auto", [PYTORCHJOB_CRD], PYTORCHJOB),
        ("auto", [TRAINJOB_CRD], TRAINJOB),
        ("auto", [], PYTORCHJOB),
        ("pytorchjob", [TRAINJOB_CRD], PYTORCHJOB),
        ("trainjob", [], TRAINJOB),
    ],
)
def test_auto_prefers_trainjob_when_installed_and_an_explicit_choice_wins(
    requested: str, installed: list[str], chosen: object
) -> None:
    assert choose(requested, installed) is chosen
    assert set(CHILD_CRDS) == {TRAINJOB_CRD, PYTORCHJOB_CRD}


def trainjob_with(conditions: list[tuple[str, str]], ready: int = 0) -> dict[str, Any]:
    child = render_trainjob(minimal_job("t"))
    child["status"] = {
        "conditions": [{"type": kind, "status": status} for kind, status in conditions],
        "jobsStatus": [{"name": "node", "ready": ready, "active": 1}],
    }
    return child


@pytest.mark.parametrize(
    ("conditions", "ready", "phase"),
    [
        ([], 0, JobPhase.Pending),
        ([], 1, JobPhase.Running),
        ([("Complete", "True")], 1, JobPhase.Succeeded),
        ([("Failed", "True")], 1, JobPhase.Failed),
        ([("Suspended", "True")], 0, JobPhase.Suspended),
        ([("Suspended", "False")], 1, JobPhase.Running),
        ([("Complete", "False")], 0, JobPhase.Pending),
    ],
)
def test_trainjob_phase_from_its_conditions_and_ready_jobs(
    conditions: list[tuple[str, str]], ready: int, phase: JobPhase
) -> None:
    child = trainjob_with(conditions, ready)
    assert backend_of_child(child) is TRAINJOB
    assert phase_from_child(child) == phase


def test_running_is_never_added_to_an_ended_trainjob() -> None:
    conditions = TRAINJOB.conditions(trainjob_with([("Failed", "True")], ready=1))
    assert [c["type"] for c in conditions] == ["Failed"]
    assert phase_from_conditions(conditions) == JobPhase.Failed


def test_suspend_lives_in_a_different_place() -> None:
    assert TRAINJOB.suspend_patch(True) == {"spec": {"suspend": True}}
    assert PYTORCHJOB.suspend_patch(True) == {"spec": {"runPolicy": {"suspend": True}}}
    assert TRAINJOB.suspended({"spec": {"suspend": True}})
    assert not TRAINJOB.suspended({"spec": {"runPolicy": {"suspend": True}}})
    assert PYTORCHJOB.suspended({"spec": {"runPolicy": {"suspend": True}}})


def test_rank0_pod_of_each_kind() -> None:
    def pod(**labels: str) -> dict[str, Any]:
        return {"metadata": {"labels": labels}}

    rank0 = {"jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": "0"}
    assert TRAINJOB.is_rank0(pod(**rank0))
    assert not TRAINJOB.is_rank0(pod(**{**rank0, "batch.kubernetes.io/job-completion-index": "1"}))
    assert PYTORCHJOB.is_rank0(pod(**{"training.kubeflow.org/replica-type": "master"}))
    assert not PYTORCHJOB.is_rank0(pod(**rank0))


def test_a_job_keeps_the_kind_its_child_was_made_with() -> None:
    assert recorded_child({}) is None
    assert backend_of({}, TRAINJOB) is TRAINJOB
    assert backend_of({"pytorchJobName": "old"}, TRAINJOB) is PYTORCHJOB
    assert recorded_child({"trainJobName": "new"}) == (TRAINJOB, "new")
