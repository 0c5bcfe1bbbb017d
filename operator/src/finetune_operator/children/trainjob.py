"""FineTuneJob → Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1, v2.3 API), and the
ClusterTrainingRuntime it runs on. Pure functions: no cluster access, no clock.

Why a second child kind: the PyTorchJob controller (training-operator v1) is in maintenance upstream; new GPU
clusters install Kubeflow Trainer v2, whose TrainJob names a runtime (pods made by JobSet, one indexed Job per
replicated job) and overrides it per job. Everything that is the same for both kinds — the recipe hand-over in
FINETUNE_RECIPE, labels, the GPU resource name, /dev/shm, volumes, scheduling fields, identity env, the metrics
port annotation, the restricted security context — comes from children/pytorchjob.py, so the two cannot drift.

How the pieces map:
- The runtime (`runtime_manifest`): torch ML policy; one replicated job `node` whose Job has `backoffLimit: 0`
  and pods `restartPolicy: Never`, and a JobSet `failurePolicy` of no restarts — a failed trainer fails the
  TrainJob at once with its exit code, and the operator decides whether to restart (reconcile/recovery.py), as
  with a PyTorchJob. The container `node` runs the trainer's launcher; Trainer's torch plugin injects PET_NNODES,
  PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT there, which torchrun reads.
- The TrainJob: `trainer` carries image, command, env, numNodes, numProcPerNode and resourcesPerNode;
  `runtimePatches` (v2.3; `podTemplateOverrides` was removed) carries the pod's labels, annotations, volumes,
  mounts, scheduling fields and security contexts; `suspend` is the job's; the Kueue queue label is on the
  TrainJob, where Kueue's TrainJob integration reads it.
- What TrainJob v2.3 cannot express is refused by name (`UnsupportedFieldError`), never dropped: a pod priority class
  (no such field in its pod patch; Kueue's `kueue.x-k8s.io/priority-class` label is the way there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune_contract import names
from finetune_operator.api import MAX_NODES, FineTuneJob
from finetune_operator.children import pytorchjob as shared

RUNTIME_NAME = "finetune-torch"
PATCH_MANAGER = "finetune.dev/finetune-operator"
ANCESTOR_LABEL = f"{names.TRAINJOB_GROUP}/trainjob-ancestor-step"
LONGEST_POD_SUFFIX = len(f"-{names.TRAINJOB_CONTAINER}-0-{MAX_NODES - 1}-abcde")
"""JobSet names pods <jobset>-node-0-<completion index>-<5 random>; its webhook refuses a JobSet whose longest
pod name would pass 63 characters."""

Manifest = dict[str, Any]


class UnsupportedFieldError(ValueError):
    """A FineTuneJob field the TrainJob backend cannot carry; the message names the field, the value, the rule."""

    def __init__(self, path: str, value: object, rule: str) -> None:
        super().__init__(f"{path}: {value!r} {rule}")
        self.path, self.value, self.rule = path, value, rule


def render_trainjob(
    ftj: Mapping[str, Any], *, trainer_image: str = shared.DEFAULT_TRAINER_IMAGE, runtime: str = RUNTIME_NAME
) -> Manifest:
    """The TrainJob manifest for a FineTuneJob manifest (validated first; raises pydantic.ValidationError)."""
    return render(FineTuneJob.model_validate(ftj), trainer_image=trainer_image, runtime=runtime)


def trainjob_name(name: str) -> str:
    """The TrainJob name for a FineTuneJob name: fixed for the job's life, sized for its longest pod name."""
    return shared.short_name(name, shared.MAX_DNS_LABEL - LONGEST_POD_SUFFIX)


def render(
    job: FineTuneJob,
    *,
    trainer_image: str = shared.DEFAULT_TRAINER_IMAGE,
    runtime: str = RUNTIME_NAME,
    name: str | None = None,
) -> Manifest:
    """The TrainJob for a validated FineTuneJob (`name`: the child's recorded name, if any).

    Raises UnsupportedFieldError for what a TrainJob cannot carry."""
    refuse_unsupported(job)
    resources = job.spec.resources
    return {
        "apiVersion": names.TRAINJOB_API_VERSION,
        "kind": names.TRAINJOB_KIND,
        "metadata": {
            "name": name or trainjob_name(job.metadata.name),
            "namespace": job.metadata.namespace,
            "labels": shared.job_labels(job),
        },
        "spec": {
            "runtimeRef": {"name": runtime, "apiGroup": names.TRAINJOB_GROUP, "kind": names.RUNTIME_KIND},
            "suspend": job.spec.suspend,
            "trainer": {
                "image": resources.image or trainer_image,
                "command": list(shared.TRAINER_COMMAND),
                "env": shared.container_env(job),
                "numNodes": resources.nodes,
                "numProcPerNode": int(shared.nproc_per_node(resources)),
                "resourcesPerNode": shared.container_resources(resources),
            },
            "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": runtime_patch(job)}],
        },
    }


def refuse_unsupported(job: FineTuneJob) -> None:
    priority = job.spec.resources.priority_class_name
    if priority:
        raise UnsupportedFieldError(
            "spec.resources.priorityClassName",
            priority,
            "cannot be set on a TrainJob (the Trainer v2.3 pod patch has no priority class); use Kueue's workload "
            "priority (label kueue.x-k8s.io/priority-class via queueName) or the pytorchjob backend",
        )


def runtime_patch(job: FineTuneJob) -> Manifest:
    """The pod-level half of the job, as a patch of the runtime's `node` replicated job."""
    pod_template = shared.replica_spec(job, 1, shared.DEFAULT_TRAINER_IMAGE)["template"]
    pod = pod_template["spec"]
    container: Manifest = {"name": names.TRAINJOB_CONTAINER, "volumeMounts": shared.volume_mounts(job.spec.resources)}
    if job.spec.resources.security.profile == "restricted":
        container["securityContext"] = shared.container_security()
    spec: Manifest = {"volumes": pod["volumes"], "containers": [container]}
    for key in ("nodeSelector", "tolerations", "affinity", "serviceAccountName", "imagePullSecrets", "securityContext"):
        if key in pod:
            spec[key] = pod[key]
    job_template = {"spec": {"template": {"metadata": pod_template["metadata"], "spec": spec}}}
    return {"template": {"spec": {"replicatedJobs": [{"name": names.TRAINJOB_CONTAINER, "template": job_template}]}}}


def runtime_manifest(name: str = RUNTIME_NAME, trainer_image: str = shared.DEFAULT_TRAINER_IMAGE) -> Manifest:
    """The ClusterTrainingRuntime every FineTuneJob's TrainJob names (shipped by the chart and `finetune runtime`)."""
    container = {"name": names.TRAINJOB_CONTAINER, "image": trainer_image, "command": list(shared.TRAINER_COMMAND)}
    job_template = {
        "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }
    return {
        "apiVersion": names.TRAINJOB_API_VERSION,
        "kind": names.RUNTIME_KIND,
        "metadata": {
            "name": name,
            "labels": {
                f"{names.TRAINJOB_GROUP}/framework": "torch",
                "app.kubernetes.io/part-of": names.MANAGED_BY,
                names.MANAGED_BY_LABEL: names.MANAGED_BY,
            },
        },
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {
                "spec": {
                    "failurePolicy": {"maxRestarts": 0},
                    "replicatedJobs": [{"name": names.TRAINJOB_CONTAINER, "replicas": 1, "template": job_template}],
                }
            },
        },
    }
