"""Early stopping end to end (issue 6), with real parts only: FineTuneJob → operator → PyTorchJob →
training-operator → pod → scheduler → node agent (TEST INFRASTRUCTURE: the pod becomes a real local trainer
process) → /metrics → Prometheus (or the operator's direct scrape) → policy → verdict in status → PyTorchJob
deleted → the agent kills the trainer.

Runs are tiny (2-layer Llama, byte-level tokenizer, 8 samples a step, ~30 ms a step on one core after ~8 s of
start-up); evaluations every 5 s (the API minimum), scrapes every second. The agent node has one GPU, so the
scenarios run one after another. Bad runs are long (thousands of steps) so that only the operator can end them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_contract import names
from finetune_operator.children.backends import PYTORCHJOB, Backend
from tests.cluster.components import free_port
from tests.cluster.controlplane import Cluster
from tests.cluster.nodeagent_handle import NodeAgentHandle
from tests.cluster.nodeagent_objects import ENV_ANNOTATION_PREFIX
from tests.cluster.operator_process import ConfiguredOperator as Operator
from tests.cluster.operator_process import apply_crd
from tests.cluster.operator_process import stop_cleanly as _stop_cleanly
from tests.cluster.prometheus import PrometheusServer
from tests.cluster.trainer_jobs import annotate_namespace, conditions_of, create_ftj, get_ftj, trainer_job
from tests.cluster.waiting import WaitTimeoutError

pytestmark = pytest.mark.cluster
T = TypeVar("T")

INTERVAL_S = 5  # earlyStopping.evaluationIntervalSeconds: the API's minimum
START_S = 90  # FineTuneJob created -> trainer has stepped and been evaluated, with room for a loaded machine
# Divergence effectively off, so the stop's reason is deterministic. (`divergenceFactor: null` would be the way,
# but the CRD field is not `nullable`: the API server prunes the null and defaults it to 3.0.)
DIVERGENCE_OFF = 1e6

# lr 1.0 on this model: grad norm 2.3 at step 1, then 13-50 from step 2 on (loss 5.6 -> 17 -> 84 ...).
BAD_TRAINING = {"learningRate": 1.0, "maxSteps": 20_000}
BAD_POLICY = {
    "checkAfterSteps": 3,
    "windowSteps": 2,
    "maxGradNorm": 5.0,
    "divergenceFactor": DIVERGENCE_OFF,
    "evaluationIntervalSeconds": INTERVAL_S,
}
# lr 1e-3: loss falls 5.6 -> ~0.1 and grad norm stays under 10 over hundreds of steps.
SANE_POLICY = {"checkAfterSteps": 3, "windowSteps": 2, "maxGradNorm": 1000.0, "evaluationIntervalSeconds": INTERVAL_S}
# Test-only trainer hook, injected by the node agent from a namespace annotation (FINETUNE_* is reserved in
# spec.resources.env): NaN from this step on. The run also sets training.maxNonFiniteSteps high, or the trainer's
# own guard would end it with exit 3 after 4 NaN steps, ~0.15 s here: before any scrape or evaluation.
NAN_STEP = 30
NAN_ENV = {names.ENV_FAULT_NAN_AT_STEP: str(NAN_STEP)}


@pytest.fixture(scope="module")
def es_operator(
    cluster: Cluster,
    prometheus: PrometheusServer,
    pytorchjob_garbage_collection: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """`finetune operator --prometheus-url http://127.0.0.1:<port>`: early stopping through Prometheus."""
    apply_crd(cluster)
    operator = Operator(cluster, tmp_path_factory.mktemp("operator"), ["--prometheus-url", prometheus.url])
    operator.start()
    try:
        yield operator
    finally:
        _stop_cleanly(operator)


@pytest.fixture
def direct_operator(es_operator: Operator, cluster: Cluster, tmp_path: Path) -> Iterator[Operator]:
    """The operator WITHOUT --prometheus-url (it scrapes the Master pod itself), in place of the module's."""
    _stop_cleanly(es_operator)
    operator = Operator(cluster, tmp_path).start()
    try:
        yield operator
    finally:
        _stop_cleanly(operator)
        es_operator.start()


