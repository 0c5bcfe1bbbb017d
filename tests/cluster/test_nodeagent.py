"""The node agent (TEST INFRASTRUCTURE, tests/cluster/nodeagent.py) does a kubelet's job well enough to trust
the early-stopping tests built on it: pods become real processes with their own loopback IP, report how they
end, die with their pod, and a PyTorchJob's trainer is scraped by a real Prometheus."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_operator.children.pytorchjob import render_pytorchjob
from tests.cluster import nodeagent_objects as agent_objects
from tests.cluster.components import FAKE_NODE_ANNOTATION, free_port
from tests.cluster.controlplane import GPU_RESOURCE, Cluster
from tests.cluster.nodeagent_handle import NodeAgentHandle, listening
from tests.cluster.prometheus import PrometheusServer
from tests.cluster.pytorchjobs import create_pytorchjob, job_pods, wait_condition
from tests.cluster.trainer_jobs import annotate_namespace, trainer_job
from tests.cluster.waiting import stays, wait_for

pytestmark = pytest.mark.cluster

ENV_REPORT = r"""
import json, os, socket, sys, time
server = socket.socket(socket.AF_INET6)
server.bind(("::", 0))  # the wildcard, as torchrun's rendezvous store binds it
server.listen()
names = ("MASTER_ADDR", "PET_MASTER_ADDR", "FINETUNE_METRICS_ADDR", "HF_HUB_OFFLINE", "PATH", "FAULT", "OWN")
print(json.dumps({"env": {n: os.environ.get(n) for n in names}, "bound": server.getsockname()[0]}), flush=True)
time.sleep(float(sys.argv[1]))
"""


def plain_pod(name: str, command: list[str], **env: str) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "registry.invalid/ignored:1",
        "command": command,
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "resources": {"limits": {GPU_RESOURCE: "1"}},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {**agent_objects.scheduling(), "restartPolicy": "Never", "containers": [container]},
    }


def pod_gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        return error.status == 404
    return False


def test_agent_node_is_ready_tainted_and_not_kwok_managed(cluster: Cluster, node_agent: NodeAgentHandle) -> None:
    node = json.loads(cluster.kubectl("get", "node", node_agent.node, "-o", "json").stdout)
    assert FAKE_NODE_ANNOTATION not in node["metadata"].get("annotations", {})
    assert node["metadata"]["labels"][agent_objects.NODE_LABEL] == agent_objects.NODE_LABEL_VALUE
    assert agent_objects.TAINT in node["spec"]["taints"]
    assert node["status"]["allocatable"][GPU_RESOURCE] == "1"
    lease = json.loads(cluster.kubectl("get", "lease", node_agent.node, "-n", "kube-node-lease", "-o", "json").stdout)
    assert lease["spec"]["holderIdentity"] == node_agent.node


def test_a_pod_runs_as_a_local_process_with_its_own_ip_and_dies_with_its_pod(
    api: client.ApiClient, namespace: str, node_agent: NodeAgentHandle
) -> None:
    core = client.CoreV1Api(api)
    annotate_namespace(api, namespace, {f"{agent_objects.ENV_ANNOTATION_PREFIX}FAULT": "injected"})
    manifest = plain_pod("reporter", [sys.executable, "-c", ENV_REPORT, "600"], MASTER_ADDR="reporter", OWN="1")
    core.create_namespaced_pod(namespace, manifest)

    def running() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("reporter", namespace)
        return pod if pod.status.phase == "Running" else None

    pod = wait_for(running, 30, "pod reporter Running")
    assert pod.spec.node_name == node_agent.node
    assert pod.status.pod_ip.startswith(node_agent.ip_prefix)
    assert pod.status.host_ip == "127.0.0.1"
    assert pod.status.container_statuses[0].state.running is not None
    report = wait_for(lambda: _first_json(node_agent.container_log(namespace, "reporter")), 30, "the env report")
    ip = pod.status.pod_ip
    assert report["bound"] == f"::ffff:{ip}"  # a wildcard bind lands on the pod's IP only
    assert report["env"]["MASTER_ADDR"] == ip  # the pod's own "Service" name resolves to itself
    assert report["env"]["FINETUNE_METRICS_ADDR"] == ip
    assert report["env"]["HF_HUB_OFFLINE"] == "1"
    assert report["env"]["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert report["env"]["FAULT"] == "injected"
    assert report["env"]["OWN"] == "1"
    assert node_agent.pod_processes(f"{namespace}/reporter")

    core.delete_namespaced_pod("reporter", namespace)  # graceful: SIGTERM kills python at once
    wait_for(lambda: pod_gone(core, namespace, "reporter"), 30, "pod reporter removed by the agent")
    assert node_agent.pod_processes(f"{namespace}/reporter") == []


@pytest.mark.parametrize(("code", "phase", "reason"), [(0, "Succeeded", "Completed"), (3, "Failed", "Error")])
def test_exit_codes_end_the_pod(
    api: client.ApiClient, namespace: str, node_agent: NodeAgentHandle, code: int, phase: str, reason: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, plain_pod("ends", [sys.executable, "-c", f"raise SystemExit({code})"]))

    def ended() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("ends", namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = wait_for(ended, 30, "pod ends")
    assert pod.status.phase == phase
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (code, reason)


def test_pods_without_the_toleration_stay_off_the_agent_node(
    api: client.ApiClient, namespace: str, node_agent: NodeAgentHandle
) -> None:
    core = client.CoreV1Api(api)
    manifest = plain_pod("untolerated", ["true"])
    del manifest["spec"]["tolerations"]
    core.create_namespaced_pod(namespace, manifest)
    stays(lambda: not core.read_namespaced_pod("untolerated", namespace).spec.node_name, 3, "pod stays unbound")


def test_a_rendered_pytorchjob_trains_and_prometheus_scrapes_it(
    api: client.ApiClient,
    namespace: str,
    node_agent: NodeAgentHandle,
    prometheus: PrometheusServer,
    tmp_path: Path,
) -> None:
    """No operator: the render function's PyTorchJob, the training-operator's pod, a real trainer on this node."""
    port = free_port()
    ftj = trainer_job("rendered", tmp_path / "out", port, training={"maxSteps": 150})
    ftj["metadata"]["namespace"] = namespace
    create_pytorchjob(api, namespace, render_pytorchjob(ftj, trainer_image="registry.invalid/trainer:1"))
    pod = wait_for(lambda: _running_pod(api, namespace, "rendered"), 60, "the master pod Running")
    key = f"{namespace}/{pod.metadata.name}"
    series = f'finetune_optimizer_step{{finetunejob="rendered",namespace="{namespace}"}}'

    def scraped() -> list[dict[str, Any]]:
        return [sample for sample in prometheus.query(series) if float(sample["value"][1]) >= 1]

    try:
        sample = wait_for(scraped, 60, f"Prometheus to scrape {series}")[0]
    except AssertionError as error:
        output = node_agent.container_log(namespace, pod.metadata.name)
        raise AssertionError(f"{error}\ncontainer log:\n{output}") from None
    assert sample["metric"]["pod"] == pod.metadata.name
    assert sample["metric"]["instance"] == f"{pod.status.pod_ip}:{port}"
    # Every listener of the pod (torchrun's store on 23456, the trainer's /metrics) is on the pod's IP only.
    addresses = {address.removeprefix("::ffff:") for address, _ in listening(node_agent.pod_processes(key))}
    assert addresses == {pod.status.pod_ip}, addresses
    wait_condition(api, namespace, "rendered", "Succeeded", timeout=120)
    assert job_pods(api, namespace, "rendered")[0].status.phase == "Succeeded"
    wait_for(lambda: not node_agent.pod_processes(key), 10, "no process left of the finished pod")


def _running_pod(api: client.ApiClient, namespace: str, job: str) -> client.V1Pod | None:
    pods = [pod for pod in job_pods(api, namespace, job) if pod.status.phase == "Running" and pod.status.pod_ip]
    return pods[0] if pods else None


def _first_json(text: str) -> dict[str, Any] | None:
    for line in text.splitlines():
        if line.startswith("{"):
            found: dict[str, Any] = json.loads(line)
            return found
    return None
