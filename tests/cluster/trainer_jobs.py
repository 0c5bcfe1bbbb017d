"""FineTuneJobs that really train (on the node agent's node), and what tests read back from them.

The recipe is the trainer tests' tiny one: a 2-layer Llama built from a config, the byte-level tokenizer, the
small fastchat conversations from the shared data, 8 samples per optimizer step — about 30 ms a step on one
core, after ~8 s of start-up (torchrun, imports, tokenizing).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.cluster import nodeagent
from tests.manifests import REPO_ROOT

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SMALL_CHATS = SHARED_DATA / "fastchat" / "dummy_conversation.chat.jsonl"
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


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
        "resources": {"nodes": 1, "gpusPerNode": gpus, **nodeagent.scheduling()},
        "metrics": {"port": metrics_port},
    }
    if early_stopping is not None:
        spec["earlyStopping"] = early_stopping
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def create_ftj(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def get_ftj(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return found


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cond["type"]: cond for cond in (obj.get("status") or {}).get("conditions") or []}


def annotate_namespace(api: client.ApiClient, namespace: str, annotations: dict[str, str]) -> None:
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"annotations": annotations}})


# -- sockets of a pod's processes, from /proc ------------------------------------------------------------------------
def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def _decode(address: str) -> tuple[str, int]:
    host, port = address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by `pids` (IPv4 and IPv6)."""
    inodes = _socket_inodes(pids)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.add(_decode(fields[1]))
    return found
