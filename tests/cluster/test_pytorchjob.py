"""PyTorchJobs on the real CRD: the training-operator makes pods, the scheduler binds them to GPU nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_operator.children.pytorchjob import render_pytorchjob
from tests.cluster.controlplane import GPU_PRODUCT, GPU_PRODUCT_LABEL, GPU_RESOURCE
from tests.cluster.pytorchjobs import (
    REPLICA_TYPE_LABEL,
    create_pytorchjob,
    end_pod,
    env_of,
    gpu_limit,
    handwritten_pytorchjob,
    wait_condition,
    wait_running,
)
from tests.cluster.storage import shared_output_claim
from tests.manifests import JOB_EXAMPLES, minimal_job

pytestmark = pytest.mark.cluster


def _node_labels(api: client.ApiClient, node: str) -> dict[str, str]:
    return dict(client.CoreV1Api(api).read_node(node).metadata.labels)


def test_pytorchjob_crd_rejects_a_malformed_job(api: client.ApiClient, namespace: str) -> None:
    manifest = handwritten_pytorchjob("malformed")
    manifest["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    with pytest.raises(ApiException) as err:
        create_pytorchjob(api, namespace, manifest)
    assert err.value.status == 422
    assert "spec.pytorchReplicaSpecs.Master.replicas" in err.value.body


def test_operator_creates_gpu_pods_with_distributed_env(api: client.ApiClient, namespace: str) -> None:
    create_pytorchjob(api, namespace, handwritten_pytorchjob("ddp", workers=1, gpus=8))
    pods = wait_running(api, namespace, "ddp", count=2)
    assert [pod.metadata.name for pod in pods] == ["ddp-master-0", "ddp-worker-0"]
    # 8 GPUs each on 8-GPU nodes: the scheduler must put them on two different fake nodes.
    assert len({pod.spec.node_name for pod in pods}) == 2
    for rank, pod in enumerate(pods):
        assert _node_labels(api, pod.spec.node_name)[GPU_PRODUCT_LABEL] == GPU_PRODUCT
        assert gpu_limit(pod) == "8"
        env = env_of(pod)
        assert env["MASTER_ADDR"] == "ddp-master-0"
        assert env["MASTER_PORT"] == "23456"
        assert env["WORLD_SIZE"] == "16"
        assert env["RANK"] == str(rank)
        assert env["PET_NPROC_PER_NODE"] == "8"
        assert env["PET_NNODES"] == "2"
    wait_condition(api, namespace, "ddp", "Running")


def test_master_exit_zero_succeeds_the_job(api: client.ApiClient, namespace: str) -> None:
    create_pytorchjob(api, namespace, handwritten_pytorchjob("finishes", workers=1, gpus=1))
    wait_running(api, namespace, "finishes", count=2)
    end_pod(api, namespace, "finishes-worker-0", 0)
    end_pod(api, namespace, "finishes-master-0", 0)
    wait_condition(api, namespace, "finishes", "Succeeded")


def test_master_exit_nonzero_fails_the_job(api: client.ApiClient, namespace: str) -> None:
    create_pytorchjob(api, namespace, handwritten_pytorchjob("crashes", workers=0, gpus=1))
    wait_running(api, namespace, "crashes", count=1)
    end_pod(api, namespace, "crashes-master-0", 1)
    job = wait_condition(api, namespace, "crashes", "Failed")
    assert job["status"]["replicaStatuses"]["Master"].get("failed") == 1


# -- our render function against the real CRD and operator -------------------------------------------------


def _finetunejob(namespace: str, nodes: int, gpus: int) -> dict[str, Any]:
    job = minimal_job("rendered", resources={"nodes": nodes, "gpusPerNode": gpus, "cpu": 8, "memory": "64Gi"})
    job["metadata"].update(namespace=namespace, uid="0b7c7d2e-5f7e-4a51-9a55-2f4c1e0c1a01")
    return job


@pytest.mark.parametrize(("nodes", "gpus"), [(1, 8), (3, 4)])
def test_rendered_pytorchjob_runs_on_gpu_nodes(api: client.ApiClient, namespace: str, nodes: int, gpus: int) -> None:
    manifest = render_pytorchjob(_finetunejob(namespace, nodes, gpus))
    if nodes > 1:
        shared_output_claim(api, namespace)  # a multi-node job's output is on a shared claim (tests/manifests.py)
    created = create_pytorchjob(api, namespace, manifest)
    name = created["metadata"]["name"]
    pods = wait_running(api, namespace, name, count=nodes)
    ranks = set()
    for pod in pods:
        assert _node_labels(api, pod.spec.node_name)["type"] == "kwok"
        limits = next(c for c in pod.spec.containers if c.name == "pytorch").resources.limits
        assert limits[GPU_RESOURCE] == str(gpus)
        env = env_of(pod)
        assert env["MASTER_ADDR"] == f"{name}-master-0"
        assert env["WORLD_SIZE"] == str(nodes * gpus)
        assert env["PET_NPROC_PER_NODE"] == str(gpus)
        assert env["PET_NNODES"] == str(nodes)
        ranks.add(int(env["RANK"]))
        expected_type = "master" if env["RANK"] == "0" else "worker"
        assert pod.metadata.labels[REPLICA_TYPE_LABEL] == expected_type
    assert ranks == set(range(nodes))


@pytest.mark.parametrize("example", JOB_EXAMPLES, ids=lambda path: path.name)
def test_every_example_renders_to_a_pytorchjob_the_crd_accepts(
    api: client.ApiClient, namespace: str, example: Path
) -> None:
    """Server-side dry run: the real CRD schema judges the whole rendered object, nothing is started."""
    ftj = yaml.safe_load(example.read_text())
    ftj["metadata"]["namespace"] = namespace
    body = render_pytorchjob(ftj)
    accepted = client.CustomObjectsApi(api).create_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", body, dry_run="All"
    )
    replicas = accepted["spec"]["pytorchReplicaSpecs"]
    assert sum(spec["replicas"] for spec in replicas.values()) == ftj["spec"].get("resources", {}).get("nodes", 1)
