"""The FineTuneJob API (finetune.dev/v1alpha1), modelled once: the CRD, validation and rendering derive from it.

The recipe sections (model, data, training) are the trainer's own models, imported rather than repeated, so
the operator validates exactly what the trainer will parse.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from finetune_contract import names
from finetune_contract.schema import Rule, SpecModel
from finetune_operator.api import quantity
from finetune_trainer.config import Recipe, recipe_json

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = KIND.lower()
SHORT_NAMES = ("ftj",)
MAX_NODES = 1024
MAX_ENV_STRING = 131_072
"""Bytes of one `NAME=value` environment string Linux execs (MAX_ARG_STRLEN, 32 pages): the recipe's ceiling."""
MAX_ENV_TOTAL = 1_048_576
"""Bytes of the trainer's env we allow: half of ARG_MAX (2 MiB with the default 8 MiB stack), the rest left to the
image's own env, the training-operator's variables and torchrun's arguments."""
"""Most pods one FineTuneJob may have; the child's name is sized for the pod names this many nodes make."""

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Quantity = Annotated[
    int | str,
    PlainValidator(quantity.positive_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": quantity.MAX_LENGTH,
            "x-kubernetes-validations": [{"rule": quantity.POSITIVE_CEL, "message": quantity.POSITIVE_RULE}],
        }
    ),
]
"""cpu, memory, /dev/shm: an integer or a quantity string, greater than zero, as the API server parses it."""
Label = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL)]
ResourceName = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^([a-z0-9.\-]+/)?[A-Za-z0-9][-A-Za-z0-9_.]*$")
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class Toleration(SpecModel):
    """A pod toleration, as in the Kubernetes core API."""

    key: ShortText | None = None
    """Taint key; empty with operator Exists tolerates everything."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; unset tolerates all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """How long a NoExecute taint is tolerated."""


class SecretKeySelector(SpecModel):
    """A key of a Secret in the job's namespace."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    """The Secret's name."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """The key within the Secret."""
    optional: bool = False
    """Start the pod even when the Secret or key is missing (the variable is then unset)."""


class EnvSource(SpecModel):
    """Where a variable's value comes from instead of the spec."""

    secret_key_ref: SecretKeySelector
    """A Secret key: the value never appears in the FineTuneJob, the PyTorchJob, the recipe, status or events."""


class EnvVar(SpecModel):
    """An extra environment variable for the trainer container: a plain value, or a reference to a Secret (for
    credentials such as HF_TOKEN, which must never be written into a spec)."""

    rules = (
        Rule(
            cel="!has(self.valueFrom) || !has(self.value) || self.value == ''",
            holds=lambda e: e.value_from is None or e.value == "",
            message="set value or valueFrom, not both",
            field="valueFrom",
        ),
    )

    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    """Variable name."""
    value: Annotated[str, StringConstraints(max_length=65536)] = ""
    """Variable value (not for secrets: use valueFrom.secretKeyRef)."""
    value_from: EnvSource | None = None
    """The value from a Secret key, resolved by the kubelet in the pod."""

    def to_container(self) -> dict[str, Any]:
        """The container env entry: the reference, never a resolved secret."""
        if self.value_from is not None:
            return {"name": self.name, "valueFrom": self.value_from.to_wire()}
        return {"name": self.name, "value": self.value}


class PodSecurity(SpecModel):
    """The trainer pods' security context. `restricted` (the default) passes Pod Security Admission's restricted
    level: non-root, no privilege escalation, every capability dropped, the runtime's default seccomp profile."""

    profile: Literal["restricted", "unconfined"] = "restricted"
    """restricted, or unconfined: no security context at all (the image's and the namespace's defaults), for
    clusters whose images or drivers need more; say why in the job."""
    run_as_user: int | None = Field(default=None, ge=1, le=2**31 - 1)
    """The uid (default: the image's USER, which restricted requires to be numeric and not 0; the trainer image's
    is 10001)."""
    run_as_group: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """The primary gid (default: the image's)."""
    fs_group: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """The group that owns mounted volumes, so a non-root trainer can write its PVC."""