# -- one run, as the tests see it --------------------------------------------------------------------------------
@dataclass
class Run:
    api: client.ApiClient
    namespace: str
    name: str
    operator: Operator
    agent: NodeAgentHandle
    backend: Backend = PYTORCHJOB
    _master: str | None = None

    @property
    def child(self) -> str:
        return self.backend.child_name(self.name)

    @property
    def master_pod(self) -> str:
        """The rank-0 pod's name: fixed for a PyTorchJob; a TrainJob's (JobSet's) has a random suffix, found once."""
        if self.backend is PYTORCHJOB:
            return f"{self.child}-master-0"
        if self._master is None:
            selector = f"{self.backend.pod_label}={self.child}"
            pods = client.CoreV1Api(self.api).list_namespaced_pod(self.namespace, label_selector=selector).items
            ranked = [pod for pod in pods if self.backend.is_rank0(self.api.sanitize_for_serialization(pod))]
            if not ranked:
                return f"{self.child}-node-0-0"  # not made yet
            self._master = str(ranked[0].metadata.name)
        return self._master

    def ftj(self) -> dict[str, Any]:
        return get_ftj(self.api, self.namespace, self.name)

    def status(self) -> dict[str, Any]:
        return dict(self.ftj().get("status") or {})

    def condition(self, kind: str) -> dict[str, Any] | None:
        return conditions_of(self.ftj()).get(kind)

    def child_exists(self) -> bool:
        try:
            client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                self.backend.group, self.backend.version, self.namespace, self.backend.plural, self.child
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def trainer_processes(self) -> list[int]:
        return self.agent.pod_processes(f"{self.namespace}/{self.master_pod}")

    def events(self, reason: str) -> list[client.CoreV1Event]:
        selector = f"involvedObject.kind=FineTuneJob,involvedObject.name={self.name},reason={reason}"
        return list(client.CoreV1Api(self.api).list_namespaced_event(self.namespace, field_selector=selector).items)

    def wait(self, probe: Callable[[], T], timeout: float, what: str) -> T:
        """Poll (failing at once if the operator died); on timeout, say where the run stood."""
        try:
            return self.operator.wait_for(probe, timeout, what, interval=0.5)
        except WaitTimeoutError as error:
            raise WaitTimeoutError(f"{error}\n{self.diagnostics()}") from None

    def wait_phase(self, phase: str, timeout: float = START_S) -> dict[str, Any]:
        return self.wait(lambda: (status := self.status()).get("phase") == phase and status, timeout, f"phase {phase}")

    def diagnostics(self) -> str:
        try:
            status = self.status()
        except ApiException as error:
            status = {"error": str(error)}
        log = self.agent.container_log(self.namespace, self.master_pod, 15)
        return f"FineTuneJob status: {status}\ntrainer output (tail):\n{log}"


def start_run(
    api: client.ApiClient,
    namespace: str,
    operator: Operator,
    agent: NodeAgentHandle,
    tmp_path: Path,
    name: str,
    training: dict[str, Any],
    policy: dict[str, Any],
    prometheus_url: str | None = None,
    backend: Backend = PYTORCHJOB,
) -> Run:
    manifest = trainer_job(name, tmp_path / "out", free_port(), training=training, early_stopping=policy)
    if prometheus_url is not None:
        manifest["spec"]["metrics"]["prometheusUrl"] = prometheus_url
    create_ftj(api, namespace, manifest)
    return Run(api, namespace, name, operator, agent, backend)


def early_stops(operator: Operator, rule: str) -> float:
    return operator.metric_sum("finetune_operator_early_stops_total", rule=rule)


def assert_stopped(run: Run, reason: str, rule: str, metrics: Sequence[str]) -> dict[str, Any]:
    """Everything a stop must leave behind: phase, condition, verdict with evidence, Event, no child, no process."""
    status = run.wait_phase("EarlyStopped")
    verdict = status["earlyStopping"]
    assert verdict["decision"] == "stop", verdict
    assert verdict["reason"] == reason, verdict
    evidence = verdict["evidence"]
    assert evidence["rule"] == rule, evidence
    assert evidence["metric"] in metrics, evidence
    assert evidence["fromStep"] <= evidence["toStep"], evidence
    assert evidence["value"], evidence
    stopped = run.condition("EarlyStopped")
    assert stopped is not None, status
    assert (stopped["status"], stopped["reason"]) == ("True", reason), stopped
    assert str(evidence["toStep"]) in stopped["message"], stopped  # the evidence, readable in kubectl describe
    assert any(event.type == "Warning" for event in run.events("EarlyStopped")), "no Warning Event EarlyStopped"
    run.master_pod  # noqa: B018 - found (and kept) while the pod exists: the process check below needs its name
    run.wait(lambda: not run.child_exists(), 30, f"{run.backend.kind} {run.child} deleted")
    # A TrainJob's pods go by the garbage collector's cascade (TrainJob → JobSet → Job → pod), then the trainer
    # checkpoints on SIGTERM: ~30 s on this loaded 2-core machine (a PyTorchJob's pods are deleted directly).
    run.wait(lambda: not run.trainer_processes(), 90, "the trainer's processes gone")
    # Stopped stays stopped: the deleted child is not recreated, the phase is not overwritten.
    time.sleep(INTERVAL_S)
    assert run.status().get("phase") == "EarlyStopped", run.diagnostics()
    assert not run.child_exists(), f"the {run.backend.kind} came back after the stop"
    return dict(evidence)


