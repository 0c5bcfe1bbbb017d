"""Which runs are stuck on a node that stopped answering, and what their FineTuneJob should say. Pure.

Why this exists: when a node stops answering (kernel panic, network partition, power loss) nothing on it can
report. Kubernetes marks the node NotReady after its grace period (~50 s), evicts its pods once their toleration
of `node.kubernetes.io/unreachable` runs out (300 s unless the job sets less), and then the pods stay Terminating:
only the node's kubelet may confirm that the containers are gone. The training-operator keeps counting such a pod
as active, so the run neither fails nor resumes — it hangs, holding its other GPUs, without a word. The operator
cannot safely end that wait itself (a partitioned node may still run the trainer, writing checkpoints beside the
replacement), so it says what is happening and what ends it: the node coming back, the Node being deleted (a cloud
node controller or the autoscaler does that for a VM that is gone), or an administrator tainting it
`node.kubernetes.io/out-of-service` — then the pod garbage collector removes the pod and the run resumes from its
newest checkpoint (automatic resume, spec.recovery).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from finetune_contract import names

OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
CHILD_POD_LABELS = (names.TRAINING_OPERATOR_JOB_LABEL, names.JOBSET_NAME_LABEL)
"""The label naming a pod's child: a PyTorchJob's (training-operator) or a TrainJob's (its JobSet has its name)."""
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io"
"""Nodes are read as the server's table (name, status text: a few hundred bytes a node) — full Node objects carry
their image lists and are ~20 KB each, too much to list every interval on a cluster of thousands of nodes."""


@dataclass(frozen=True)
class StuckPod:
    """A pod of a run, on a node that is not Ready."""

    pod: str
    node: str
    terminating: bool

    def message(self, node_detail: str) -> str:
        where = f"pod {self.pod} is on node {self.node}, which is not Ready"
        if node_detail:
            where += f" ({node_detail})"
        if self.terminating:
            state = "; the pod was evicted and stays Terminating until the node confirms its containers are gone"
        else:
            state = (
                "; the pod is evicted once its toleration of node.kubernetes.io/unreachable runs out (300 s unless "
                "resources.tolerations sets less)"
            )
        return (
            f"{where}{state}. The run resumes from its newest checkpoint when the node comes back, when the Node is "
            f"deleted, or when it is tainted {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute (kubectl taint nodes "
            f"{self.node} {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute)"
        )


def unready_nodes(table: Mapping[str, Any]) -> set[str]:
    """Names of the nodes whose status column does not say Ready, from a `meta.k8s.io/v1` Table of Nodes.

    The status text is kubectl's: "Ready", "NotReady" (Ready False or Unknown), "Unknown" (no Ready condition),
    each optionally followed by ",SchedulingDisabled"."""
    columns = [str(column.get("name", "")).lower() for column in table.get("columnDefinitions") or []]
    if "name" not in columns or "status" not in columns:
        return set()
    name_at, status_at = columns.index("name"), columns.index("status")
    out: set[str] = set()
    for row in table.get("rows") or []:
        cells = row.get("cells") or []
        if len(cells) <= max(name_at, status_at):
            continue
        if "Ready" not in str(cells[status_at]).split(","):
            out.add(str(cells[name_at]))
    return out


def stuck_runs(pods: Iterable[Mapping[str, Any]], unready: set[str]) -> dict[tuple[str, str], StuckPod]:
    """(namespace, child name) → the first of its pods (by name) on a node that is not Ready."""
    out: dict[tuple[str, str], StuckPod] = {}
    for pod in sorted(pods, key=lambda pod: str((pod.get("metadata") or {}).get("name"))):
        metadata = pod.get("metadata") or {}
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        labels = metadata.get("labels") or {}
        child = next((labels[label] for label in CHILD_POD_LABELS if labels.get(label)), None)
        if not child or node not in unready or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        key = (str(metadata.get("namespace")), str(child))
        out.setdefault(key, StuckPod(str(metadata.get("name")), node, bool(metadata.get("deletionTimestamp"))))
    return out


def node_detail(node: Mapping[str, Any] | None) -> str:
    """What the node's Ready condition says, e.g. 'NodeStatusUnknown since 2026-…: Kubelet stopped posting …'."""
    if not node:
        return ""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            reason = condition.get("reason") or f"Ready={condition.get('status')}"
            since = condition.get("lastTransitionTime")
            text = f"{reason} since {since}" if since else str(reason)
            message = condition.get("message")
            return f"{text}: {message}" if message else text
    return ""