class VolumeSpec(SpecModel):
    """A PersistentVolumeClaim mounted into the trainer (models, data, checkpoints)."""

    name: Label
    """Volume name inside the pod."""
    claim_name: ShortText
    """Name of an existing PersistentVolumeClaim in the job's namespace."""
    mount_path: Annotated[str, StringConstraints(min_length=2, max_length=4096, pattern=r"^/")]
    """Absolute mount path in the container."""
    sub_path: Annotated[str, StringConstraints(max_length=4096)] | None = None
    """Path inside the volume to mount instead of its root."""
    read_only: bool = False
    """Mount read-only (e.g. shared model or data volumes)."""


class ResourcesSpec(SpecModel):
    """Where and on what the training runs."""

    rules = (
        Rule(
            cel=f"!has(self.env) || self.env.all(e, !e.name.startsWith('{names.RESERVED_ENV_PREFIX}'))",
            holds=lambda r: not any(var.name.startswith(names.RESERVED_ENV_PREFIX) for var in r.env),
            message=f"env names starting with {names.RESERVED_ENV_PREFIX} are reserved for the operator",
            field="env",
        ),
        Rule(
            cel="!has(self.volumes) || self.volumes.all(v, v.name != 'dshm' && v.mountPath != '/dev/shm')",
            holds=lambda r: all(v.name != "dshm" and v.mount_path != "/dev/shm" for v in r.volumes),
            message="volume name dshm and mount path /dev/shm are reserved for shared memory",
            field="volumes",
        ),
        Rule(
            cel="!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
            holds=lambda r: len({v.name for v in r.volumes}) == len(r.volumes),
            message="volume names must be unique",
            field="volumes",
        ),
    )

    nodes: int = Field(default=1, ge=1, le=MAX_NODES)
    """Number of pods (nodes): one Master and nodes-1 Workers."""
    gpus_per_node: int = Field(default=1, ge=0, le=64)
    """GPUs per pod, and training processes per pod; 0 trains on CPU."""
    gpu_resource_name: ResourceName = "nvidia.com/gpu"
    """Extended resource name of the GPUs (e.g. nvidia.com/gpu, or a MIG profile resource)."""
    cpu: Quantity | None = None
    """CPU request and limit per pod (Kubernetes quantity)."""
    memory: Quantity | None = None
    """Memory request and limit per pod (Kubernetes quantity)."""
    shared_memory_size: Quantity = "8Gi"
    """Size of the memory-backed /dev/shm (NCCL and data loaders need more than the 64Mi default)."""
    node_selector: dict[str, Annotated[str, StringConstraints(max_length=63)]] = {}
    """Node labels the pods must match, e.g. nvidia.com/gpu.product."""
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = []
    """Tolerations, e.g. for tainted GPU nodes."""
    affinity: dict[str, Any] | None = None
    """Pod affinity, as in the Kubernetes core API (passed through unchanged)."""
    priority_class_name: ShortText | None = None
    """PriorityClass of the pods."""
    image: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^\S+$")] | None = None
    """Trainer image; defaults to the operator's configured trainer image."""
    image_pull_secrets: Annotated[list[ShortText], Field(max_length=16)] = []
    """Names of Secrets used to pull the image."""
    env: Annotated[list[EnvVar], Field(max_length=256)] = []
    """Extra environment variables (e.g. HF_TOKEN is better mounted from a Secret via the image)."""
    volumes: Annotated[list[VolumeSpec], Field(max_length=32)] = []
    """PersistentVolumeClaims to mount."""
    service_account_name: ShortText | None = None
    """ServiceAccount of the trainer pods."""
    security: PodSecurity = PodSecurity()
    """The pods' security context (restricted by default)."""


