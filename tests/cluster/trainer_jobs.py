"""FineTuneJobs that really train (on the node agent's node), and what tests read back from them.

The recipe is the trainer tests' tiny one: a 2-layer Llama built from a config, the byte-level tokenizer, the
small fastchat conversations from the shared data, 8 samples per optimizer step — about 30 ms a step on one
core, after ~8 s of start-up (torchrun, imports, tokenizing).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.nodeagent_objects import scheduling
from tests.cluster.pytorchjobs import create_custom, create_pytorchjob, get_custom, handwritten_pytorchjob
from tests.cluster.waiting import wait_for
from tests.manifests import SHARED_DATA, TINY_LLAMA

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
SMALL_CHATS = SHARED_DATA / "fastchat" / "dummy_conversation.chat.jsonl"


def trainer_job(
    name: str,
    output_dir: Path,
    metrics_port: int,
    *,
    gpus: int = 1,
    training: dict[str, Any] | None = None,
    early_stopping: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A FineTuneJob for the agent node: tiny model, real data, `training` merged over the defaults below."""
    settings: dict[str, Any] = {
        "effectiveBatchSize": 8,
        "maxTokensPerGpu": 1024,
        "learningRate": 1e-3,
        "epochs": 1000,  # runs are bounded by maxSteps (the data is 63 steps per epoch)
        "maxSteps": 200,
        "checkpoint": {"outputDir": str(output_dir)},
        **(training or {}),
    }
    spec: dict[str, Any] = {
        "model": {"config": TINY_LLAMA, "tokenizer": "builtin:byte-level", "dtype": "float32"},
        "data": {"datasets": [{"path": str(SMALL_CHATS)}], "maxSeqLen": 512},
        "training": settings,
        "resources": {"nodes": 1, "gpusPerNode": gpus, **scheduling()},
        "metrics": {"port": metrics_port},
    }
    if early_stopping is not None:
        spec["earlyStopping"] = early_stopping
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def create_ftj(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    return create_custom(api, (GROUP, VERSION, PLURAL), namespace, manifest)


def get_ftj(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return get_custom(api, (GROUP, VERSION, PLURAL), namespace, name)


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cond["type"]: cond for cond in (obj.get("status") or {}).get("conditions") or []}


def annotate_namespace(api: client.ApiClient, namespace: str, annotations: dict[str, str]) -> None:
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"annotations": annotations}})


def garbage_collection_works(api: client.ApiClient, namespace: str, timeout: float = 10) -> bool:
    """Does the controller-manager's garbage collector act on PyTorchJob owners yet? A suspended PyTorchJob (no
    pods) owns a ConfigMap; the job is deleted in the background; True when the ConfigMap follows in `timeout`."""
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    probe = handwritten_pytorchjob(f"gc-probe-{uuid.uuid4().hex[:6]}", workers=0, gpus=1)
    probe["spec"]["runPolicy"] = {"suspend": True}
    job = create_pytorchjob(api, namespace, probe)
    owner = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": job["metadata"]["name"]}
    owner["uid"] = job["metadata"]["uid"]
    name = job["metadata"]["name"]
    core.create_namespaced_config_map(namespace, {"metadata": {"name": name, "ownerReferences": [owner]}})
    background = client.V1DeleteOptions(propagation_policy="Background")
    custom.delete_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", name, body=background)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        time.sleep(0.5)
    return False


def zero_pod_quota(api: client.ApiClient, namespace: str) -> None:
    """A ResourceQuota of 0 pods in `namespace`, once the controller-manager accounts it (no pod can be made)."""
    core = client.CoreV1Api(api)
    core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})

    def accounted() -> bool:
        return (core.read_namespaced_resource_quota("no-pods", namespace).status.hard or {}).get("pods") == "0"

    wait_for(accounted, 30, "the quota accounted by the controller-manager")
