"""Who owns the child's suspend when Kueue manages it, through the reconcile functions and the in-memory Kube, for
both child kinds. Kueue holds the child suspended until it admits it (the job is queued: phase Pending, condition
Queued); a user's spec.suspend goes to the Workload's spec.active, never to the child, which Kueue would undo.
The real Kueue runs the same in tests/cluster/test_kueue.py."""

from __future__ import annotations

from typing import Any, cast

import kopf
import pytest

from finetune_contract import names
from finetune_operator.children.backends import BACKENDS, Backend
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.child import sync_child
from finetune_operator.reconcile.common import Context
from finetune_operator.reconcile.mirror import mirror_child
from tests.manifests import minimal_job
from tests.operator.fake_kube import FakeKube

NS, NAME, QUEUE = "ns", "queued", "team-gpus"


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def fake() -> FakeKube:
    kube = FakeKube()
    kube.kueue_installed = True
    return kube


@pytest.fixture
def ctx(fake: FakeKube, backend: Backend) -> Context:
    return Context(kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics(), backend=backend)


def created(fake: FakeKube, ctx: Context, backend: Backend) -> dict[str, Any]:
    """A queued job's child as Kueue's webhook leaves it: suspended; and its Workload, not yet admitted."""
    sync_child(ctx, fake.add_job(minimal_job(NAME, queueName=QUEUE), NS))
    fake.patch_child(NS, backend.child_name(NAME), backend.suspend_patch(True), backend)  # Kueue's webhook
    fake.calls.clear()
    child = fake.children[(NS, backend.child_name(NAME))]
    child["status"] = {"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended"}]}
    uid = child["metadata"]["uid"]
    fake.workloads[(NS, uid)] = {"metadata": {"name": f"{backend.plural}-{NAME}", "namespace": NS}, "spec": {}}
    return child


def status(fake: FakeKube) -> dict[str, Any]:
    return dict(fake.jobs[(NS, NAME)]["status"])


def conditions(fake: FakeKube) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status(fake).get("conditions", [])}


def test_a_child_kueue_holds_is_queued_not_suspended_and_never_unsuspended_by_us(
    fake: FakeKube, ctx: Context, backend: Backend
) -> None:
    child = created(fake, ctx, backend)
    mirror_child(ctx, child, None, lambda *_: None)
    assert status(fake)["phase"] == "Pending"
    queued = conditions(fake)["Queued"]
    assert (queued["status"], queued["reason"]) == ("True", "WaitingForAdmission")
    assert f"LocalQueue {QUEUE}" in queued["message"]
    sync_child(ctx, fake.job_manifest(NS, NAME))  # any later sync: the child's suspend is Kueue's
    assert backend.suspended(fake.children[(NS, backend.child_name(NAME))])
    assert not [call for call in fake.calls if call.startswith("set_workload_active")]
    assert [e for e in fake.events if e[2] == "Suspended"] == []


def test_admitted_it_runs_and_queued_turns_false(fake: FakeKube, ctx: Context, backend: Backend) -> None:
    child = created(fake, ctx, backend)
    mirror_child(ctx, child, None, lambda *_: None)
    fake.patch_child(NS, backend.child_name(NAME), backend.suspend_patch(False), backend)  # Kueue admits it
    running = {"type": "Running", "status": "True", "reason": "Running"}
    child["status"] = {"conditions": [running], "jobsStatus": [{"name": "node", "ready": 1}]}
    mirror_child(ctx, child, None, lambda *_: None)
    assert status(fake)["phase"] == "Running"
    assert (conditions(fake)["Queued"]["status"], conditions(fake)["Queued"]["reason"]) == ("False", "Admitted")


def test_a_users_suspend_and_resume_go_to_the_workload(fake: FakeKube, ctx: Context, backend: Backend) -> None:
    child = created(fake, ctx, backend)
    workload = fake.workloads[(NS, child["metadata"]["uid"])]
    sync_child(ctx, fake.edit_spec(NS, NAME, {"suspend": True}))
    assert workload["spec"]["active"] is False
    sync_child(ctx, fake.edit_spec(NS, NAME, {"suspend": False}))
    assert workload["spec"]["active"] is True
    assert "patch_child" not in fake.calls  # the child's suspend is Kueue's to write


def test_a_suspend_before_kueue_made_the_workload_is_retried(fake: FakeKube, ctx: Context, backend: Backend) -> None:
    child = created(fake, ctx, backend)
    fake.workloads.clear()
    with pytest.raises(kopf.TemporaryError, match="waiting for Kueue to make the child's Workload"):
        sync_child(ctx, fake.edit_spec(NS, NAME, {"suspend": True}))
    fake.workloads[(NS, child["metadata"]["uid"])] = {"metadata": {"name": "wl", "namespace": NS}, "spec": {}}
    sync_child(ctx, fake.job_manifest(NS, NAME))
    assert fake.workloads[(NS, child["metadata"]["uid"])]["spec"]["active"] is False


def test_without_kueue_installed_a_queue_label_changes_nothing(fake: FakeKube, ctx: Context, backend: Backend) -> None:
    fake.kueue_installed = False
    sync_child(ctx, fake.add_job(minimal_job(NAME, queueName=QUEUE), NS))
    sync_child(ctx, fake.edit_spec(NS, NAME, {"suspend": True}))
    child = fake.children[(NS, backend.child_name(NAME))]
    assert backend.suspended(child)
    assert child["metadata"]["labels"][names.QUEUE_LABEL] == QUEUE


def test_a_queued_child_kueue_never_took_is_the_operators_after_the_grace(
    fake: FakeKube, ctx: Context, backend: Backend
) -> None:
    """Kueue's API is there but no Workload came (Kueue stopped, or its namespace selector leaves this one out):
    after the grace the operator writes the child's suspend itself, in both directions."""
    created(fake, ctx, backend)
    fake.workloads.clear()
    child = fake.children[(NS, backend.child_name(NAME))]
    child["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    sync_child(ctx, fake.job_manifest(NS, NAME))  # spec.suspend false: unsuspended by us now
    assert not backend.suspended(fake.children[(NS, backend.child_name(NAME))])
    sync_child(ctx, fake.edit_spec(NS, NAME, {"suspend": True}))
    assert backend.suspended(fake.children[(NS, backend.child_name(NAME))])
