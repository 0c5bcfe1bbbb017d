"""Automatic resume through the reconcile functions, against the in-memory Kube and a clock the test moves.

The same flow runs against the real API server, training-operator and a real trainer killed mid-run in
tests/cluster/test_recovery.py; these reach the corners: backoff timing, counting once, exhaustion, interruptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
import pytest

from finetune_operator.children.pytorchjob import child_name
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.child import sync_child
from finetune_operator.reconcile.common import Context
from finetune_operator.reconcile.mirror import mirror_child
from tests.manifests import minimal_job
from tests.operator.fake_kube import FakeKube

NS = "ns"
NAME = "run"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ctx(fake: FakeKube, clock: Clock) -> Context:
    return Context(kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics(), clock=clock)


Scheduled = list[tuple[str, str, float]]


def start(fake: FakeKube, ctx: Context, **recovery: Any) -> None:
    spec: dict[str, Any] = {"resources": {"nodes": 1, "gpusPerNode": 1}}
    if recovery:
        spec["recovery"] = recovery
    sync_child(ctx, fake.add_job(minimal_job(NAME, **spec), NS))


def job(fake: FakeKube) -> dict[str, Any]:
    return fake.jobs[(NS, NAME)]


def conditions(fake: FakeKube) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in job(fake).get("status", {}).get("conditions", [])}


def fail_child(fake: FakeKube, ctx: Context, scheduled: Scheduled, code: int = 137, reason: str = "Error") -> str:
    """The trainer pod exits with `code`; the training-operator marks the child Failed; the mirror sees it."""
    key = (NS, child_name(NAME))
    child = fake.children[key]
    child["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "PyTorchJobFailed"}]}
    terminated = {"exitCode": code, "reason": reason}
    fake.pods[key] = [
        {
            "metadata": {"name": f"{child_name(NAME)}-master-0"},
            "status": {
                "phase": "Failed",
                "containerStatuses": [{"name": "pytorch", "state": {"terminated": terminated}}],
            },
        }
    ]
    mirror_child(ctx, child, None, lambda ns, name, delay: scheduled.append((ns, name, delay)))
    return str(child["metadata"]["uid"])


def test_a_killed_trainer_is_restarted_after_the_backoff_and_counted_once(
    fake: FakeKube, ctx: Context, clock: Clock
) -> None:
    start(fake, ctx, backoffSeconds=30)
    scheduled: Scheduled = []
    old_uid = fail_child(fake, ctx, scheduled)
    assert job(fake)["status"]["phase"] == "Pending"
    recovering = conditions(fake)["Recovering"]
    assert (recovering["status"], recovering["reason"]) == ("True", "Killed")
    assert "restart 1 of 3 in 30s" in recovering["message"]
    assert "SIGKILL" in recovering["message"]
    assert scheduled == [(NS, NAME, 30.0)]

    clock.advance(10)  # an early retry (e.g. an operator restart's relist) waits out the rest
    with pytest.raises(kopf.TemporaryError) as early:
        sync_child(ctx, fake.job_manifest(NS, NAME))
    assert early.value.delay == pytest.approx(20)
    assert (NS, child_name(NAME)) in fake.children
    assert "restarts" not in job(fake)["status"]

    clock.advance(20)
    with pytest.raises(kopf.TemporaryError):  # counted, the failed child deleted; waits for it to go
        sync_child(ctx, fake.job_manifest(NS, NAME))
    status = job(fake)["status"]
    assert status["restarts"] == 1
    assert [(r["reason"], r["replacedUid"]) for r in status["restartHistory"]] == [("Killed", old_uid)]
    assert [e[2] for e in fake.events if e[2] == "Restarting"] == ["Restarting"]
    assert (NS, child_name(NAME)) not in fake.children

    mirror_child(ctx, {"metadata": {"uid": old_uid, "name": child_name(NAME), "namespace": NS}})  # late event
    assert job(fake)["status"]["phase"] == "Pending"

    sync_child(ctx, fake.job_manifest(NS, NAME))  # the child's DELETED event: created again, same name
    new = fake.children[(NS, child_name(NAME))]
    assert new["metadata"]["uid"] != old_uid
    status = job(fake)["status"]
    assert status["restarts"] == 1
    assert status["pytorchJobName"] == child_name(NAME)
    assert conditions(fake)["Recovering"]["status"] == "False"
    assert conditions(fake)["Recovering"]["reason"] == "Restarted"
    assert "Failed" not in conditions(fake)  # the replaced run's condition; the history keeps why


def test_backoff_doubles_and_the_last_failure_stays_failed_with_the_count(
    fake: FakeKube, ctx: Context, clock: Clock
) -> None:
    start(fake, ctx, maxRestarts=2, backoffSeconds=5, maxBackoffSeconds=8)
    waits = []
    for _ in range(2):
        scheduled: Scheduled = []
        fail_child(fake, ctx, scheduled)
        waits.append(scheduled[0][2])
        clock.advance(scheduled[0][2])
        with pytest.raises(kopf.TemporaryError):
            sync_child(ctx, fake.job_manifest(NS, NAME))
        sync_child(ctx, fake.job_manifest(NS, NAME))
    assert waits == [5.0, 8.0]
    scheduled = []
    fail_child(fake, ctx, scheduled)
    assert scheduled == []
    status = job(fake)["status"]
    assert (status["phase"], status["restarts"]) == ("Failed", 2)
    assert "not restarted: 2 of 2 automatic restarts used" in conditions(fake)["Failed"]["message"]
    assert len(status["restartHistory"]) == 2


@pytest.mark.parametrize(("code", "reason"), [(2, "Error"), (3, "Error"), (1, "Error"), (137, "OOMKilled")])
def test_the_runs_own_failures_are_never_restarted(fake: FakeKube, ctx: Context, code: int, reason: str) -> None:
    start(fake, ctx)
    scheduled: Scheduled = []
    fail_child(fake, ctx, scheduled, code=code, reason=reason)
    assert scheduled == []
    assert job(fake)["status"]["phase"] == "Failed"
    assert "Recovering" not in conditions(fake)
    sync_child(ctx, fake.job_manifest(NS, NAME))
    assert "delete_child" not in fake.calls


def test_max_restarts_zero_says_so(fake: FakeKube, ctx: Context) -> None:
    start(fake, ctx, maxRestarts=0)
    scheduled: Scheduled = []
    fail_child(fake, ctx, scheduled)
    assert scheduled == []
    assert job(fake)["status"]["phase"] == "Failed"
    assert "spec.recovery.maxRestarts is 0" in conditions(fake)["Failed"]["message"]


def test_an_early_stopped_job_is_not_restarted(fake: FakeKube, ctx: Context) -> None:
    start(fake, ctx)
    job(fake)["status"]["phase"] = "EarlyStopped"
    scheduled: Scheduled = []
    fail_child(fake, ctx, scheduled)
    assert scheduled == []
    assert job(fake)["status"]["phase"] == "EarlyStopped"


def test_a_crash_after_counting_deletes_without_counting_again(fake: FakeKube, ctx: Context, clock: Clock) -> None:
    """The operator died between the status write and the delete: the next sync deletes, the count stays 1."""
    start(fake, ctx, backoffSeconds=0)
    fail_child(fake, ctx, [])
    real_delete = fake.delete_child
    fake.delete_child = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("operator killed"))  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        sync_child(ctx, fake.job_manifest(NS, NAME))
    fake.delete_child = real_delete  # type: ignore[method-assign]
    assert job(fake)["status"]["restarts"] == 1
    with pytest.raises(kopf.TemporaryError):
        sync_child(ctx, fake.job_manifest(NS, NAME))
    assert job(fake)["status"]["restarts"] == 1
    assert (NS, child_name(NAME)) not in fake.children
    assert len([e for e in fake.events if e[2] == "Restarting"]) == 1


def test_the_failed_child_still_terminating_is_waited_for_not_adopted(fake: FakeKube, ctx: Context) -> None:
    start(fake, ctx, backoffSeconds=0)
    fail_child(fake, ctx, [])
    fake.children[(NS, child_name(NAME))]["metadata"]["deletionTimestamp"] = "2026-12-01T12:00:00Z"
    real_delete = fake.delete_child
    fake.delete_child = lambda *a, **k: True  # type: ignore[method-assign]  # foreground: the object stays a while
    with pytest.raises(kopf.TemporaryError, match="being deleted"):
        sync_child(ctx, fake.job_manifest(NS, NAME))
    with pytest.raises(kopf.TemporaryError, match="being deleted"):
        sync_child(ctx, fake.job_manifest(NS, NAME))
    fake.delete_child = real_delete  # type: ignore[method-assign]
    assert job(fake)["status"]["restarts"] == 1


def test_a_job_that_already_failed_is_never_revived(fake: FakeKube, ctx: Context) -> None:
    """A job Failed before (e.g. under an operator version without automatic resume): seeing its failed child again
    at an operator start must not restart it."""
    start(fake, ctx)
    job(fake)["status"]["phase"] = "Failed"
    scheduled: Scheduled = []
    fail_child(fake, ctx, scheduled)
    assert scheduled == []
    assert job(fake)["status"]["phase"] == "Failed"
    assert "Recovering" not in conditions(fake)
