"""Fixtures for tests against a real control plane (marker `cluster`).

One cluster per session (start-up is the expensive part: ~15 s), one namespace per test. Without the
binaries from tests/cluster/build.sh the tests skip with the reason, except where a cluster is
required (CI=true or FINETUNE_REQUIRE_CLUSTER=1): there a missing cluster fails them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from finetune_operator.children.backends import BACKENDS
from tests.cluster import trainer_v2 as trainer_v2_parts
from tests.cluster.bindshim import ShimError
from tests.cluster.controlplane import CACHE, Cluster, missing_artifacts, start_gpu_cluster
from tests.cluster.nodeagent_handle import NodeAgentHandle, start_node_agent
from tests.cluster.operator_process import (
    BackendOperator,
    ConfiguredOperator,
    OperatorProcess,
    apply_crd,
    stop_cleanly,
)
from tests.cluster.prometheus import PROMETHEUS, PodDiscovery, PrometheusServer
from tests.cluster.trainer_jobs import garbage_collection_works
from tests.cluster.trainer_v2 import TrainerV2, start_trainer_v2
from tests.cluster.waiting import wait_for


def pytest_configure(config: pytest.Config) -> None:
    # Also registered in pyproject.toml; repeated here so this folder runs under --strict-markers alone.
    config.addinivalue_line("markers", "cluster: needs the local control plane from tests/cluster/build.sh")


def cluster_required() -> bool:
    """In CI a missing cluster is a failure, never a silent skip."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("FINETUNE_REQUIRE_CLUSTER") == "1"


