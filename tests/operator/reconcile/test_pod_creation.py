"""PodsNotCreated: the training-operator's FailedCreatePod Events, read once per check for every Pending job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.common import Context
from finetune_operator.reconcile.mirror import mirrored_status
from finetune_operator.reconcile.pod_creation import (
    CONDITION,
    FRESH_FOR,
    PodFailure,
    check_pod_creation,
    failures_by_child,
    pods_condition,
    trainjob_of_job,
)
from tests.manifests import minimal_job
from tests.operator.fake_kube import FakeKube

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STAMP = "2026-12-01T12:00:00Z"


def event(child: str, message: str, seen: datetime, reason: str = "FailedCreatePod", count: int = 1) -> dict[str, Any]:
    return {
        "involvedObject": {"kind": "PyTorchJob", "namespace": "ns", "name": child},
        "reason": reason,
        "message": message,
        "count": count,
        "lastTimestamp": seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def test_newest_fresh_event_per_child_wins() -> None:
    events = [
        event("a", "old", NOW - timedelta(minutes=5)),
        event("a", "new", NOW - timedelta(minutes=1), count=7),
        event("b", "stale", NOW - FRESH_FOR - timedelta(seconds=1)),
        event("c", "other reason", NOW, reason="SuccessfulCreatePod"),
    ]
    found = failures_by_child(events, NOW)
    assert set(found) == {("ns", "a")}
    assert (found[("ns", "a")].message, found[("ns", "a")].count) == ("new", 7)


def test_condition_set_updated_and_cleared() -> None:
    failure = PodFailure("exceeded quota", 3, NOW)
    set_ = pods_condition({}, failure, 1, STAMP)
    assert set_ is not None
    assert (set_["status"], set_["reason"]) == ("True", "FailedCreatePod")
    assert "exceeded quota" in set_["message"]
    assert pods_condition({"conditions": [set_]}, failure, 1, STAMP) is None  # unchanged: no write
    assert pods_condition({}, None, 1, STAMP) is None  # never set, nothing to clear
    cleared = pods_condition({"conditions": [set_]}, None, 1, STAMP)
    assert cleared is not None
    assert cleared["status"] == "False"


def test_one_list_for_all_pending_jobs_and_one_event_each() -> None:
    fake = FakeKube()
    ctx = Context(kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics(), clock=lambda: NOW)
    for name in ("p1", "p2", "running"):
        fake.add_job(minimal_job(name), "ns")
        fake.jobs[("ns", name)]["status"] = {"phase": "Pending", "pytorchJobName": name}
    fake.jobs[("ns", "running")]["status"]["phase"] = "Running"
    fake.child_events = [event("p1", "forbidden: exceeded quota", NOW), event("running", "x", NOW)]
    check_pod_creation(ctx, fake.list_jobs(()))
    check_pod_creation(ctx, fake.list_jobs(()))
    assert fake.calls.count("list_child_events") == 2  # one per check, not per job
    conditions = {
        name: {c["type"]: c for c in job["status"].get("conditions", [])} for (_, name), job in fake.jobs.items()
    }
    assert conditions["p1"][CONDITION]["status"] == "True"
    assert CONDITION not in conditions["p2"]
    assert CONDITION not in conditions["running"]
    assert [(e[0], e[2]) for e in fake.events] == [("p1", "FailedCreatePod")]


def test_the_mirror_clears_it_once_pods_run() -> None:
    current = {"conditions": [pods_condition({}, PodFailure("quota", 1, NOW), 1, STAMP)]}
    child = {"metadata": {"name": "c"}, "status": {"conditions": [{"type": "Running", "status": "True"}]}}
    out = mirrored_status(current, child, "", STAMP)
    cleared = {c["type"]: c for c in out["conditions"]}[CONDITION]
    assert cleared["status"] == "False"


def job_event(job: str, message: str, seen: datetime) -> dict[str, Any]:
    """The Job controller's Event on a TrainJob's Job (<jobset>-node-<i>)."""
    return {
        "involvedObject": {"kind": "Job", "namespace": "ns", "name": job},
        "reason": "FailedCreate",
        "message": message,
        "count": 2,
        "lastTimestamp": seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def test_the_jobset_of_a_job_is_its_name_less_the_replicated_job_suffix() -> None:
    assert trainjob_of_job("train-node-0") == "train"
    assert trainjob_of_job("my-node-job-node-12") == "my-node-job"
    assert trainjob_of_job("backup-cron-123") is None
    assert trainjob_of_job("node-0") is None


def test_trainjob_children_are_told_from_their_jobs_events_one_list_per_kind() -> None:
    fake = FakeKube()
    ctx = Context(kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics(), clock=lambda: NOW)
    for name, field in (("tj", "trainJobName"), ("pj", "pytorchJobName"), ("other", "trainJobName")):
        fake.add_job(minimal_job(name), "ns")
        fake.jobs[("ns", name)]["status"] = {"phase": "Pending", field: name}
    fake.child_events = [
        job_event("tj-node-0", 'pods "tj-node-0-0-x" is forbidden: exceeded quota: no-pods', NOW),
        job_event("unrelated-batch", "exceeded quota", NOW),
        event("pj", "forbidden: exceeded quota", NOW),
    ]
    check_pod_creation(ctx, fake.list_jobs(()))
    assert fake.calls.count("list_child_events") == 2  # one per child kind with Pending jobs
    found = {name: {c["type"]: c for c in job["status"].get("conditions", [])} for (_, name), job in fake.jobs.items()}
    assert "exceeded quota: no-pods" in found["tj"][CONDITION]["message"]
    assert found["pj"][CONDITION]["status"] == "True"
    assert CONDITION not in found["other"]
