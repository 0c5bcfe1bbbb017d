"""The control plane itself: version, loopback-only listeners, fake GPU nodes, controller-manager."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.controlplane import GPU_NODES, GPU_PRODUCT, GPU_PRODUCT_LABEL, GPU_RESOURCE, GPUS_PER_NODE, Cluster
from tests.cluster.helm_chart import version_probe_chart
from tests.cluster.sockets import is_loopback, listening_addresses
from tests.cluster.waiting import wait_for

pytestmark = pytest.mark.cluster

K8S_VERSION = "v1.36.3"


def test_server_and_kubectl_report_the_pinned_release(cluster: Cluster) -> None:
    """Unstamped builds say v0.0.0-master, which breaks Helm's kubeVersion checks."""
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == K8S_VERSION
    assert versions["clientVersion"]["gitVersion"] == K8S_VERSION
    assert versions["serverVersion"]["minor"] == K8S_VERSION.split(".")[1]


def test_every_component_listens_on_loopback_only(cluster: Cluster) -> None:
    listening = listening_addresses([proc.pid for proc in cluster.processes])
    by_name = {proc.name: listening[proc.pid] for proc in cluster.processes}
    assert by_name["kube-apiserver"] == [f"127.0.0.1:{cluster.ports.apiserver}"]
    assert f"127.0.0.1:{cluster.ports.operator_webhook}" in by_name["training-operator"]
    exposed = {name: [a for a in addrs if not is_loopback(a)] for name, addrs in by_name.items()}
    assert not any(exposed.values()), exposed


def test_fake_gpu_nodes_are_ready_with_gpus(api: client.ApiClient) -> None:
    nodes = client.CoreV1Api(api).list_node(label_selector=GPU_PRODUCT_LABEL).items
    base = [node for node in nodes if node.metadata.name.startswith("gpu-node-")]
    assert len(base) >= GPU_NODES
    for node in base:
        assert node.status.allocatable[GPU_RESOURCE] == str(GPUS_PER_NODE)
        assert node.metadata.labels[GPU_PRODUCT_LABEL] == GPU_PRODUCT
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", node.metadata.name


def test_garbage_collector_deletes_owned_objects(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid, block_owner_deletion=True
    )
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="child", owner_references=[reference]))
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    wait_for(
        lambda: not [cm for cm in core.list_namespaced_config_map(namespace).items if cm.metadata.name == "child"],
        60,
        "the garbage collector to delete the owned ConfigMap",
    )


def test_namespace_deletion_completes(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="doomed")))
    core.create_namespaced_config_map("doomed", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content")))
    core.delete_namespace("doomed")
    wait_for(
        lambda: "doomed" not in {ns.metadata.name for ns in core.list_namespace().items},
        60,
        "the namespace controller to finish deleting the namespace",
    )


def test_helm_installs_a_chart_that_constrains_the_kube_version(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """Helm refuses charts whose kubeVersion the server does not satisfy: proves the version stamp."""
    chart = version_probe_chart(tmp_path, ">=1.30.0-0")
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    helm = [cluster.bin("helm"), "--namespace", namespace]
    subprocess.run([*helm, "install", "probe", str(chart), "--wait"], env=env, check=True, capture_output=True)
    data = cluster.kubectl("get", "configmap", "probe", "-n", namespace, "-o", "jsonpath={.data.kube}").stdout
    assert data == K8S_VERSION
    listed = subprocess.run([*helm, "list", "-o", "json"], env=env, check=True, capture_output=True, text=True)
    assert [release["status"] for release in json.loads(listed.stdout)] == ["deployed"]
