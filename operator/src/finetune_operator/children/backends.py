"""The two child kinds a FineTuneJob can run as, behind one interface. Pure: manifests in, facts out.

Why one interface: everything the operator does with its child — render, create-or-adopt by name, mirror the
phase, suspend, find the pods (failure reasons, the rank-0 pod to scrape, a lost node), delete it for an early
stop or a restart — differs between a Kubeflow PyTorchJob and a Kubeflow Trainer v2 TrainJob only in these facts.
A job's backend is fixed when its first child is made and recorded in its status (`pytorchJobName` or
`trainJobName`), so an operator restarted with another `--backend` keeps running old jobs on their own kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from finetune_contract import names
from finetune_operator.api import FineTuneJob, JobPhase
from finetune_operator.children import pytorchjob, trainjob

Manifest = dict[str, Any]
BackendName = Literal["pytorchjob", "trainjob"]
BACKEND_NAMES: tuple[BackendName, ...] = ("pytorchjob", "trainjob")
JOBSET_RANK_LABEL = "batch.kubernetes.io/job-completion-index"
JOBSET_JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"


@dataclass(frozen=True)
class Backend:
    """What differs between the child kinds."""

    name: BackendName
    group: str
    version: str
    plural: str
    kind: str
    container: str
    """The trainer's container in the child's pods."""
    pod_label: str
    """The label every pod of the child carries, valued with the child's name."""
    status_field: str
    """Where the FineTuneJob's status records the child's name."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def render(self, job: FineTuneJob, *, trainer_image: str, name: str | None = None) -> Manifest:
        if self.name == "trainjob":
            return trainjob.render(job, trainer_image=trainer_image, name=name)
        return pytorchjob.render(job, trainer_image=trainer_image, name=name)

    def child_name(self, job_name: str) -> str:
        return trainjob.trainjob_name(job_name) if self.name == "trainjob" else pytorchjob.child_name(job_name)

    def suspended(self, child: Mapping[str, Any]) -> bool:
        spec = child.get("spec") or {}
        if self.name == "trainjob":
            return bool(spec.get("suspend", False))
        return bool((spec.get("runPolicy") or {}).get("suspend", False))

    def suspend_patch(self, suspend: bool) -> Manifest:
        if self.name == "trainjob":
            return {"spec": {"suspend": suspend}}
        return {"spec": {"runPolicy": {"suspend": suspend}}}

    def conditions(self, child: Mapping[str, Any]) -> list[Manifest]:
        """The child's conditions in the PyTorchJob's vocabulary (Created, Running, Succeeded, Suspended, Failed),
        which is what the FineTuneJob mirrors. A TrainJob says Complete for Succeeded and has no Running
        condition: it runs while a Job of its JobSet has every pod ready (jobsStatus.ready)."""
        raw = [dict(condition) for condition in (child.get("status") or {}).get("conditions") or []]
        if self.name != "trainjob":
            return raw
        out = []
        for condition in raw:
            if condition.get("type") == "Complete":
                condition["type"] = "Succeeded"
            out.append(condition)
        terminal = any(c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True" for c in out)
        suspended = any(c.get("type") == "Suspended" and c.get("status") == "True" for c in out)
        if not terminal and not suspended and _jobs_ready(child):
            out.append({"type": "Running", "status": "True", "reason": "JobSetReady", "message": "pods ready"})
        return out

    def is_rank0(self, pod: Mapping[str, Any]) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if self.name == "trainjob":
            return labels.get(JOBSET_JOB_INDEX_LABEL) == "0" and labels.get(JOBSET_RANK_LABEL) == "0"
        return str(labels.get(names.TRAINING_OPERATOR_REPLICA_LABEL, "")).lower() == "master"


PYTORCHJOB = Backend(
    "pytorchjob",
    names.PYTORCHJOB_GROUP,
    names.PYTORCHJOB_VERSION,
    names.PYTORCHJOB_PLURAL,
    names.PYTORCHJOB_KIND,
    names.TRAINER_CONTAINER,
    names.TRAINING_OPERATOR_JOB_LABEL,
    "pytorchJobName",
)
TRAINJOB = Backend(
    "trainjob",
    names.TRAINJOB_GROUP,
    names.TRAINJOB_VERSION,
    names.TRAINJOB_PLURAL,
    names.TRAINJOB_KIND,
    names.TRAINJOB_CONTAINER,
    names.JOBSET_NAME_LABEL,
    "trainJobName",
)
BACKENDS = {backend.name: backend for backend in (PYTORCHJOB, TRAINJOB)}
CHILD_CRDS = tuple(f"{backend.plural}.{backend.group}" for backend in BACKENDS.values())
"""The CRD names `--backend auto` looks for."""
CHILD_NAME_FIELDS = tuple(backend.status_field for backend in BACKENDS.values())


def recorded_child(status: Mapping[str, Any]) -> tuple[Backend, str] | None:
    """The child a FineTuneJob's status names, with its kind; None before the first child."""
    for backend in BACKENDS.values():
        name = status.get(backend.status_field)
        if name:
            return backend, str(name)
    return None


def backend_of(status: Mapping[str, Any], default: Backend) -> Backend:
    """The job's backend: the one its child was made with, else the operator's."""
    found = recorded_child(status)
    return found[0] if found else default


def child_name_of(status: Mapping[str, Any]) -> str | None:
    found = recorded_child(status)
    return found[1] if found else None


def backend_of_child(child: Mapping[str, Any]) -> Backend:
    """A child's backend, from its apiVersion."""
    api_version = str(child.get("apiVersion", ""))
    return TRAINJOB if api_version.startswith(f"{names.TRAINJOB_GROUP}/") else PYTORCHJOB


def choose(requested: str, installed: Iterable[str]) -> Backend:
    """`--backend auto` picks the kind whose CRD is installed, TrainJob when both are; an explicit choice wins.

    `installed`: the names of the CRDs present (e.g. "trainjobs.trainer.kubeflow.org")."""
    if requested in BACKENDS:
        return BACKENDS[requested]
    present = set(installed)
    if f"{TRAINJOB.plural}.{TRAINJOB.group}" in present:
        return TRAINJOB
    return PYTORCHJOB


def phase_from_conditions(conditions: Iterable[Mapping[str, Any]]) -> JobPhase:
    """The phase conditions in the PyTorchJob's vocabulary imply: terminal first, then suspended, running."""
    active = {str(c.get("type")) for c in conditions if c.get("status") == "True"}
    for condition_type, phase in (
        ("Succeeded", JobPhase.Succeeded),
        ("Failed", JobPhase.Failed),
        ("Suspended", JobPhase.Suspended),
        ("Running", JobPhase.Running),
        ("Restarting", JobPhase.Running),
    ):
        if condition_type in active:
            return phase
    return JobPhase.Pending


def _jobs_ready(child: Mapping[str, Any]) -> bool:
    jobs = (child.get("status") or {}).get("jobsStatus") or []
    return any(int(job.get("ready") or 0) > 0 for job in jobs)
