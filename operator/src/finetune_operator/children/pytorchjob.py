"""FineTuneJob → Kubeflow PyTorchJob (kubeflow.org/v1), as a pure function: no cluster access, no clock.

Why the choices below:
- The recipe travels as JSON in the FINETUNE_RECIPE env var of the `pytorch` container. It is part of the
  PyTorchJob itself, so it is created, versioned and garbage-collected atomically with the job — no ConfigMap
  that can be missing, stale, or left behind.
- `restartPolicy: Never`: a failed trainer fails the PyTorchJob at once, with its exit code in the FineTuneJob's
  status; nothing burns GPU-hours retrying an OOM or bad data. Re-creating the job resumes from the newest
  complete checkpoint, which the operator does for failures that are not the run's own (reconcile/recovery.py).
  Not `ExitCode`: the training-operator v1.9 recreates pods on exit codes >= 128 (an OOM
  kill) without ever applying the backoff limit, so such a run loops forever; and not `OnFailure`, whose
  in-place restarts hide the failed pod's exit code behind a restart count (both found by the cluster tests).
- `cleanPodPolicy: Running`: when the job ends, pods still running are deleted (their GPUs freed); finished pods
  stay, with their logs.
- The child's name is a function of the FineTuneJob's name only (see `child_name`), leaving room for the longest
  `-worker-N` suffix the training-operator can append; pods/services must be DNS-1035 labels (≤ 63 chars,
  starting with a letter): long or dotted names are shortened with a hash.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from finetune_contract import names
from finetune_operator.api import MAX_NODES, FineTuneJob, PodSecurity, ResourcesSpec
from finetune_trainer.config import recipe_json

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-dev/finetune-trainer:0.1.0"

CONTAINER_NAME = names.TRAINER_CONTAINER
PYTORCHJOB_PORT = 23456
BACKOFF_LIMIT = 3
MAX_DNS_LABEL = 63
LONGEST_POD_SUFFIX = len(f"-worker-{MAX_NODES - 2}")
"""The training-operator names pods <job>-master-0 and <job>-worker-0 ... <job>-worker-(nodes-2)."""

TRAINER_COMMAND = ["python", "-m", f"{names.TRAINER_MODULE}.launch", "--module", names.TRAINER_MODULE]
"""torchrun through the trainer's launcher, which keeps the workers' exit code (torchrun alone exits 1)."""

Manifest = dict[str, Any]


def render_pytorchjob(ftj: Mapping[str, Any], *, trainer_image: str = DEFAULT_TRAINER_IMAGE) -> Manifest:
    """The PyTorchJob manifest for a FineTuneJob manifest (validated first; raises pydantic.ValidationError)."""
    return render(FineTuneJob.model_validate(ftj), trainer_image=trainer_image)


def render(job: FineTuneJob, *, trainer_image: str = DEFAULT_TRAINER_IMAGE, name: str | None = None) -> Manifest:
    """The PyTorchJob manifest for a validated FineTuneJob.

    `name`: the child's name as recorded in the job's status, when there is a record (a child made under an
    older naming rule keeps its name); `child_name` of the job's name otherwise.
    """
    resources = job.spec.resources
    name = name or child_name(job.metadata.name)
    replica_specs: Manifest = {"Master": replica_spec(job, 1, trainer_image)}
    if resources.nodes > 1:
        replica_specs["Worker"] = replica_spec(job, resources.nodes - 1, trainer_image)
    return {
        "apiVersion": names.PYTORCHJOB_API_VERSION,
        "kind": names.PYTORCHJOB_KIND,
        "metadata": {
            "name": name,
            "namespace": job.metadata.namespace,
            "labels": job_labels(job),
        },
        "spec": {
            "nprocPerNode": nproc_per_node(resources),
            "runPolicy": {
                "cleanPodPolicy": "Running",
                "backoffLimit": BACKOFF_LIMIT,
                "suspend": job.spec.suspend,
            },
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def child_name(name: str) -> str:
    """The PyTorchJob name for a FineTuneJob name: a function of the job's identity only, fixed for its life.

    Sized for the longest pod name the training-operator can derive from it (`-worker-N` at the largest node
    count the API allows), never for the current `nodes`: a name that moved with `nodes` made a second child when
    `nodes` changed.
    """
    return short_name(name, MAX_DNS_LABEL - LONGEST_POD_SUFFIX)


def short_name(name: str, budget: int) -> str:
    """`name` when it is a DNS-1035 label of at most `budget` characters; otherwise a prefix plus a hash of the
    full name, so two long names with a common prefix still get distinct children. Pods and services must be
    DNS-1035 labels (<= 63 characters, starting with a letter)."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if cleaned == name and len(name) <= budget and name[0].isalpha():
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    prefix = cleaned[: budget - len(digest) - 1].strip("-")
    if not prefix or not prefix[0].isalpha():
        prefix = ("ftj-" + prefix)[: budget - len(digest) - 1].rstrip("-")
    return f"{prefix}-{digest}"


def label_value(name: str) -> str:
    """A label-safe form of the FineTuneJob name (label values are limited to 63 characters)."""
    if len(name) <= MAX_DNS_LABEL:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_DNS_LABEL - len(digest) - 1].rstrip('.-')}-{digest}"


def selector_labels(job: FineTuneJob) -> dict[str, str]:
    """Labels that identify this job's objects; stable for the job's lifetime (safe in selectors)."""
    return {
        "app.kubernetes.io/name": "finetune-trainer",
        "app.kubernetes.io/instance": label_value(job.metadata.name),
        names.JOB_LABEL: label_value(job.metadata.name),
    }