class EarlyStoppingSpec(SpecModel):
    """Stop runs whose early training dynamics fail thresholds, and free their GPUs.

    The paper found lower early gradient norms and higher early loss predict better final models; maxGradNorm and
    minLoss apply that signal but depend on model and data, so they are off until set and should be validated per
    fleet. Stopping on NaN/Inf and on divergence is on by default.
    """

    rules = (
        Rule(
            cel="self.windowSteps <= self.checkAfterSteps",
            holds=lambda e: e.window_steps <= e.check_after_steps,
            message="windowSteps must not exceed checkAfterSteps: the window must fit before the first check",
            field="windowSteps",
        ),
    )

    enabled: bool = True
    """Evaluate the policy while the job runs."""
    check_after_steps: int = Field(default=50, ge=1, le=10_000_000)
    """Judge thresholds only after this many optimizer steps (NaN/Inf is judged at once)."""
    window_steps: int = Field(default=10, ge=1, le=100_000)
    """Thresholds apply to a robust statistic over the last this many optimizer steps."""
    max_grad_norm: float | None = Field(default=None, gt=0.0)
    """Stop when the windowed pre-clip gradient norm is above this; unset disables."""
    min_loss: float | None = Field(default=None, ge=0.0)
    """Stop when the windowed training loss is below this (collapse); unset disables."""
    stop_on_non_finite: bool = True
    """Stop at once when loss or gradient norm is NaN or infinite."""
    divergence_factor: float | None = Field(default=3.0, gt=1.0, le=1e6)
    """Stop when the windowed loss exceeds this factor times the initial loss; null disables."""
    evaluation_interval_seconds: int = Field(default=30, ge=5, le=86_400)
    """How often the operator evaluates the policy."""


class RecoverySpec(SpecModel):
    """Automatic resume after failures that are not the run's fault.

    A pod evicted, preempted (by the scheduler or Kueue), lost with its node, or a trainer killed by SIGKILL/SIGTERM
    (not its container's own memory limit): the operator deletes the failed PyTorchJob and creates it again, and
    the trainer resumes from the newest complete checkpoint. A bad recipe (exit 2), a non-finite loss (exit 3),
    any other exit code, an OOM kill of the container, or an early stop never restart.
    """

    rules = (
        Rule(
            cel="self.backoffSeconds <= self.maxBackoffSeconds",
            holds=lambda r: r.backoff_seconds <= r.max_backoff_seconds,
            message="backoffSeconds must not exceed maxBackoffSeconds",
            field="backoffSeconds",
        ),
    )

    max_restarts: int = Field(default=3, ge=0, le=100)
    """How many times the run is restarted after such failures; 0 disables automatic resume."""
    backoff_seconds: int = Field(default=30, ge=0, le=86_400)
    """Wait before the first restart; doubled for each further one."""
    max_backoff_seconds: int = Field(default=600, ge=0, le=86_400)
    """The longest wait between restarts."""


class MetricsSpec(SpecModel):
    """The trainer's Prometheus endpoint (served by rank 0)."""

    port: int = Field(default=8000, ge=1024, le=65535)
    """Container port of /metrics."""
    prometheus_url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://\S+$")] | None = None
    """Prometheus that scrapes this job, overriding the operator's --prometheus-url (e.g. a team's own)."""


def _covers(mount: str, path: str) -> bool:
    """A mount at `mount` holds `path` (a trailing slash on the mount is the same mount)."""
    mount = mount.rstrip("/") or "/"
    return path == mount or path.startswith(mount if mount == "/" else mount + "/")


def _shared_paths(spec: FineTuneJobSpec) -> list[str]:
    """What rank 0 writes and the other nodes read: checkpoints (and by default the tokenized-data cache under
    them), and an explicit data.cacheDir."""
    paths = [str(spec.training.checkpoint.output_dir)]
    if spec.data.cache_dir is not None:
        paths.append(str(spec.data.cache_dir))
    return paths


def _on_shared_storage(spec: FineTuneJobSpec) -> bool:
    if spec.resources.nodes <= 1:
        return True
    writable = [volume.mount_path for volume in spec.resources.volumes if not volume.read_only]
    return all(any(_covers(mount, path) for mount in writable) for path in _shared_paths(spec))


