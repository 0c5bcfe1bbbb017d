"""The scheduler's GPU accounting on fake nodes: too big a job waits, and starts once capacity appears."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.cluster.controlplane import GPU_NODES, GPUS_PER_NODE, Cluster
from tests.cluster.pytorchjobs import create_pytorchjob, gpus_in_use, handwritten_pytorchjob, job_pods, wait_running
from tests.cluster.waiting import stays, wait_for

pytestmark = pytest.mark.cluster

EXTRA_NODE = "gpu-node-extra"


def _unschedulable(pod: client.V1Pod) -> str | None:
    """The scheduler's message when it marked the pod unschedulable, else None."""
    for cond in pod.status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return str(cond.message)
    return None


def test_job_larger_than_the_cluster_waits_until_a_node_is_added(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    wait_for(lambda: gpus_in_use(api) == 0, 90, "earlier tests' pods to release their GPUs")
    workers = GPU_NODES  # Master + GPU_NODES workers, 8 GPUs each: one node's worth more than exists
    create_pytorchjob(api, namespace, handwritten_pytorchjob("too-big", workers=workers, gpus=GPUS_PER_NODE))

    def one_pending() -> list[str]:
        pods = job_pods(api, namespace, "too-big")
        running = [p for p in pods if p.status.phase == "Running"]
        messages = [m for p in pods if (m := _unschedulable(p))]
        return messages if len(pods) == workers + 1 and len(running) == GPU_NODES and len(messages) == 1 else []

    messages = wait_for(one_pending, 60, f"{GPU_NODES} Running pods and 1 Unschedulable")
    assert "Insufficient nvidia.com/gpu" in messages[0]
    stays(lambda: len(one_pending()) == 1, 3, "the extra pod staying Pending")
    try:
        cluster.add_gpu_node(EXTRA_NODE, GPUS_PER_NODE)
        pods = wait_running(api, namespace, "too-big", count=workers + 1)
        assert EXTRA_NODE in {pod.spec.node_name for pod in pods}
    finally:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs", "too-big"
        )
        wait_for(lambda: not job_pods(api, namespace, "too-big"), 60, "the job's pods to be deleted")
        cluster.kubectl("delete", "node", EXTRA_NODE, "--wait=true")
