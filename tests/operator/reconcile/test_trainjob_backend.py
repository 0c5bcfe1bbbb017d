"""The reconcile functions with the trainjob backend, against the in-memory Kube: the same behaviour as with a
PyTorchJob (create-or-adopt, record, suspend, queue label, mirror, failure reasons, restart, early-stop delete),
carried by a TrainJob. The real Trainer and JobSet controllers run the same in tests/cluster/test_trainjob.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import kopf
import pytest

from finetune_contract import names
from finetune_operator.api import FineTuneJob
from finetune_operator.children.backends import PYTORCHJOB, TRAINJOB
from finetune_operator.children.trainjob import trainjob_name
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.child import sync_child
from finetune_operator.reconcile.common import Context
from finetune_operator.reconcile.early_stop import Evaluator
from finetune_operator.reconcile.mirror import mirror_child
from tests.manifests import minimal_job
from tests.operator.fake_kube import FakeKube

NS, NAME = "ns", "tj"
CHILD = trainjob_name(NAME)


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


@pytest.fixture
def ctx(fake: FakeKube) -> Context:
    clock = lambda: datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # noqa: E731
    return Context(
        kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics(), clock=clock, backend=TRAINJOB
    )


def start(fake: FakeKube, ctx: Context, **spec: Any) -> dict[str, Any]:
    spec.setdefault("resources", {"nodes": 1, "gpusPerNode": 1})
    job = fake.add_job(minimal_job(NAME, **spec), NS)
    sync_child(ctx, job)
    return fake.jobs[(NS, NAME)]


def conditions(fake: FakeKube) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in fake.jobs[(NS, NAME)].get("status", {}).get("conditions", [])}


def fail_pod(fake: FakeKube, ctx: Context, code: int) -> None:
    child = fake.children[(NS, CHILD)]
    child["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "FailedJobs"}]}
    pod = {
        "metadata": {"name": f"{CHILD}-node-0-0-abcde", "labels": {names.JOBSET_NAME_LABEL: CHILD}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "node", "state": {"terminated": {"exitCode": code, "reason": "Error"}}}],
        },
    }
    fake.pods[(NS, CHILD)] = [pod]
    mirror_child(ctx, child, None, lambda *_: None)


def test_a_new_job_gets_a_trainjob_recorded_as_trainjobname(fake: FakeKube, ctx: Context) -> None:
    job = start(fake, ctx)
    (child,) = fake.children.values()
    assert (child["kind"], child["metadata"]["name"]) == ("TrainJob", CHILD)
    assert child["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert job["status"]["trainJobName"] == CHILD
    assert "pytorchJobName" not in job["status"]
    assert job["status"]["phase"] == "Pending"
    assert [e[3] for e in fake.events if e[2] == "Pending"] == [f"phase - -> Pending: its TrainJob is {CHILD}"]


def test_a_job_made_with_a_pytorchjob_keeps_it_under_the_trainjob_backend(fake: FakeKube, ctx: Context) -> None:
    legacy = Context(kube=ctx.kube, config=ctx.config, metrics=ctx.metrics, clock=ctx.clock, backend=PYTORCHJOB)
    sync_child(legacy, fake.add_job(minimal_job(NAME, resources={"nodes": 1, "gpusPerNode": 1}), NS))
    sync_child(ctx, fake.edit_spec(NS, NAME, {"suspend": True}))
    (child,) = fake.children.values()
    assert child["kind"] == "PyTorchJob"
    assert child["spec"]["runPolicy"]["suspend"] is True


def test_suspend_and_queue_label_are_patched_on_the_trainjob(fake: FakeKube, ctx: Context) -> None:
    start(fake, ctx)
    sync_child(ctx, fake.edit_spec(NS, NAME, {"suspend": True, "queueName": "gpu-queue"}))
    child = fake.children[(NS, CHILD)]
    assert child["spec"]["suspend"] is True
    assert "runPolicy" not in child["spec"]
    assert child["metadata"]["labels"][names.QUEUE_LABEL] == "gpu-queue"


def test_what_a_trainjob_cannot_carry_fails_the_job_by_field_without_a_child(fake: FakeKube, ctx: Context) -> None:
    start(fake, ctx, resources={"nodes": 1, "gpusPerNode": 1, "priorityClassName": "urgent"})
    assert not fake.children
    status = fake.jobs[(NS, NAME)]["status"]
    assert status["phase"] == "Failed"
    invalid = conditions(fake)["InvalidSpec"]
    assert invalid["message"].startswith("spec.resources.priorityClassName: cannot be set on a TrainJob")
    assert "(got 'urgent')" in invalid["message"]


def test_the_trainers_own_exit_fails_the_job_with_its_code(fake: FakeKube, ctx: Context) -> None:
    start(fake, ctx)
    fail_pod(fake, ctx, 3)
    assert fake.jobs[(NS, NAME)]["status"]["phase"] == "Failed"
    assert "container node exited with code 3" in conditions(fake)["Failed"]["message"]
    assert "Recovering" not in conditions(fake)


def test_a_killed_trainer_is_restarted_by_deleting_the_trainjob(fake: FakeKube, ctx: Context) -> None:
    start(fake, ctx, recovery={"backoffSeconds": 0})
    old_uid = fake.children[(NS, CHILD)]["metadata"]["uid"]
    fail_pod(fake, ctx, 137)
    assert conditions(fake)["Recovering"]["reason"] == "Killed"
    with pytest.raises(kopf.TemporaryError, match=f"waiting for TrainJob {CHILD} to go"):
        sync_child(ctx, fake.job_manifest(NS, NAME))
    assert (NS, CHILD) not in fake.children
    sync_child(ctx, fake.job_manifest(NS, NAME))
    assert fake.children[(NS, CHILD)]["metadata"]["uid"] != old_uid
    assert fake.jobs[(NS, NAME)]["status"]["restartHistory"][0]["replacedUid"] == old_uid


def test_an_early_stop_deletes_the_trainjob(fake: FakeKube, ctx: Context) -> None:
    start(fake, ctx)
    fake.jobs[(NS, NAME)]["status"]["phase"] = "EarlyStopped"
    Evaluator(ctx).tick([fake.job_manifest(NS, NAME)])
    assert not fake.children
    assert [e[2] for e in fake.events if e[2].endswith("Deleted")] == ["TrainJobDeleted"]


def test_the_rank0_pod_of_the_jobset_is_scraped(fake: FakeKube, ctx: Context) -> None:
    start(fake, ctx)
    labels = {names.JOBSET_NAME_LABEL: CHILD, "jobset.sigs.k8s.io/job-index": "0"}
    fake.pods[(NS, CHILD)] = [
        {
            "metadata": {"labels": {**labels, "batch.kubernetes.io/job-completion-index": str(rank)}},
            "status": {"podIP": ip},
        }
        for rank, ip in ((1, "10.0.0.2"), (0, "10.0.0.1"))
    ]
    job = fake.job_manifest(NS, NAME)
    url = Evaluator(ctx)._master_url(job, FineTuneJob.model_validate(job))
    assert url == "http://10.0.0.1:8000/metrics"


def test_a_running_trainjob_gives_the_job_a_start_time_once(fake: FakeKube, ctx: Context) -> None:
    """TrainJob has no status.startTime; the first mirror that sees it Running stamps the job (early stopping's
    GPU-seconds-saved and the sweep's timings read it)."""
    start(fake, ctx)
    child = fake.children[(NS, CHILD)]
    child["status"] = {"jobsStatus": [{"name": "node", "ready": 1, "active": 1}]}
    mirror_child(ctx, child, None, lambda *_: None)
    status = fake.jobs[(NS, NAME)]["status"]
    assert (status["phase"], status["startTime"]) == ("Running", "2026-12-01T12:00:00Z")
    child["status"]["conditions"] = [{"type": "Complete", "status": "True", "reason": "AllJobsCompleted"}]
    mirror_child(ctx, child, None, lambda *_: None)
    status = fake.jobs[(NS, NAME)]["status"]
    assert (status["phase"], status["startTime"]) == ("Succeeded", "2026-12-01T12:00:00Z")
    assert status["completionTime"] == "2026-12-01T12:00:00Z"
