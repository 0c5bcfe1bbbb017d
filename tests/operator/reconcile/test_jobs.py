"""Which FineTuneJob events reconcile, and retries of the reconciles that failed (Kopf retries only change
handlers, which the operator does not use: they cost an annotation PATCH per job)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import kopf
import pytest

from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile import jobs
from finetune_operator.reconcile.common import Context
from tests.manifests import minimal_job
from tests.operator.fake_kube import FakeKube, api_error


def job(generation: int = 1, observed: int | None = None, phase: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**minimal_job("j"), "metadata": {"name": "j", "namespace": "ns", "generation": generation}}
    status: dict[str, Any] = {}
    if observed is not None:
        status["observedGeneration"] = observed
    if phase is not None:
        status["phase"] = phase
    body["status"] = {**status, **extra}
    return body


@pytest.mark.parametrize(
    ("event_type", "body", "expected"),
    [
        ("ADDED", job(1), True),  # new: never handled
        ("MODIFIED", job(2, observed=1, phase="Running"), True),  # a spec edit
        ("MODIFIED", job(1, observed=1, phase="Running"), False),  # our own status write
        ("MODIFIED", job(3, observed=3, phase="Failed"), False),
        (None, job(1, observed=1, phase="Running"), True),  # listing: the child may be gone
        (None, job(1, observed=1, phase="Pending"), True),
        (None, job(1, observed=1, phase="Succeeded"), False),  # finished: never resurrected
        (None, job(1, observed=1, phase="EarlyStopped"), False),
        ("DELETED", job(2, observed=1), False),
    ],
)
def test_needs_sync(event_type: str | None, body: dict[str, Any], expected: bool) -> None:
    assert jobs.needs_sync(event_type, body) is expected


def test_a_job_being_deleted_is_left_to_garbage_collection() -> None:
    body = job(2, observed=1)
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not jobs.needs_sync("MODIFIED", body)


class Recorder:
    def __init__(self) -> None:
        self.fired: list[tuple[str, str, float]] = []

    def __call__(self, namespace: str, name: str) -> None:
        self.fired.append((namespace, name, time.monotonic()))


def test_one_pending_retry_per_job_and_backoff() -> None:
    async def scenario() -> tuple[list[tuple[str, str, float]], list[float], float]:
        recorder = Recorder()
        retries = jobs.Retries(asyncio.get_running_loop(), recorder)
        started = time.monotonic()
        waits = [retries.schedule("ns", "a") for _ in range(3)]  # 1, 2, 4 s of backoff; only the last stays armed
        retries.schedule("ns", "b", delay=0.05)
        await asyncio.sleep(0.3)
        return recorder.fired, waits, started

    fired, waits, started = asyncio.run(scenario())
    assert waits == [1.0, 2.0, 4.0]
    assert [(ns, name) for ns, name, _ in fired] == [("ns", "b")]  # "a" waits its 4 s; armed once, not thrice
    assert fired[0][2] - started >= 0.05


@pytest.fixture
def ctx() -> tuple[Context, FakeKube]:
    fake = FakeKube()
    return Context(kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics()), fake


class Scheduled:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float | None]] = []

    def schedule(self, namespace: str, name: str, delay: float | None = None) -> float:
        self.calls.append((namespace, name, delay))
        return delay or 1.0

    def succeeded(self, namespace: str, name: str) -> None:
        self.calls.append((namespace, name, -1.0))


@pytest.mark.parametrize(
    ("raised", "scheduled"),
    [
        (kopf.TemporaryError("later", delay=7), [("ns", "j", 7)]),
        (api_error(503, "unavailable"), [("ns", "j", None)]),
        (kopf.PermanentError("never"), []),
        (None, [("ns", "j", -1.0)]),
    ],
    ids=["temporary", "api-5xx", "permanent", "success"],
)
def test_reconcile_retries_what_a_retry_can_fix(
    ctx: tuple[Context, FakeKube], raised: BaseException | None, scheduled: list[Any]
) -> None:
    context, _ = ctx
    retries = Scheduled()

    def work(_: Context, __: dict[str, Any]) -> None:
        if raised is not None:
            raise raised

    jobs.reconcile(context, cast(jobs.Retries, retries), job(), work)
    assert retries.calls == scheduled


def test_a_retry_reads_the_job_afresh_and_syncs_it(ctx: tuple[Context, FakeKube]) -> None:
    context, fake = ctx
    fake.add_job(minimal_job("j", resources={"nodes": 1, "gpusPerNode": 1}), "ns")
    jobs.retry(context, cast(jobs.Retries, Scheduled()), "ns", "j")
    assert list(fake.children) == [("ns", "j")]
    assert fake.jobs[("ns", "j")]["status"]["observedGeneration"] == 1
    # The sync recorded the generation: the events its own writes cause do not sync again.
    assert not jobs.needs_sync("MODIFIED", fake.job_manifest("ns", "j"))
    jobs.retry(context, cast(jobs.Retries, Scheduled()), "ns", "gone")  # deleted meanwhile: nothing, no error
