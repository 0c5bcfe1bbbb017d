"""The child reconcile against an in-memory Kube: one child per job whatever is edited, the recorded name, refusals
and names held by others. The same behaviours are held against the real API server in
tests/cluster/test_operator_invariants.py; these run in milliseconds and reach the corners."""

from __future__ import annotations

from typing import Any, cast

import kopf
import pytest

from finetune_operator.children.pytorchjob import child_name
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.child import (
    FOREIGN_CHILD_RETRY_SECONDS,
    FOREIGN_TERMINATING_RETRY_SECONDS,
    sync_child,
)
from finetune_operator.reconcile.common import Context
from tests.manifests import SHARED_OUTPUT, minimal_job
from tests.operator.fake_kube import FakeKube, api_error

NS = "ns"
LONG = "a" * 54  # the length that once got a second child when nodes changed


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


@pytest.fixture
def ctx(fake: FakeKube) -> Context:
    return Context(kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics())


def job_with(fake: FakeKube, name: str = "job", **spec: Any) -> dict[str, Any]:
    resources = {"nodes": 1, "gpusPerNode": 1, "volumes": [SHARED_OUTPUT]}  # so node-count edits stay valid
    return fake.add_job(minimal_job(name, resources=resources, **spec), NS)


def conditions(fake: FakeKube, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in fake.jobs[(NS, name)].get("status", {}).get("conditions", [])}


@pytest.mark.parametrize("name", ["short", LONG, "b" * 120, "x." * 60 + "y"])
@pytest.mark.parametrize(
    "edit",
    [{"resources": {"nodes": 12}}, {"resources": {"nodes": 1024, "gpusPerNode": 8}}, {"training": {"epochs": 9}}],
    ids=["nodes-12", "nodes-1024", "recipe"],
)
def test_immutable_edits_never_make_a_second_child(fake: FakeKube, ctx: Context, name: str, edit: Any) -> None:
    sync_child(ctx, job_with(fake, name))
    assert list(fake.children) == [(NS, child_name(name))]
    sync_child(ctx, fake.edit_spec(NS, name, edit))
    assert list(fake.children) == [(NS, child_name(name))]
    assert fake.jobs[(NS, name)]["status"]["pytorchJobName"] == child_name(name)
    rejected = conditions(fake, name)["SpecChangeRejected"]
    assert (rejected["status"], rejected["reason"]) == ("True", "ImmutableFieldChanged")


def test_mutable_edit_patches_the_one_child(fake: FakeKube, ctx: Context) -> None:
    sync_child(ctx, job_with(fake, LONG))
    sync_child(ctx, fake.edit_spec(NS, LONG, {"queueName": "team-a", "suspend": True}))
    (child,) = fake.children.values()
    assert child["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert child["spec"]["runPolicy"]["suspend"] is True
    assert conditions(fake, LONG)["SpecChangeRejected"]["reason"] == "SpecApplied"


def test_the_recorded_name_is_looked_up_not_a_re_render(fake: FakeKube, ctx: Context) -> None:
    """A child made under an older naming rule (recorded in status) keeps serving the job."""
    job = job_with(fake, LONG)
    fake.jobs[(NS, LONG)]["status"] = {"pytorchJobName": "legacy-name", "phase": "Running"}
    fake.children[(NS, "legacy-name")] = {
        "metadata": {
            "name": "legacy-name",
            "namespace": NS,
            "ownerReferences": [{"uid": job["metadata"]["uid"]}],
            "labels": {},
        },
        "spec": {"runPolicy": {"suspend": False}},
    }
    sync_child(ctx, fake.edit_spec(NS, LONG, {"resources": {"nodes": 12}}))
    assert list(fake.children) == [(NS, "legacy-name")]
    assert "create_child" not in fake.calls
    # Deleted by someone: re-created under the recorded name, not a new one.
    del fake.children[(NS, "legacy-name")]
    sync_child(ctx, fake.get_job(NS, LONG) or {})
    assert list(fake.children) == [(NS, "legacy-name")]


def test_refused_create_fails_the_job_once_without_raising(fake: FakeKube, ctx: Context) -> None:
    fake.refuse_creates = api_error(422, "denied by policy X")
    sync_child(ctx, job_with(fake))
    status = fake.jobs[(NS, "job")]["status"]
    assert status["phase"] == "Failed"
    invalid = conditions(fake, "job")["InvalidSpec"]
    assert (invalid["status"], invalid["reason"]) == ("True", "ChildRejected")
    assert "denied by policy X" in invalid["message"]
    sync_child(ctx, fake.get_job(NS, "job") or {})  # e.g. a resume after a restart: no second event
    assert [event[2] for event in fake.events] == ["ChildRejected", "Failed"]  # the reason, the phase; once
    # A spec change is tried again, and succeeds once the server accepts it.
    fake.refuse_creates = None
    sync_child(ctx, fake.edit_spec(NS, "job", {"queueName": "q"}))
    assert list(fake.children) == [(NS, "job")]
    assert conditions(fake, "job")["InvalidSpec"]["status"] == "False"


@pytest.mark.parametrize("code", [408, 429, 500, 503])
def test_transient_create_errors_are_retried(fake: FakeKube, ctx: Context, code: int) -> None:
    fake.refuse_creates = api_error(code, "busy")
    with pytest.raises(Exception, match=r"busy|Refused"):
        sync_child(ctx, job_with(fake))
    assert "phase" not in fake.jobs[(NS, "job")].get("status", {})


def _foreign(fake: FakeKube, name: str, terminating: bool) -> None:
    metadata: dict[str, Any] = {"name": name, "namespace": NS, "ownerReferences": [{"uid": "someone-else"}]}
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    fake.children[(NS, name)] = {"metadata": metadata, "spec": {}}


@pytest.mark.parametrize(
    ("terminating", "reason", "delay"),
    [
        (True, "PreviousChildTerminating", FOREIGN_TERMINATING_RETRY_SECONDS),
        (False, "ChildNameTaken", FOREIGN_CHILD_RETRY_SECONDS),
    ],
)
def test_a_name_held_by_another_owner_is_waited_for_and_reported(
    fake: FakeKube, ctx: Context, terminating: bool, reason: str, delay: float
) -> None:
    _foreign(fake, "job", terminating)
    with pytest.raises(kopf.TemporaryError) as raised:
        sync_child(ctx, job_with(fake))
    assert raised.value.delay == delay
    conflict = conditions(fake, "job")["ChildConflict"]
    assert (conflict["status"], conflict["reason"]) == ("True", reason)
    assert fake.jobs[(NS, "job")]["status"]["phase"] == "Pending"
    assert fake.children[(NS, "job")]["metadata"]["ownerReferences"] == [{"uid": "someone-else"}]  # not adopted
    with pytest.raises(kopf.TemporaryError):
        sync_child(ctx, fake.get_job(NS, "job") or {})
    assert [event[2] for event in fake.events] == [reason, "Pending"]  # reported once, not per retry

    del fake.children[(NS, "job")]  # it goes
    sync_child(ctx, fake.get_job(NS, "job") or {})
    assert (
        fake.children[(NS, "job")]["metadata"]["ownerReferences"][0]["uid"] == fake.jobs[(NS, "job")]["metadata"]["uid"]
    )
    assert conditions(fake, "job")["ChildConflict"]["status"] == "False"