def _cel_covered(path: str) -> str:
    """CEL for `_covers` over the writable volumes (double-quoted strings: the CRD's YAML keeps them as written)."""
    return (
        f"self.resources.volumes.exists(v, !(has(v.readOnly) && v.readOnly) && ({path} == v.mountPath || "
        f'{path} + "/" == v.mountPath || {path}.startsWith(v.mountPath.endsWith("/") ? v.mountPath : '
        f'v.mountPath + "/")))'
    )


SHARED_STORAGE_MESSAGE = (
    "a multi-node job (resources.nodes > 1) needs training.checkpoint.outputDir, and data.cacheDir when set, on "
    "storage every node shares: rank 0 writes the tokenized data and the checkpoints that the other nodes read, "
    "so on node-local disks they would wait for files that never come. Mount a ReadWriteMany "
    "PersistentVolumeClaim (not readOnly) at or above them in resources.volumes"
)


class FineTuneJobSpec(Recipe):
    """A supervised fine-tuning run: the recipe (model, data, training) plus where and how it runs."""

    rules: ClassVar[tuple[Rule, ...]] = (
        *Recipe.rules,
        Rule(
            cel=(
                "self.resources.nodes <= 1 || (has(self.resources.volumes) && "
                + _cel_covered("self.training.checkpoint.outputDir")
                + " && (!has(self.data.cacheDir) || "
                + _cel_covered("self.data.cacheDir")
                + "))"
            ),
            holds=_on_shared_storage,
            message=SHARED_STORAGE_MESSAGE,
            field="resources.volumes",
        ),
    )

    resources: ResourcesSpec = ResourcesSpec()
    """Pods, GPUs and scheduling."""
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    """Early-dynamics termination."""
    metrics: MetricsSpec = MetricsSpec()
    """Trainer metrics endpoint."""
    suspend: bool = False
    """Suspend the run: pods are deleted (GPUs freed) and recreated on resume."""
    queue_name: Label | None = None
    """Kueue LocalQueue to submit to (sets the kueue.x-k8s.io/queue-name label)."""
    recovery: RecoverySpec = RecoverySpec()
    """Automatic resume from the newest checkpoint after evictions, preemptions, lost nodes and kills."""

    def recipe(self) -> Recipe:
        """The trainer's part of the spec, re-validated as a Recipe (it is one by inheritance)."""
        return Recipe.model_validate(self.model_dump(include=set(Recipe.model_fields)))

    @model_validator(mode="after")
    def _fits_the_environment(self) -> FineTuneJobSpec:
        """The recipe reaches the trainer as one environment variable, and the user's env with it: a spec whose
        pod could never exec (E2BIG) is refused here, before anything is created, instead of crash-looping.
        Python only: no CEL can measure the JSON the operator will render."""
        recipe = len(f"{names.ENV_RECIPE}=".encode()) + len(recipe_json(self.recipe()).encode()) + 1
        if recipe > MAX_ENV_STRING:
            message = (
                f"the recipe is {recipe:,} bytes as the trainer's {names.ENV_RECIPE} environment variable, more than "
                f"the {MAX_ENV_STRING:,} bytes Linux allows one variable (MAX_ARG_STRLEN): use fewer or shorter "
                "dataset paths and phases"
            )
            raise PydanticCustomError("cross_field", message, {"member": ""})
        user = sum(len(f"{var.name}={var.value}".encode()) + 1 for var in self.resources.env)
        if recipe + user > MAX_ENV_TOTAL:
            message = (
                f"the trainer's environment would be {recipe + user:,} bytes (recipe {recipe:,}, resources.env "
                f"{user:,}), more than the {MAX_ENV_TOTAL:,} bytes kept for it (Linux's ARG_MAX is 2 MiB with the "
                "default stack, shared with the image's env and torchrun's arguments): move large values to a "
                "volume or a Secret"
            )
            raise PydanticCustomError("cross_field", message, {"member": "resources.env"})
        return self


