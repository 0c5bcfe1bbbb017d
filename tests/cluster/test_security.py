"""Trainer pods against Pod Security Admission on the real API server, and a credential that must never leak.

PSA is enforced by the API server when the training-operator creates the pods (a namespace labelled
`pod-security.kubernetes.io/enforce=restricted`); a refused pod becomes a FailedCreatePod Event, which the operator
turns into the PodsNotCreated condition. The pods here are kwok's (no kubelet), which is all admission needs.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client

from finetune_operator.children.pytorchjob import child_name
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.pytorchjobs import get_pytorchjob
from tests.cluster.test_operator import small_job
from tests.cluster.test_operator_invariants import wait_condition
from tests.cluster.trainer_jobs import conditions_of, create_ftj, get_ftj

pytestmark = pytest.mark.cluster

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def restrict(api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})


def pods_of(api: client.ApiClient, namespace: str, name: str) -> list[client.V1Pod]:
    selector = f"training.kubeflow.org/job-name={child_name(name)}"
    return list(client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items)


def test_default_trainer_pods_pass_restricted_pod_security(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    restrict(api, namespace)
    create_ftj(api, namespace, small_job("hardened"))
    pods = operator_process.wait_for(lambda: pods_of(api, namespace, "hardened"), 60, "the Master pod admitted")
    context = pods[0].spec.containers[0].security_context
    assert context.allow_privilege_escalation is False
    assert context.capabilities.drop == ["ALL"]
    assert pods[0].spec.security_context.run_as_non_root is True
    assert conditions_of(get_ftj(api, namespace, "hardened")).get("PodsNotCreated", {}).get("status") != "True"


def test_an_unconfined_job_is_refused_by_restricted_pod_security_and_says_so(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    """The override exists for clusters that need it; in a restricted namespace the API server refuses the pods,
    and the job says why instead of waiting forever."""
    restrict(api, namespace)
    job = small_job("loose")
    job["spec"]["resources"]["security"] = {"profile": "unconfined"}
    create_ftj(api, namespace, job)
    found = wait_condition(operator_process, api, namespace, "loose", "PodsNotCreated", 60, status="True")
    assert "violates PodSecurity" in found["message"], found
    assert "allowPrivilegeEscalation" in found["message"], found
    assert pods_of(api, namespace, "loose") == []


def test_workers_of_a_multi_node_job_need_the_training_operators_init_container_hardened(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    """A finding, pinned: the training-operator v1.9 adds its own `init-pytorch` container (no securityContext) to
    every Worker, so in a restricted namespace the Master is admitted and the Workers are not until the cluster's
    training-operator is given a hardened init-container template (--pytorch-init-container-template-file; README).
    The job says so in PodsNotCreated, naming the container."""
    restrict(api, namespace)
    create_ftj(api, namespace, small_job("two-nodes", nodes=2))
    found = wait_condition(operator_process, api, namespace, "two-nodes", "PodsNotCreated", 60, status="True")
    assert "init-pytorch" in found["message"], found
    kinds = {
        pod.metadata.labels.get("training.kubeflow.org/replica-type") for pod in pods_of(api, namespace, "two-nodes")
    }
    assert kinds == {"master"}


def test_a_secret_reference_never_leaks_its_value(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    """A planted token, referenced by secretKeyRef: it reaches the pod only as a reference, and appears in none of
    the FineTuneJob, its status, the PyTorchJob, the pods' specs, the namespace's Events, the operator's logs or its
    metrics."""
    token = f"hf_planted{uuid.uuid4().hex}"
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": "hf-credentials"}, "stringData": {"token": token}}
    )
    job = small_job("credentialed")
    reference = {"secretKeyRef": {"name": "hf-credentials", "key": "token"}}
    job["spec"]["resources"]["env"] = [{"name": "HF_TOKEN", "valueFrom": reference}]
    create_ftj(api, namespace, job)
    pods = operator_process.wait_for(lambda: pods_of(api, namespace, "credentialed"), 60, "the Master pod")
    env = {var.name: var for var in pods[0].spec.containers[0].env}
    assert env["HF_TOKEN"].value is None
    assert env["HF_TOKEN"].value_from.secret_key_ref.name == "hf-credentials"
    operator_process.wait_for(
        lambda: (get_ftj(api, namespace, "credentialed").get("status") or {}).get("pytorchJobName"), 30, "status"
    )
    sanitize = api.sanitize_for_serialization
    places: dict[str, Any] = {
        "FineTuneJob": get_ftj(api, namespace, "credentialed"),
        "PyTorchJob": get_pytorchjob(api, namespace, child_name("credentialed")),
        "pods": [sanitize(pod) for pod in pods],
        "events": [sanitize(event) for event in client.CoreV1Api(api).list_namespaced_event(namespace).items],
        "operator stdout": operator_process.stdout_log.read_text(errors="replace"),
        "operator stderr": operator_process.stderr_log.read_text(errors="replace"),
        "operator metrics": operator_process.metrics(),
    }
    for where, content in places.items():
        text = content if isinstance(content, str) else json.dumps(content, default=str)
        assert token not in text, f"the planted token leaked into {where}"
    assert "hf-credentials" in json.dumps(places["PyTorchJob"])  # the reference is there, so the check could fail


def test_a_spec_whose_pod_could_never_exec_fails_before_anything_is_created(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    """The API server stores it (a few hundred KB is far below its limits), but its recipe could not be one
    environment variable: the operator fails it with the limit named, and no PyTorchJob is ever created."""
    job = small_job("too-big")
    job["spec"]["data"]["datasets"] = [{"path": f"/data/{index:04d}-" + "x" * 3990} for index in range(64)]
    create_ftj(api, namespace, job)
    found = wait_condition(operator_process, api, namespace, "too-big", "InvalidSpec", 60, status="True")
    assert "MAX_ARG_STRLEN" in found["message"], found
    assert (get_ftj(api, namespace, "too-big").get("status") or {}).get("phase") == "Failed"
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs")
    assert listed["items"] == []
