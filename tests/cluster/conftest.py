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

from tests.cluster.controlplane import CACHE, Cluster, missing_artifacts, start_gpu_cluster
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
