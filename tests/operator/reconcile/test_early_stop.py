"""Early stopping as a reconcile concern, against the in-memory Kube and a real trainer metrics endpoint.

The trainer's own Prometheus exporter serves /metrics on loopback and the evaluator scrapes it for real (the
direct-scrape source); only the API server is the in-memory fake. What is held: a NaN run is stopped at once (status,
condition, events, child deleted, counted), a healthy run gets its figures, unreadable metrics never stop a run and
back off, and every status write starts from the body in hand (no GET).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from finetune_contract import names
from finetune_contract.records import StepRecord
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.common import Context
from finetune_operator.reconcile.early_stop import Evaluator, index_entry
from finetune_trainer.metrics import Identity, PrometheusLogger
from tests.manifests import minimal_job
from tests.operator.fake_kube import FakeKube

NS, NAME, CHILD = "team", "run", "run"
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def exporter() -> Iterator[PrometheusLogger]:
    logger = PrometheusLogger(Identity(NAME, NS), port=0, addr="127.0.0.1", total_steps=100)
    yield logger
    logger.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


@pytest.fixture
def evaluator(fake: FakeKube, clock: Clock) -> Evaluator:
    return Evaluator(Context(kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics(), clock=clock))


def running_job(fake: FakeKube, port: int, with_pod: bool = True, **early_stopping: Any) -> dict[str, Any]:
    spec = {"metrics": {"port": port}, "resources": {"nodes": 1, "gpusPerNode": 2}}
    if early_stopping:
        spec["earlyStopping"] = early_stopping
    fake.add_job(minimal_job(NAME, **spec), NS)
    fake.jobs[(NS, NAME)]["status"] = {
        "phase": "Running",
        "pytorchJobName": CHILD,
        "startTime": (START - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    fake.children[(NS, CHILD)] = {"metadata": {"name": CHILD, "namespace": NS}, "spec": {}}
    if with_pod:
        master = {
            "metadata": {"name": f"{CHILD}-master-0", "labels": {names.TRAINING_OPERATOR_REPLICA_LABEL: "master"}},
            "status": {"podIP": "127.0.0.1"},
        }
        fake.pods[(NS, CHILD)] = [master]
    return index_entry(fake.job_manifest(NS, NAME))


def step(number: int, loss: float, grad_norm: float = 1.0) -> StepRecord:
    return StepRecord(step=number, loss=loss, grad_norm=grad_norm, total_steps=100, learning_rate=1e-4, tokens=1000)


def conditions(fake: FakeKube) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in fake.jobs[(NS, NAME)]["status"].get("conditions", [])}


def test_a_nan_run_is_stopped_at_once_and_its_gpus_freed(
    fake: FakeKube, evaluator: Evaluator, exporter: PrometheusLogger
) -> None:
    job = running_job(fake, exporter.port)
    exporter.log_step(step(3, math.nan))
    evaluator.tick([job])
    status = fake.jobs[(NS, NAME)]["status"]
    assert status["phase"] == "EarlyStopped"
    assert status["earlyStopping"]["decision"] == "stop"
    assert status["completionTime"] == "2026-12-01T12:00:00Z"  # the Context's clock, not the machine's
    stopped = conditions(fake)["EarlyStopped"]
    assert (stopped["status"], stopped["reason"]) == ("True", "NonFinite")
    assert (NS, CHILD) not in fake.children
    assert [event[2] for event in fake.events] == ["EarlyStopped", "PyTorchJobDeleted"]
    assert "get_job" not in fake.calls  # the write started from the body in hand
    # Next tick: the job (as the watch now shows it) is finished; nothing more is deleted or written.
    calls = len(fake.calls)
    evaluator.tick([index_entry(fake.job_manifest(NS, NAME))])
    assert fake.calls[calls:] == []


def test_a_healthy_run_gets_its_figures_and_continues(
    fake: FakeKube, evaluator: Evaluator, exporter: PrometheusLogger
) -> None:
    job = running_job(fake, exporter.port, checkAfterSteps=1, windowSteps=1, maxGradNorm=10.0)
    exporter.log_step(step(7, 2.5, grad_norm=1.5))
    evaluator.tick([job])
    status = fake.jobs[(NS, NAME)]["status"]
    assert status["phase"] == "Running"
    assert (status["step"], status["loss"], status["gradNorm"], status["totalSteps"]) == (7, 2.5, 1.5, 100)
    assert status["progress"] == "7/100"
    assert status["earlyStopping"]["decision"] in {"continue", "unknown"}
    assert (NS, CHILD) in fake.children
    assert "get_job" not in fake.calls


def test_unreadable_metrics_never_stop_and_back_off(fake: FakeKube, evaluator: Evaluator, clock: Clock) -> None:
    job = running_job(fake, port=1025, with_pod=False)
    evaluator.tick([job])
    unavailable = conditions(fake)["MetricsUnavailable"]
    assert (unavailable["status"], unavailable["reason"]) == ("True", "ScrapeFailed")
    assert fake.jobs[(NS, NAME)]["status"]["phase"] == "Running"
    assert fake.jobs[(NS, NAME)]["status"]["earlyStopping"]["decision"] == "unknown"
    assert (NS, CHILD) in fake.children
    # Within the backoff (the job's 30 s interval), the job is not read again.
    pods_reads = fake.calls.count("child_pods")
    clock.now = START + timedelta(seconds=20)
    evaluator.tick([index_entry(fake.job_manifest(NS, NAME))])
    assert fake.calls.count("child_pods") == pods_reads
    clock.now = START + timedelta(seconds=31)
    evaluator.tick([index_entry(fake.job_manifest(NS, NAME))])
    assert fake.calls.count("child_pods") == pods_reads + 1


def test_the_job_or_operator_prometheus_decides_the_source_and_the_reason(fake: FakeKube, clock: Clock) -> None:
    config = OperatorConfig(prometheus_url="http://127.0.0.1:1")  # closed: refused at once
    ctx = Context(kube=cast(Kube, fake), config=config, metrics=OperatorMetrics(), clock=clock)
    job = running_job(fake, port=1025)
    Evaluator(ctx).tick([job])
    assert conditions(fake)["MetricsUnavailable"]["reason"] == "PrometheusUnavailable"
    assert "child_pods" not in fake.calls  # Prometheus was asked, not the pod