def _skip_or_fail(reason: str) -> None:
    if cluster_required():
        pytest.fail(f"{reason} (a cluster is required: CI=true or FINETUNE_REQUIRE_CLUSTER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The running control plane with 4 fake 8-GPU nodes and the training-operator."""
    missing = missing_artifacts()
    if missing:
        _skip_or_fail(f"cluster binaries missing in {CACHE} ({', '.join(missing)}): run tests/cluster/build.sh")
    running = start_gpu_cluster(tmp_path_factory.mktemp("cluster"))
    procs = list(running.processes)
    try:
        yield running
    finally:
        running.stop()
        left = [proc.name for proc in procs if proc.alive()]
        assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> client.ApiClient:
    """A kubernetes client bound to the test cluster (not to ~/.kube/config)."""
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def namespace(request: pytest.FixtureRequest, cluster: Cluster, api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace, named after the test, whose default ServiceAccount exists (pods need it)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: bool(core.list_namespaced_service_account(name).items), 30, "default ServiceAccount")
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture(scope="module")
def operator_process(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """`finetune operator --all-namespaces` as a real process against the cluster, the FineTuneJob CRD
    applied first (the operator never installs it). Tests may kill and restart it; at the end it must
    exit 0 on SIGTERM."""
    apply_crd(cluster)
    operator = OperatorProcess(cluster, tmp_path_factory.mktemp("operator")).start()
    try:
        yield operator
    finally:
        was_alive = operator.alive()
        code = operator.stop()
        assert was_alive, f"the operator had died before the end of the module (code {code}):\n{operator.log_tail()}"
        assert code == 0, f"the operator exited {code} on SIGTERM, not 0:\n{operator.log_tail()}"


@pytest.fixture(scope="module")
def backend_operator(
    request: pytest.FixtureRequest,
    cluster: Cluster,
    prometheus: PrometheusServer,
    pytorchjob_garbage_collection: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BackendOperator]:
    """`finetune operator --backend <kind> --prometheus-url …`, the kind from indirect parametrisation (default
    pytorchjob); for trainjob, Trainer v2 and JobSet run too. One scenario, both child kinds: parametrise a test
    with `pytest.mark.parametrize("backend_operator", sorted(BACKENDS), indirect=True)`."""
    backend = BACKENDS[getattr(request, "param", "pytorchjob")]
    if backend.name == "trainjob":
        request.getfixturevalue("trainer_v2")
    apply_crd(cluster)
    extra = ["--prometheus-url", prometheus.url, "--backend", backend.name]
    operator = ConfiguredOperator(cluster, tmp_path_factory.mktemp(f"operator-{backend.name}"), extra).start()
    try:
        yield BackendOperator(operator, backend)
    finally:
        stop_cleanly(operator)


@pytest.fixture(scope="session")
def pytorchjob_garbage_collection(cluster: Cluster, api: client.ApiClient) -> None:
    """Wait until the garbage collector deletes a PyTorchJob's dependents (up to ~1 min into a session).

    The PyTorchJob CRD is applied after kube-controller-manager starts, so the GC learns the kind only at its next
    discovery resync (30 s), and owner checks that failed before that are retried with exponential backoff: in a
    fresh cluster a deleted PyTorchJob's pods can outlive it by a minute. Tests that assert "PyTorchJob deleted ->
    pods gone" use this first. (Applying the CRD before starting the controller-manager would remove the wait.)
    """
    name = f"gc-probe-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        wait_for(lambda: garbage_collection_works(api, name), 120, "the GC to collect a PyTorchJob's dependents")
    finally:
        core.delete_namespace(name)


AGENT_NODE = "agent-node"


@pytest.fixture(scope="session")
def node_agent(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgentHandle]:
    """TEST INFRASTRUCTURE: one extra node, `agent-node` (1 nvidia.com/gpu), whose pods run as local processes
    (tests/cluster/nodeagent.py). Pods get there with `nodeagent.scheduling()` (nodeSelector + toleration).
    At the end no process of any of its pods may be left."""
    try:
        agent = start_node_agent(cluster.kubeconfig, tmp_path_factory.mktemp("node-agent"), AGENT_NODE, gpus=1)
    except ShimError as error:
        _skip_or_fail(str(error))
    try:
        cluster.wait_condition(f"node/{AGENT_NODE}", "Ready", timeout=60)
        yield agent
    finally:
        left = agent.stop()
        assert not left, f"node agent left pod processes behind (killed now): {left}"
        gone = cluster.kubectl("get", "node", AGENT_NODE, check=False).returncode != 0
        assert gone, f"node {AGENT_NODE} still registered after the agent stopped:\n{agent.process.log_tail()}"


@pytest.fixture(scope="module")
def prometheus(
    api: client.ApiClient, node_agent: NodeAgentHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """A real Prometheus on 127.0.0.1 scraping the agent node's pods' `metrics` ports every second (targets
    from a file_sd file that `PodDiscovery` keeps in step with the pods, as kubernetes_sd would)."""
    if not os.access(PROMETHEUS, os.X_OK):
        _skip_or_fail(f"{PROMETHEUS} missing: install the Debian package prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    discovery = PodDiscovery(api, node_agent.node, workdir / "targets.json").start()
    server = PrometheusServer(workdir, discovery.targets_file)
    try:
        server.check_config()
        server.start()
        yield server
    finally:
        server.stop()
        discovery.stop()
        assert not server.alive(), "prometheus still running after stop"


@pytest.fixture(scope="module")
def trainer_v2(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerV2]:
    """Kubeflow Trainer v2 and JobSet (tests/cluster/trainer_v2.py) with our ClusterTrainingRuntime applied, for
    the modules of the trainjob backend only: stopped (webhooks unregistered) at the module's end, so the rest of
    the suite runs on the control plane it always had. Their CRDs stay (test operators pin --backend)."""
    missing = trainer_v2_parts.missing_artifacts()
    if missing:
        _skip_or_fail(f"Trainer v2 / JobSet not built ({', '.join(missing)}): run tests/cluster/build_trainer.sh")
    started = start_trainer_v2(cluster, tmp_path_factory.mktemp("trainer-v2"))
    try:
        yield started
    finally:
        started.stop()