class JobPhase(StrEnum):
    Pending = "Pending"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"
    EarlyStopped = "EarlyStopped"
    Suspended = "Suspended"


class Condition(SpecModel):
    """A condition in the Kubernetes form."""

    type: ShortText
    """Condition type, e.g. Running, Succeeded, EarlyStopped, MetricsUnavailable."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    """CamelCase machine-readable reason."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """Human-readable details."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The spec generation this condition was computed from."""


class Evidence(SpecModel):
    """What an early-stopping verdict was based on."""

    metric: ShortText | None = None
    """The series judged: loss or gradNorm."""
    from_step: int | None = None
    """First optimizer step of the window."""
    to_step: int | None = None
    """Last optimizer step of the window."""
    statistic: ShortText | None = None
    """How the window was summarised, e.g. median."""
    value: str | None = None
    """The statistic's value (a string, so NaN and Inf survive JSON)."""
    threshold: str | None = None
    """The threshold it was compared with."""
    rule: ShortText | None = None
    """The rule that decided: maxGradNorm, minLoss, divergence or nonFinite."""


class Verdict(SpecModel):
    """The early-stopping policy's latest decision."""

    decision: Literal["continue", "stop", "unknown"]
    """continue, stop, or unknown (missing, stale or too few data: never a reason to stop)."""
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    """Why, in one CamelCase word."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """Why, in words."""
    evidence: Evidence | None = None
    """Window, statistics and threshold behind the decision."""
    evaluated_at: str | None = None
    """When the policy was evaluated (RFC 3339)."""


class RestartRecord(SpecModel):
    """One automatic restart: when, why, and which PyTorchJob (by uid) it replaced."""

    time: ShortText
    """When the failed PyTorchJob was deleted for the restart (RFC 3339)."""
    reason: ShortText
    """The failure's class: PodEvicted, PodPreempted, NodeLost, PodDisrupted, Killed."""
    message: Annotated[str, StringConstraints(max_length=1024)] = ""
    """What failed, from the pods' statuses."""
    replaced_uid: ShortText
    """uid of the PyTorchJob the restart replaced (a restart is counted once per failed child)."""


class FineTuneJobStatus(SpecModel):
    """Observed state, written by the operator."""

    phase: JobPhase | None = None
    """Pending, Running, Succeeded, Failed, EarlyStopped or Suspended."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = []
    """Latest observations, Kubernetes style."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The spec generation the status reflects."""
    pytorch_job_name: ShortText | None = None
    """Name of the child PyTorchJob (the pytorchjob backend)."""
    train_job_name: ShortText | None = None
    """Name of the child TrainJob (the trainjob backend: Kubeflow Trainer v2)."""
    step: int | None = Field(default=None, ge=0)
    """Latest optimizer step."""
    total_steps: int | None = Field(default=None, ge=0)
    """Optimizer steps of the whole run."""
    progress: Annotated[str, StringConstraints(max_length=64)] | None = None
    """step/totalSteps, for kubectl."""
    loss: float | None = None
    """Latest training loss."""
    grad_norm: float | None = None
    """Latest pre-clip global gradient norm."""
    learning_rate: float | None = None
    """Latest learning rate."""
    tokens_per_second: float | None = None
    """Latest training throughput in loss-counted tokens per second."""
    early_stopping: Verdict | None = None
    """The early-stopping verdict with its evidence."""
    restarts: int | None = Field(default=None, ge=0)
    """Automatic restarts so far (spec.recovery)."""
    restart_history: Annotated[list[RestartRecord], Field(max_length=16)] = []
    """Why each automatic restart happened (the newest 16)."""
    start_time: str | None = None
    """When the training started running (RFC 3339)."""
    completion_time: str | None = None
    """When the run ended (RFC 3339)."""


class ObjectMeta(BaseModel):
    """The metadata the operator relies on; other fields pass through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    namespace: Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL)] = "default"
    uid: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    generation: int | None = None


class FineTuneJob(BaseModel):
    """A whole FineTuneJob manifest."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["finetune.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