# -- the scenarios ----------------------------------------------------------------------------------------------
def test_nan_is_stopped_at_once(
    api: client.ApiClient, namespace: str, es_operator: Operator, node_agent: NodeAgentHandle, tmp_path: Path
) -> None:
    annotate_namespace(api, namespace, {ENV_ANNOTATION_PREFIX + key: value for key, value in NAN_ENV.items()})
    policy = {"checkAfterSteps": 10_000, "windowSteps": 2, "evaluationIntervalSeconds": INTERVAL_S}
    training = {"learningRate": 1e-3, "maxSteps": 20_000, "maxNonFiniteSteps": 1_000_000}
    run = start_run(api, namespace, es_operator, node_agent, tmp_path, "nan", training, policy)
    evidence = assert_stopped(run, "NonFinite", "nonFinite", ["loss", "gradNorm"])  # both NaN from the fault on
    assert NAN_STEP <= evidence["fromStep"] < policy["checkAfterSteps"], evidence  # at once: no window, no wait
    assert not math.isfinite(float(evidence["value"])), evidence


def test_prometheus_down_is_never_a_stop_and_recovery_clears_it(
    api: client.ApiClient,
    namespace: str,
    es_operator: Operator,
    node_agent: NodeAgentHandle,
    prometheus: PrometheusServer,
    tmp_path: Path,
) -> None:
    training = {"learningRate": 1e-3, "maxSteps": 2000}  # ~60 s of steps: room for the outage and the recovery
    run = start_run(api, namespace, es_operator, node_agent, tmp_path, "prom-down", training, SANE_POLICY)
    run.wait(lambda: (run.status().get("earlyStopping") or {}).get("decision") == "continue", START_S, "continue")
    prometheus.kill()
    try:
        down = run.wait(lambda: _condition_is(run, "MetricsUnavailable", "True"), 30, "MetricsUnavailable=True")
        assert down["reason"] == "PrometheusUnavailable", down
        status = run.status()
        assert status["phase"] == "Running", status
        assert status["earlyStopping"]["decision"] == "unknown", status
        assert run.child_exists()
        step_at_outage = status["step"]
    finally:
        prometheus.start()
    run.wait(lambda: _condition_is(run, "MetricsUnavailable", "False"), 60, "MetricsUnavailable=False")

    def judged_again() -> bool:  # the run went on, and the operator sees its new steps again
        status = run.status()
        return status["earlyStopping"]["decision"] == "continue" and status["step"] > step_at_outage

    run.wait(judged_again, 30, f"a 'continue' verdict on a step after {step_at_outage}")
    final = run.wait_phase("Succeeded", 180)
    assert run.condition("EarlyStopped") is None, final
    assert not run.events("EarlyStopped")


def _condition_is(run: Run, kind: str, value: str) -> dict[str, Any] | None:
    found = run.condition(kind)
    return found if found is not None and found["status"] == value else None


def test_direct_scrape_stops_the_bad_run_without_prometheus(
    api: client.ApiClient, namespace: str, direct_operator: Operator, node_agent: NodeAgentHandle, tmp_path: Path
) -> None:
    assert "--prometheus-url" not in direct_operator.argv()
    run = start_run(api, namespace, direct_operator, node_agent, tmp_path, "direct", BAD_TRAINING, BAD_POLICY)
    evidence = assert_stopped(run, "GradNormAboveMax", "maxGradNorm", ["gradNorm"])
    assert float(evidence["value"]) > BAD_POLICY["maxGradNorm"]
    assert early_stops(direct_operator, "maxGradNorm") == 1


def test_a_jobs_prometheus_url_overrides_the_operators_source(
    api: client.ApiClient, namespace: str, direct_operator: Operator, node_agent: NodeAgentHandle, tmp_path: Path
) -> None:
    """The direct-scrape operator reads this job from ITS Prometheus: a dead one says PrometheusUnavailable (not
    ScrapeFailed) and, being missing data, never stops the bad run."""
    dead = f"http://127.0.0.1:{free_port()}"
    run = start_run(api, namespace, direct_operator, node_agent, tmp_path, "override", BAD_TRAINING, BAD_POLICY, dead)
    condition = run.wait(lambda: _condition_is(run, "MetricsUnavailable", "True"), 90, "MetricsUnavailable")
    assert condition["reason"] == "PrometheusUnavailable"
    assert dead in condition["message"]
    assert (get_ftj(api, namespace, "override").get("status") or {}).get("phase") != "EarlyStopped"
