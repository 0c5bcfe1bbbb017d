"""Kueue for real (v0.17.0, built from Go modules, its PyTorchJob and TrainJob integrations doing the admitting),
with both backends: a ClusterQueue holding 8 GPUs and a LocalQueue; FineTuneJobs with `queueName`.

What is proven, per backend: a job waits while Kueue holds its child suspended (phase Pending, condition Queued
naming the LocalQueue); two jobs that together exceed the quota run one after the other, never more GPUs in use
than the quota; a user's spec.suspend on an admitted job goes to the Workload (Kueue evicts, pods go, phase
Suspended) and back. The operator never writes the child's suspend while Kueue manages it (it would fight Kueue:
see reconcile/child.py apply_mutable).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client

from finetune_contract import names
from finetune_operator.children.backends import BACKENDS, Backend
from tests.cluster.controlplane import GPU_RESOURCE, Cluster
from tests.cluster.operator_process import ConfiguredOperator as Operator
from tests.cluster.operator_process import apply_crd, stop_cleanly
from tests.cluster.pytorchjobs import end_pod, gpus_in_use
from tests.cluster.test_operator import patch_spec, small_job
from tests.cluster.trainer_jobs import conditions_of, create_ftj, get_ftj
from tests.cluster.trainer_v2 import TrainerV2, start_kueue
from tests.cluster.waiting import stays, wait_for

pytestmark = pytest.mark.cluster

QUOTA_GPUS = 8
FLAVOR, CLUSTER_QUEUE, LOCAL_QUEUE = "finetune-default", "finetune-gpus", "team-gpus"
TIMEOUT_S = 90


@pytest.fixture(scope="module")
def kueue(cluster: Cluster, trainer_v2: TrainerV2, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Kueue (after Trainer v2, whose TrainJob CRD its integration needs), a flavor and an 8-GPU ClusterQueue."""
    started = start_kueue(cluster, tmp_path_factory.mktemp("kueue"))
    quota = [
        {"name": "cpu", "nominalQuota": "100"},
        {"name": "memory", "nominalQuota": "1000Gi"},
        {"name": GPU_RESOURCE, "nominalQuota": str(QUOTA_GPUS)},
    ]
    objects = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}},
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": CLUSTER_QUEUE},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": [item["name"] for item in quota],
                        "flavors": [{"name": FLAVOR, "resources": quota}],
                    }
                ],
            },
        },
    ]
    manifest = yaml.safe_dump_all(objects)
    try:
        cluster.kubectl("apply", "-f", "-", stdin=manifest)
        yield
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", stdin=manifest, check=False)
        started.stop()


@dataclass
class QueueOperator:
    operator: Operator
    backend: Backend


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def queue_operator(
    request: pytest.FixtureRequest, cluster: Cluster, kueue: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QueueOperator]:
    backend = BACKENDS[request.param]
    apply_crd(cluster)
    log_dir = tmp_path_factory.mktemp(f"operator-{backend.name}")
    operator = Operator(cluster, log_dir, ["--backend", backend.name]).start()
    try:
        yield QueueOperator(operator, backend)
    finally:
        stop_cleanly(operator)


def local_queue(api: client.ApiClient, namespace: str) -> None:
    """This test's LocalQueue, once the ClusterQueue holds nothing of earlier tests (their namespaces are deleted
    in the background, and a Workload keeps its quota until its job's pods are gone)."""
    custom = client.CustomObjectsApi(api)

    def idle() -> bool:
        found = custom.get_cluster_custom_object("kueue.x-k8s.io", "v1beta2", "clusterqueues", CLUSTER_QUEUE)
        held = found.get("status") or {}
        return not held.get("reservingWorkloads") and not held.get("admittedWorkloads")

    wait_for(idle, 120, "the ClusterQueue free of earlier tests' workloads")
    body = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "LocalQueue",
        "metadata": {"name": LOCAL_QUEUE, "namespace": namespace},
        "spec": {"clusterQueue": CLUSTER_QUEUE},
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "kueue.x-k8s.io", "v1beta2", namespace, "localqueues", body
    )


def child_of(api: client.ApiClient, namespace: str, backend: Backend, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        backend.group, backend.version, namespace, backend.plural, backend.child_name(name)
    )
    return found


