"""Early stopping end to end, the same two scenarios for both child kinds (one parametrised operator): a bad
learning rate is stopped, a sane run Succeeds. Real parts only — FineTuneJob → operator → PyTorchJob (training-
operator) or TrainJob (Kubeflow Trainer v2 → JobSet → Job controller) → pod → scheduler → node agent (a real
trainer process) → /metrics → Prometheus → policy → verdict → child deleted → the trainer gone.

The other early-stopping scenarios (NaN, Prometheus down, direct scrape, per-job source) do not depend on the
child's kind past what these two prove, and run once, in test_early_stopping.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from finetune_operator.children.backends import BACKENDS
from tests.cluster.nodeagent_handle import NodeAgentHandle
from tests.cluster.operator_process import BackendOperator
from tests.cluster.test_early_stopping import (
    BAD_POLICY,
    BAD_TRAINING,
    SANE_POLICY,
    START_S,
    assert_stopped,
    early_stops,
    start_run,
)

pytestmark = [pytest.mark.cluster, pytest.mark.parametrize("backend_operator", sorted(BACKENDS), indirect=True)]


def test_absurd_learning_rate_is_stopped_on_grad_norm(
    api: client.ApiClient,
    namespace: str,
    backend_operator: BackendOperator,
    node_agent: NodeAgentHandle,
    tmp_path: Path,
) -> None:
    operator, backend = backend_operator.operator, backend_operator.backend
    before = early_stops(operator, "maxGradNorm")
    run = start_run(
        api, namespace, operator, node_agent, tmp_path, "absurd-lr", BAD_TRAINING, BAD_POLICY, backend=backend
    )
    evidence = assert_stopped(run, "GradNormAboveMax", "maxGradNorm", ["gradNorm"])
    assert float(evidence["threshold"]) == BAD_POLICY["maxGradNorm"]
    assert float(evidence["value"]) > float(evidence["threshold"])
    assert evidence["toStep"] >= BAD_POLICY["checkAfterSteps"]
    status = run.status()
    assert status[backend.status_field] == run.child
    assert status["step"] >= evidence["toStep"]
    assert status["loss"] > 0
    assert status["gradNorm"] > 0
    assert early_stops(operator, "maxGradNorm") == before + 1
    assert [event.message for event in run.events(f"{backend.kind}Deleted")], "no Event saying the child went"


def test_sane_run_is_left_alone_and_succeeds(
    api: client.ApiClient,
    namespace: str,
    backend_operator: BackendOperator,
    node_agent: NodeAgentHandle,
    tmp_path: Path,
) -> None:
    operator, backend = backend_operator.operator, backend_operator.backend
    training = {"learningRate": 1e-3, "maxSteps": 500}  # ~15 s of steps: two or more evaluations while Running
    run = start_run(api, namespace, operator, node_agent, tmp_path, "sane", training, SANE_POLICY, backend=backend)

    def judged_while_running() -> dict[str, Any] | None:
        status = run.status()
        verdict = status.get("earlyStopping") or {}
        judged = status.get("phase") == "Running" and verdict.get("decision") == "continue"
        return status if judged else None

    seen = run.wait(judged_while_running, START_S, "a 'continue' verdict while Running")
    assert seen["earlyStopping"]["reason"] == "WithinThresholds", seen
    assert seen["step"] >= 1
    assert math.isfinite(seen["loss"])
    assert math.isfinite(seen["gradNorm"])
    assert seen["learningRate"] == pytest.approx(1e-3)
    assert seen["totalSteps"] == training["maxSteps"]
    final = run.wait_phase("Succeeded", 120)
    assert final["earlyStopping"]["decision"] != "stop", final
    assert run.condition("EarlyStopped") is None
    assert not run.events("EarlyStopped")
    child = client.CustomObjectsApi(api).get_namespaced_custom_object(
        backend.group, backend.version, namespace, backend.plural, run.child
    )
    done = {c["type"]: c["status"] for c in child["status"]["conditions"]}
    assert done[{"pytorchjob": "Succeeded", "trainjob": "Complete"}[backend.name]] == "True", done