def job_labels(job: FineTuneJob) -> dict[str, str]:
    """Labels of the PyTorchJob: selector labels, ownership, and the Kueue queue when one is named."""
    labels = {
        **selector_labels(job),
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/part-of": names.MANAGED_BY,
        names.MANAGED_BY_LABEL: names.MANAGED_BY,
    }
    if job.spec.queue_name:
        labels[names.QUEUE_LABEL] = job.spec.queue_name
    return labels


def nproc_per_node(resources: ResourcesSpec) -> str:
    """One process per GPU; on CPU a single process (torchrun's `auto` would start one per host core)."""
    return str(resources.gpus_per_node) if resources.gpus_per_node > 0 else "1"


def replica_spec(job: FineTuneJob, replicas: int, trainer_image: str) -> Manifest:
    """A Master or Worker replica spec; both run the same container."""
    return {
        "replicas": replicas,
        "restartPolicy": "Never",
        "template": {
            "metadata": {
                "labels": {key: value for key, value in job_labels(job).items() if key != names.QUEUE_LABEL},
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(job.spec.metrics.port),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod_spec(job, trainer_image),
        },
    }


def pod_spec(job: FineTuneJob, trainer_image: str) -> Manifest:
    """Pod spec: the trainer container, /dev/shm, PVCs and the scheduling fields the user asked for."""
    resources = job.spec.resources
    spec: Manifest = {
        "containers": [container(job, trainer_image)],
        "volumes": volumes(resources),
    }
    optional: dict[str, Any] = {
        "nodeSelector": dict(resources.node_selector) or None,
        "tolerations": [toleration.to_wire() for toleration in resources.tolerations] or None,
        "affinity": resources.affinity,
        "priorityClassName": resources.priority_class_name,
        "serviceAccountName": resources.service_account_name,
        "imagePullSecrets": [{"name": secret} for secret in resources.image_pull_secrets] or None,
        "securityContext": pod_security(resources.security),
    }
    spec.update({key: value for key, value in optional.items() if value is not None})
    return spec


def container(job: FineTuneJob, trainer_image: str) -> Manifest:
    """The `pytorch` container: trainer command, recipe and identity env, ports, resources, mounts."""
    resources = job.spec.resources
    return {
        "name": CONTAINER_NAME,
        "image": resources.image or trainer_image,
        "command": list(TRAINER_COMMAND),
        "env": container_env(job),
        "ports": [
            {"name": "pytorchjob-port", "containerPort": PYTORCHJOB_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": job.spec.metrics.port, "protocol": "TCP"},
        ],
        "resources": container_resources(resources),
        "volumeMounts": volume_mounts(resources),
        **({"securityContext": container_security()} if resources.security.profile == "restricted" else {}),
    }


RUNTIME_DEFAULT_SECCOMP = {"type": "RuntimeDefault"}


def pod_security(security: PodSecurity) -> Manifest | None:
    """The pod's securityContext: restricted's pod-level half (non-root, seccomp), and the ids when set."""
    if security.profile != "restricted":
        return None
    out: Manifest = {"runAsNonRoot": True, "seccompProfile": dict(RUNTIME_DEFAULT_SECCOMP)}
    ids = {"runAsUser": security.run_as_user, "runAsGroup": security.run_as_group, "fsGroup": security.fs_group}
    out.update({key: value for key, value in ids.items() if value is not None})
    return out


def container_security() -> Manifest:
    """restricted's container-level half (Pod Security Admission checks it per container)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": dict(RUNTIME_DEFAULT_SECCOMP),
    }


def container_env(job: FineTuneJob) -> list[dict[str, Any]]:
    """User env first, then the contract env (names starting with FINETUNE_ are reserved by validation)."""
    user = [var.to_container() for var in job.spec.resources.env]
    return [
        *user,
        {"name": names.ENV_JOB_NAME, "value": job.metadata.name},
        {"name": names.ENV_JOB_NAMESPACE, "value": job.metadata.namespace},
        {"name": names.ENV_METRICS_PORT, "value": str(job.spec.metrics.port)},
        {"name": names.ENV_RECIPE, "value": recipe_json(job.spec.recipe())},
    ]


def container_resources(resources: ResourcesSpec) -> Manifest:
    """GPUs as limits only (extended resources cannot overcommit); CPU and memory as equal request and limit."""
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if resources.gpus_per_node > 0:
        limits[resources.gpu_resource_name] = str(resources.gpus_per_node)
    for key, quantity in (("cpu", resources.cpu), ("memory", resources.memory)):
        if quantity is not None:
            limits[key] = requests[key] = str(quantity)
    out: Manifest = {"limits": limits}
    if requests:
        out["requests"] = requests
    return out


def volumes(resources: ResourcesSpec) -> list[Manifest]:
    """A memory-backed /dev/shm of the configured size, then the user's PVCs."""
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(resources.shared_memory_size)}}
    pvcs = [
        {"name": volume.name, "persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": volume.read_only}}
        for volume in resources.volumes
    ]
    return [shm, *pvcs]


def volume_mounts(resources: ResourcesSpec) -> list[Manifest]:
    """Mounts matching `volumes`."""
    mounts: list[Manifest] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    for volume in resources.volumes:
        mount: Manifest = {"name": volume.name, "mountPath": volume.mount_path, "readOnly": volume.read_only}
        if volume.sub_path:
            mount["subPath"] = volume.sub_path
        mounts.append(mount)
    return mounts
