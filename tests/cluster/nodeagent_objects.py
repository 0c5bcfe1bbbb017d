"""TEST INFRASTRUCTURE: what the node agent (nodeagent.py) writes to the API — its Node, its Lease, its pods'
status — as pure functions of plain values, so the agent's loop only decides *when* to write them."""

from __future__ import annotations

import datetime
import os
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
NODE_LABEL = "finetune.dev/test-node"
NODE_LABEL_VALUE = "agent"
TAINT = {"key": NODE_LABEL, "value": NODE_LABEL_VALUE, "effect": "NoSchedule"}
HOST_IP = "127.0.0.1"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_S = 40
ENV_ANNOTATION_PREFIX = "test.finetune.dev/env-"  # on a pod or its namespace: NAME=value in the pod's processes


def scheduling() -> dict[str, Any]:
    """What a pod (or a FineTuneJob's `resources`) needs to land on the agent's node: its label and toleration.
    Everything else stays off it (the taint), so other tests' pods never become local processes."""
    toleration = {"key": NODE_LABEL, "operator": "Equal", "value": NODE_LABEL_VALUE, "effect": "NoSchedule"}
    return {"nodeSelector": {NODE_LABEL: NODE_LABEL_VALUE}, "tolerations": [toleration]}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_manifest(name: str) -> dict[str, Any]:
    """The Node, without kwok's annotation (kwok must leave it alone), labelled and tainted for the tests."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        NODE_LABEL: NODE_LABEL_VALUE,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [TAINT]},
    }


def node_status(name: str, gpus: int) -> dict[str, Any]:
    """Ready, no pressure, fresh heartbeats; capacity: this machine's CPUs, `gpus` GPUs, a few pods."""
    capacity = {"cpu": str(os.cpu_count() or 1), "memory": "16Gi", "pods": "16", GPU_RESOURCE: str(gpus)}
    stamp = now()

    def condition(kind: str, status: str, reason: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": "node agent (tests)",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }

    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": name,
            "systemUUID": name,
            "bootID": name,
            "kernelVersion": os.uname().release,
            "osImage": "tests/cluster/nodeagent.py",
            "containerRuntimeVersion": "nodeagent://1",
            "kubeletVersion": "v1.36.3",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def lease_spec(node: str) -> dict[str, Any]:
    return {"holderIdentity": node, "leaseDurationSeconds": LEASE_S, "renewTime": micro_now()}


def _container_status(name: str, image: str, pid: int, state: dict[str, Any], ready: bool) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imageID": "",
        "containerID": f"nodeagent://{pid}",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": state,
    }


def running_status(ip: str, container: str, image: str, pid: int, started_at: str) -> dict[str, Any]:
    """Pod status once its process runs: Running, Ready, the pod's own IP on this host."""
    ready = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
    return {
        "phase": "Running",
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started_at,
        "conditions": [{"type": kind, "status": "True", "lastTransitionTime": started_at} for kind in ready],
        "containerStatuses": [
            _container_status(container, image, pid, {"running": {"startedAt": started_at}}, ready=True)
        ],
    }


def terminated_status(container: str, image: str, pid: int, started_at: str, exit_code: int) -> dict[str, Any]:
    """Pod status once its process has exited: Succeeded on 0, else Failed, with the exit code."""
    reason = "Completed" if exit_code == 0 else "Error"
    terminated = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": started_at,
        "finishedAt": now(),
        "containerID": f"nodeagent://{pid}",
    }
    not_ready = "PodCompleted" if exit_code == 0 else "PodFailed"
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [{"type": kind, "status": "False", "reason": not_ready} for kind in ("ContainersReady", "Ready")],
        "containerStatuses": [_container_status(container, image, pid, {"terminated": terminated}, ready=False)],
    }


def unstartable_status(message: str) -> dict[str, Any]:
    return {"phase": "Failed", "reason": "NodeAgentUnsupported", "message": message, "hostIP": HOST_IP}