def live_pods(api: client.ApiClient, namespace: str, backend: Backend, name: str) -> list[client.V1Pod]:
    selector = f"{backend.pod_label}={backend.child_name(name)}"
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return [pod for pod in pods if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp]


def phase_of(api: client.ApiClient, namespace: str, name: str) -> str | None:
    return (get_ftj(api, namespace, name).get("status") or {}).get("phase")


def queued(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    ftj = get_ftj(api, namespace, name)
    condition = conditions_of(ftj).get("Queued") or {}
    pending = (ftj.get("status") or {}).get("phase") == "Pending"
    return condition if pending and condition.get("status") == "True" else None


def test_two_jobs_over_the_quota_run_one_after_the_other(
    api: client.ApiClient, namespace: str, queue_operator: QueueOperator
) -> None:
    operator, backend = queue_operator.operator, queue_operator.backend
    local_queue(api, namespace)
    for name in ("first", "second"):
        create_ftj(api, namespace, small_job(name, nodes=1, gpus=QUOTA_GPUS, queueName=LOCAL_QUEUE))

    def one_running() -> tuple[str, str] | None:
        phases = {name: phase_of(api, namespace, name) for name in ("first", "second")}
        runners = [name for name, phase in phases.items() if phase == "Running"]
        if len(runners) != 1 or not live_pods(api, namespace, backend, runners[0]):
            return None
        waiter = "second" if runners[0] == "first" else "first"
        return (runners[0], waiter) if queued(api, namespace, waiter) else None

    runner, waiter = operator.wait_for(one_running, TIMEOUT_S, "one job admitted and running, the other queued")
    waiting = queued(api, namespace, waiter)
    assert waiting is not None
    assert waiting["reason"] == "WaitingForAdmission"
    assert f"LocalQueue {LOCAL_QUEUE}" in waiting["message"]
    assert backend.suspended(child_of(api, namespace, backend, waiter)), "Kueue holds the waiting child suspended"
    assert not get_ftj(api, namespace, waiter)["spec"].get("suspend"), "the user never asked for a suspend"
    stays(
        lambda: gpus_in_use(api) <= QUOTA_GPUS and bool(queued(api, namespace, waiter)),
        5,
        "the quota holds: the second job waits",
    )

    for pod in live_pods(api, namespace, backend, runner):
        end_pod(api, namespace, pod.metadata.name, 0)
    operator.wait_for(lambda: phase_of(api, namespace, runner) == "Succeeded", TIMEOUT_S, f"{runner} Succeeded")
    operator.wait_for(
        lambda: phase_of(api, namespace, waiter) == "Running" and live_pods(api, namespace, backend, waiter),
        TIMEOUT_S,
        f"{waiter} admitted once the quota is free",
    )
    admitted = conditions_of(get_ftj(api, namespace, waiter))["Queued"]
    assert (admitted["status"], admitted["reason"]) == ("False", "Admitted")
    assert gpus_in_use(api) <= QUOTA_GPUS


def test_a_users_suspend_of_an_admitted_job_goes_through_kueue(
    api: client.ApiClient, namespace: str, queue_operator: QueueOperator
) -> None:
    operator, backend = queue_operator.operator, queue_operator.backend
    local_queue(api, namespace)
    name = "paused"
    create_ftj(api, namespace, small_job(name, nodes=1, gpus=1, queueName=LOCAL_QUEUE))
    operator.wait_for(lambda: live_pods(api, namespace, backend, name), TIMEOUT_S, "admitted and running")
    patch_spec(api, namespace, name, {"suspend": True})
    operator.wait_for(lambda: not live_pods(api, namespace, backend, name), TIMEOUT_S, "pods gone after the suspend")
    operator.wait_for(lambda: phase_of(api, namespace, name) == "Suspended", TIMEOUT_S, "phase Suspended")
    stays(lambda: not live_pods(api, namespace, backend, name), 5, "Kueue keeps it suspended (no fight)")
    patch_spec(api, namespace, name, {"suspend": False})
    operator.wait_for(lambda: live_pods(api, namespace, backend, name), TIMEOUT_S, "admitted again after the resume")
    operator.wait_for(lambda: phase_of(api, namespace, name) == "Running", TIMEOUT_S, "Running again")
    labels = child_of(api, namespace, backend, name)["metadata"]["labels"]
    assert labels[names.QUEUE_LABEL] == LOCAL_QUEUE
