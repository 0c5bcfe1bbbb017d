"""An in-memory stand-in for finetune_operator.kube.Kube, the operator's one narrow seam to the API server.

For fast unit tests of the reconcile functions; the cluster tests hold the same behaviour against the real API
server. It keeps what the real server guarantees and the reconcile relies on: 409 on a create of an existing
name, resourceVersion-guarded status writes (409 when stale), 404 as None. Refusals the real server gives for
reasons outside this seam (an admission policy) are injected with `refuse_creates`.

FineTuneSweeps are kept apart from FineTuneJobs (`sweeps`); the sweep loop creates and patches FineTuneJobs (its
trials) and writes the sweep's status. Events on either kind land in `events`, keyed by the object's name.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_operator.children.backends import PYTORCHJOB, Backend

Manifest = dict[str, Any]


def api_error(status: int, message: str) -> ApiException:
    error = ApiException(status=status, reason="Refused")
    error.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    return error


class FakeKube:
    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], Manifest] = {}
        self.children: dict[tuple[str, str], Manifest] = {}
        self.events: list[tuple[str, str, str, str]] = []  # (job name, type, reason, message)
        self.child_events: list[Manifest] = []
        self.calls: list[str] = []
        self.refuse_creates: ApiException | None = None
        self.refuse_events: ApiException | None = None
        self.pods: dict[tuple[str, str], list[Manifest]] = {}  # (namespace, child) -> its pods
        self.sweeps: dict[tuple[str, str], Manifest] = {}
        self.nodes: dict[str, Manifest] = {}  # name -> Node (its Ready condition is what the table shows)
        self.refuse_nodes: ApiException | None = None
        self.kueue_installed = False
        self.now = lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # creationTimestamp of new children
        self.workloads: dict[tuple[str, str], Manifest] = {}  # (namespace, child uid) -> Kueue Workload
        self._versions = itertools.count(1)

    # -- FineTuneJobs ------------------------------------------------------------------------------------------

    def add_job(self, manifest: Manifest, namespace: str = "ns") -> Manifest:
        job = self._stored(manifest, namespace)
        self.jobs[(namespace, job["metadata"]["name"])] = job
        return copy.deepcopy(job)

    def _stored(self, manifest: Manifest, namespace: str) -> Manifest:
        """A copy of `manifest` as the API server stores a new object: namespace, uid, generation 1, a version."""
        stored = copy.deepcopy(manifest)
        stored["metadata"] = {
            **stored["metadata"],
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "resourceVersion": str(next(self._versions)),
        }
        return stored

    def edit_spec(self, namespace: str, name: str, spec: Manifest) -> Manifest:
        """A user's merge patch of the spec: a new generation and resourceVersion."""
        job = self.jobs[(namespace, name)]
        _merge(job["spec"], spec)
        job["metadata"]["generation"] += 1
        job["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(job)

    def create_job(self, namespace: str, manifest: Manifest) -> Manifest:
        """A POST of a FineTuneJob: 409 when the name is taken; the server sets uid, resourceVersion, generation."""
        self.calls.append("create_job")
        key = (namespace, manifest["metadata"]["name"])
        if key in self.jobs:
            raise api_error(409, f'finetunejobs.finetune.dev "{key[1]}" already exists')
        job = self._stored(manifest, namespace)
        self.jobs[key] = job
        return copy.deepcopy(job)

    def patch_job(self, namespace: str, name: str, patch: Manifest) -> None:
        """A merge patch of the FineTuneJob (its spec): a new generation when the spec changed, 404 when gone."""
        self.calls.append("patch_job")
        job = self.jobs.get((namespace, name))
        if job is None:
            raise api_error(404, f'finetunejobs.finetune.dev "{name}" not found')
        before = copy.deepcopy(job.get("spec"))
        _merge(job, patch)
        if job.get("spec") != before:
            job["metadata"]["generation"] += 1
        job["metadata"]["resourceVersion"] = str(next(self._versions))

    def find_job(self, namespace: str, name: str) -> Manifest | None:
        """The job as the operator's index holds it (a copy; not an API call, so not in `calls`)."""
        job = self.jobs.get((namespace, name))
        return copy.deepcopy(job) if job else None

    def get_job(self, namespace: str, name: str) -> Manifest | None:
        self.calls.append("get_job")
        job = self.jobs.get((namespace, name))
        return copy.deepcopy(job) if job else None

    def patch_job_status(self, namespace: str, name: str, status: Manifest, resource_version: str | None) -> None:
        self.calls.append("patch_job_status")
        job = self.jobs[(namespace, name)]
        if resource_version and resource_version != job["metadata"]["resourceVersion"]:
            raise api_error(409, "the object has been modified")
        job.setdefault("status", {}).update(copy.deepcopy(status))
        job["metadata"]["resourceVersion"] = str(next(self._versions))

    def list_jobs(self, namespaces: tuple[str, ...]) -> list[Manifest]:
        return [copy.deepcopy(job) for (ns, _), job in self.jobs.items() if not namespaces or ns in namespaces]

    def create_event(self, job: Manifest, kind: str, reason: str, message: str) -> None:
        if self.refuse_events is not None:
            raise self.refuse_events
        self.events.append((job["metadata"]["name"], kind, reason, message))

    # -- FineTuneSweeps ----------------------------------------------------------------------------------------

    def add_sweep(self, manifest: Manifest, namespace: str = "ns") -> Manifest:
        sweep = self._stored(manifest, namespace)
        self.sweeps[(namespace, sweep["metadata"]["name"])] = sweep
        return copy.deepcopy(sweep)

    def get_sweep(self, namespace: str, name: str) -> Manifest | None:
        """The sweep as the watch would deliver it now (a copy)."""
        sweep = self.sweeps.get((namespace, name))
        return copy.deepcopy(sweep) if sweep else None

    def edit_sweep_spec(self, namespace: str, name: str, spec: Manifest) -> Manifest:
        """A user's merge patch of the sweep's spec: a new generation and resourceVersion."""
        sweep = self.sweeps[(namespace, name)]
        _merge(sweep["spec"], spec)
        sweep["metadata"]["generation"] += 1
        sweep["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(sweep)

    def patch_sweep_status(self, namespace: str, name: str, status: Manifest) -> None:
        """A merge patch of the status subresource ({"status": status}): objects merge, lists are replaced, null
        deletes; 404 when the sweep is gone."""
        self.calls.append("patch_sweep_status")
        sweep = self.sweeps.get((namespace, name))
        if sweep is None:
            raise api_error(404, f'finetunesweeps.finetune.dev "{name}" not found')
        if not isinstance(sweep.get("status"), dict):
            sweep["status"] = {}
        _merge(sweep["status"], status)
        sweep["metadata"]["resourceVersion"] = str(next(self._versions))

    # -- children ----------------------------------------------------------------------------------------------

    def _child(self, namespace: str, name: str, backend: Backend) -> Manifest | None:
        """The stored child of that name, if it is of `backend`'s kind (as the API server keeps kinds apart)."""
        child = self.children.get((namespace, name))
        if child is None or str(child.get("apiVersion", PYTORCHJOB.api_version)) != backend.api_version:
            return None
        return child

    def get_child(self, namespace: str, name: str, backend: Backend = PYTORCHJOB) -> Manifest | None:
        self.calls.append("get_child")
        child = self._child(namespace, name, backend)
        return copy.deepcopy(child) if child else None

    def create_child(self, namespace: str, manifest: Manifest) -> Manifest:
        self.calls.append("create_child")
        if self.refuse_creates is not None:
            raise self.refuse_creates
        key = (namespace, manifest["metadata"]["name"])
        if key in self.children:
            raise api_error(409, "already exists")
        child = copy.deepcopy(manifest)
        child["metadata"] = {
            **child["metadata"],
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "creationTimestamp": self.now(),
        }
        self.children[key] = child
        return copy.deepcopy(child)

    def patch_child(self, namespace: str, name: str, patch: Manifest, backend: Backend = PYTORCHJOB) -> None:
        self.calls.append("patch_child")
        child = self._child(namespace, name, backend)
        if child is None:
            raise api_error(404, f"{backend.plural} {name} not found")
        _merge(child, patch)

    def delete_child(
        self,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        foreground: bool = False,
        backend: Backend = PYTORCHJOB,
    ) -> bool:
        self.calls.append("delete_child")
        child = self._child(namespace, name, backend)
        if child is None or (uid is not None and child["metadata"].get("uid") != uid):
            return False
        return self.children.pop((namespace, name), None) is not None

    def child_pods(self, namespace: str, child_name: str, backend: Backend = PYTORCHJOB) -> list[Manifest]:
        self.calls.append("child_pods")
        return [
            copy.deepcopy(pod)
            for pod in self.pods.get((namespace, child_name), [])
            if ((pod.get("metadata") or {}).get("labels") or {}).get(backend.pod_label, child_name) == child_name
        ]

    def list_child_events(self, namespaces: tuple[str, ...], reason: str, kind: str = "PyTorchJob") -> list[Manifest]:
        self.calls.append("list_child_events")
        return [
            event
            for event in self.child_events
            if event.get("reason") == reason and (event.get("involvedObject") or {}).get("kind", kind) == kind
        ]

    # -- Nodes: the table the API server prints, and the pods bound to a node --------------------------------------

    def node_table(self) -> Manifest:
        self.calls.append("node_table")
        if self.refuse_nodes is not None:
            raise self.refuse_nodes
        rows = [
            {"cells": [name, _node_status_text(node), "<none>", "1m", "v1.34"]} for name, node in self.nodes.items()
        ]
        columns = [{"name": column} for column in ("Name", "Status", "Roles", "Age", "Version")]
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "columnDefinitions": columns, "rows": rows}

    def get_node(self, name: str) -> Manifest | None:
        self.calls.append("get_node")
        return copy.deepcopy(self.nodes.get(name))

    def pods_on_node(self, namespaces: tuple[str, ...], node: str) -> list[Manifest]:
        self.calls.append(f"pods_on_node {node}")
        return [
            copy.deepcopy(pod)
            for (namespace, _), pods in self.pods.items()
            for pod in pods
            if (pod.get("spec") or {}).get("nodeName") == node and (not namespaces or namespace in namespaces)
        ]

    # -- Kueue ----------------------------------------------------------------------------------------------------

    def child_workload(self, namespace: str, child_uid: str) -> tuple[bool, Manifest | None]:
        self.calls.append("child_workload")
        found = self.workloads.get((namespace, child_uid))
        return self.kueue_installed, copy.deepcopy(found) if found else None

    def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        self.calls.append(f"set_workload_active {name} {active}")
        for (ns, _), workload in self.workloads.items():
            if ns == namespace and workload["metadata"]["name"] == name:
                workload.setdefault("spec", {})["active"] = active
                return
        raise api_error(404, f"workloads {name} not found")

    def job_manifest(self, namespace: str, name: str) -> Manifest:
        """The job as the watch would deliver it now."""
        return copy.deepcopy(self.jobs[(namespace, name)])


def _node_status_text(node: Manifest) -> str:
    """kubectl's status column: Ready / NotReady (False or Unknown) / Unknown (no Ready condition)."""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return "Ready" if condition.get("status") == "True" else "NotReady"
    return "Unknown"


def _merge(target: Manifest, patch: Manifest) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
