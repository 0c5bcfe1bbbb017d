"""Creating PyTorchJobs and reading back what the training-operator, scheduler and kwok made of them."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tests.cluster.controlplane import GPU_RESOURCE
from tests.cluster.waiting import wait_for

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
EXIT_CODE_ANNOTATION = "test.finetune.dev/exit-code"  # read by stages/pod-exit-on-demand.yaml
IMAGE = "registry.invalid/finetune-trainer:test"  # never pulled: kwok runs no containers


def handwritten_pytorchjob(name: str, workers: int = 1, gpus: int = 8, restart_policy: str = "Never") -> dict[str, Any]:
    """A minimal PyTorchJob in the shape our render function produces (Master + Workers, `pytorch`)."""

    def replicas(count: int) -> dict[str, Any]:
        container = {
            "name": "pytorch",
            "image": IMAGE,
            "command": ["torchrun", "--module", "finetune_trainer"],
            "resources": {"limits": {GPU_RESOURCE: gpus}},
        }
        return {"replicas": count, "restartPolicy": restart_policy, "template": {"spec": {"containers": [container]}}}

    specs = {"Master": replicas(1)}
    if workers:
        specs["Worker"] = replicas(workers)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"nprocPerNode": str(gpus), "pytorchReplicaSpecs": specs},
    }


def create_custom(
    api: client.ApiClient, kind: tuple[str, str, str], namespace: str, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Create a namespaced custom object of `kind` = (group, version, plural) in `namespace`."""
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        *kind[:2], namespace, kind[2], body
    )
    return created


def get_custom(api: client.ApiClient, kind: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        *kind[:2], namespace, kind[2], name
    )
    return found


def create_pytorchjob(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    return create_custom(api, (GROUP, VERSION, PLURAL), namespace, manifest)


def get_pytorchjob(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return get_custom(api, (GROUP, VERSION, PLURAL), namespace, name)


def job_pods(api: client.ApiClient, namespace: str, job: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={job}").items
    return sorted(pods, key=lambda pod: pod.metadata.name)


def wait_running(
    api: client.ApiClient, namespace: str, job: str, count: int, timeout: float = 60
) -> list[client.V1Pod]:
    """Wait until `count` pods of the job are Running (scheduled, and started by kwok's pod-ready stage)."""

    def running() -> list[client.V1Pod]:
        pods = [pod for pod in job_pods(api, namespace, job) if pod.status.phase == "Running"]
        return pods if len(pods) == count else []

    return wait_for(running, timeout, f"{count} Running pods of PyTorchJob {job}")


def condition(job: dict[str, Any], kind: str) -> str | None:
    """Status of the job's condition `kind` (Created, Running, Succeeded, Failed...), None if absent."""
    for cond in job.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return str(cond["status"])
    return None


def wait_condition(api: client.ApiClient, namespace: str, name: str, kind: str, timeout: float = 60) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = get_pytorchjob(api, namespace, name)
        return job if condition(job, kind) == "True" else None

    found = wait_for(reached, timeout, f"PyTorchJob {name} condition {kind}=True")
    assert found is not None
    return found


def end_pod(api: client.ApiClient, namespace: str, pod: str, exit_code: int) -> None:
    """Make kwok end every container of a Running pod with `exit_code` (0: Succeeded, else Failed)."""
    patch = {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: str(exit_code)}}}
    client.CoreV1Api(api).patch_namespaced_pod(pod, namespace, patch)


def env_of(pod: client.V1Pod, container: str = "pytorch") -> dict[str, str]:
    spec = next(c for c in pod.spec.containers if c.name == container)
    return {var.name: var.value for var in spec.env or []}


def gpu_limit(pod: client.V1Pod, container: str = "pytorch") -> str:
    spec = next(c for c in pod.spec.containers if c.name == container)
    return str(spec.resources.limits[GPU_RESOURCE])


def gpus_in_use(api: client.ApiClient) -> int:
    """GPUs held by bound, unfinished pods anywhere in the cluster (the scheduler's view)."""
    total = 0
    for pod in client.CoreV1Api(api).list_pod_for_all_namespaces().items:
        if not pod.spec.node_name or pod.status.phase in ("Succeeded", "Failed"):
            continue
        for container in pod.spec.containers:
            limits = (container.resources and container.resources.limits) or {}
            total += int(limits.get(GPU_RESOURCE, 0))
    return total
