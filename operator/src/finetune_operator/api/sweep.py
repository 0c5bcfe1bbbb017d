"""The FineTuneSweep API (finetune.dev/v1alpha1): many recipes tried as FineTuneJobs, the losers pruned early.

A sweep is a FineTuneJob spec (`template`, the same model, not a copy) plus a search space: a cartesian grid of
values at recipe paths and/or an explicit list of trials, each point repeated with `seeds` seeds. Everything
that decides which trials exist — expansion, names, per-trial validation, calibration picks — is pure and lives
here, so `finetune render`, `finetune local` and the operator derive the same trials from the same sweep.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
import re
import types
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema

from finetune_contract.schema import Rule, SpecModel
from finetune_operator.api.models import API_VERSION, DNS_SUBDOMAIN, Condition, FineTuneJobSpec, ObjectMeta, ShortText

SWEEP_KIND = "FineTuneSweep"
SWEEP_PLURAL = "finetunesweeps"
SWEEP_SINGULAR = SWEEP_KIND.lower()
SWEEP_SHORT_NAMES = ("fts",)
MAX_TRIALS = 1000
"""Most trials one sweep may define: each is an object in etcd and a row in the status."""
TRIAL_NAME_BUDGET = 51
"""Trial names this short keep their name as the PyTorchJob's name too (children.pytorchjob.child_name)."""
OUTPUT_DIR_PATH = "training.checkpoint.outputDir"
"""Set per trial (template dir/trial name) unless the sweep sets it: trials must not overwrite each other."""
PATH_PATTERN = r"^[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*$"

JsonValue = Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]
"""Any JSON value (number, string, bool, object, list): what a recipe field accepts is checked per trial."""
SpecPath = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=PATH_PATTERN)]


class SweepParameter(SpecModel):
    """One axis of the grid: a FineTuneJob spec field and the values it takes."""

    path: SpecPath
    """Field of the FineTuneJob spec, dotted, wire names: training.learningRate, training.effectiveBatchSize."""
    values: Annotated[list[JsonValue], Field(min_length=1, max_length=MAX_TRIALS)]
    """The values to try, in order."""


class ExplicitTrial(SpecModel):
    """One hand-picked point: spec fields set together (paths as in parameters)."""

    parameters: Annotated[dict[SpecPath, JsonValue], Field(min_length=1, max_length=64)]
    """Path to value, e.g. {training.learningRate: 1e-5, training.effectiveBatchSize: 3840}."""


ScoreMetric = Literal["trainLoss", "evalLoss", "gradNorm", "paper", "promql"]
Direction = Literal["minimize", "maximize"]
DEFAULT_SCORE: ScoreMetric = "trainLoss"
"""Chosen by benchmarks/sweep_savings.py (README, "Sweeps"): the only score that kept the best recipe in every seed
(3/3), at 48.6% of the full sweep's trainer-seconds; the paper's score was the cheapest (31%) but lost the best
recipe in every seed. It stays available (metric: paper)."""


class ScoreSpec(SpecModel):
    """What a trial is judged on at a rung."""

    rules = (
        Rule(
            cel="self.metric == 'promql' ? has(self.promql) : !has(self.promql)",
            holds=lambda s: (s.metric == "promql") == (s.promql is not None),
            message="promql is required when metric is promql, and only then",
            field="promql",
        ),
    )

    metric: ScoreMetric = DEFAULT_SCORE
    """trainLoss, evalLoss, gradNorm (each the median over the rung's window), paper (the study's early signal:
    low gradient norm and high loss, their ranks among the rung's trials combined with the weights below), or
    promql (the expression's value for the trial at the rung)."""
    direction: Direction | None = None
    """Which scores are better; default minimize (paper: a combined rank, lower is better)."""
    grad_norm_weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    """paper: weight of the gradient-norm rank (lower norm ranks better)."""
    loss_weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    """paper: weight of the loss rank (higher loss ranks better, as the study found)."""
    promql: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    """promql: an instant query; $job and $namespace are replaced by the trial's FineTuneJob name and namespace."""

    def better(self) -> Direction:
        return self.direction or "minimize"


class PruningSpec(SpecModel):
    """Asynchronous successive halving on an early score: rungs at firstRungStep * reductionFactor^k."""

    algorithm: Literal["asha", "median", "none"] = "asha"
    """asha keeps the top 1/reductionFactor at each rung, median the better half, none never prunes."""
    first_rung_step: int = Field(default=10, ge=1, le=10_000_000)
    """Optimizer step of the first rung."""
    reduction_factor: int = Field(default=3, ge=2, le=100)
    """η: rungs at r, rη, rη², ...; asha keeps the top 1/η of the trials that reached a rung."""
    window_steps: int = Field(default=5, ge=1, le=100_000)
    """The score at a rung is the median over this many optimizer steps ending at the rung."""
    min_trials_per_rung: int = Field(default=3, ge=1, le=MAX_TRIALS)
    """Nobody is pruned at a rung until this many trials have a score there."""
    score: ScoreSpec = ScoreSpec()
    """The early score."""
    calibration_trials: int | None = Field(default=None, ge=0, le=MAX_TRIALS)
    """Trials picked at random (seeded by the sweep's name) and never pruned, so the sweep can measure whether its
    score predicts the objective. Default: one in ten, at least one, when the sweep has 6 trials or more."""

    def keep_fraction_factor(self) -> int:
        """η as judged: median keeps half."""
        return 2 if self.algorithm == "median" else self.reduction_factor


class ObjectiveSpec(SpecModel):
    """What "best" means when trials finish."""

    metric: Literal["evalLoss", "trainLoss"] | None = None
    """Final eval loss (default when the template holds out eval data) or final train loss (median of the last
    window of steps)."""
    direction: Direction = "minimize"
    """Lower is better for a loss."""


class FineTuneSweepSpec(SpecModel):
    """A search over FineTuneJob recipes with early pruning."""

    rules = (
        Rule(
            cel="(has(self.parameters) && size(self.parameters) > 0) || (has(self.trials) && size(self.trials) > 0)",
            holds=lambda s: bool(s.parameters or s.trials),
            message="the search space is empty: set parameters (a grid) and/or trials",
            field="parameters",
        ),
        Rule(
            cel="!has(self.parameters) || self.parameters.all(p, self.parameters.exists_one(q, q.path == p.path))",
            holds=lambda s: len({p.path for p in s.parameters}) == len(s.parameters),
            message="each parameter path may appear once",
            field="parameters",
        ),
        Rule(
            cel="!has(self.pruning) || !has(self.pruning.score) || self.pruning.score.metric != 'evalLoss' || "
            "(has(self.template.data.evalFraction) && self.template.data.evalFraction > 0.0)",
            holds=lambda s: s.pruning.score.metric != "evalLoss" or s.template.data.eval_fraction > 0,
            message="an evalLoss score needs held-out data: set template.data.evalFraction above 0",
            field="pruning",
        ),
        Rule(
            cel="!has(self.objective) || !has(self.objective.metric) || self.objective.metric != 'evalLoss' || "
            "(has(self.template.data.evalFraction) && self.template.data.evalFraction > 0.0)",
            holds=lambda s: s.objective.metric != "evalLoss" or s.template.data.eval_fraction > 0,
            message="an evalLoss objective needs held-out data: set template.data.evalFraction above 0",
            field="objective",
        ),
        Rule(
            cel="self.maxParallelTrials <= self.maxTrials",
            holds=lambda s: s.max_parallel_trials <= s.max_trials,
            message="maxParallelTrials must not exceed maxTrials",
            field="maxParallelTrials",
        ),
    )

    template: FineTuneJobSpec
    """The FineTuneJob spec every trial starts from."""
    parameters: Annotated[list[SweepParameter], Field(max_length=16)] = []
    """Grid axes: every combination of their values is a trial (the first axis varies slowest)."""
    trials: Annotated[list[ExplicitTrial], Field(max_length=MAX_TRIALS)] = []
    """Explicit points, tried after the grid."""
    seeds: int = Field(default=1, ge=1, le=100)
    """Each point runs this many times, with training.seed, seed+1, ..."""
    max_trials: int = Field(default=64, ge=1, le=MAX_TRIALS)
    """Upper bound on the number of trials: a larger space is an error, not a silent cut."""
    max_parallel_trials: int = Field(default=4, ge=1, le=MAX_TRIALS)
    """Trials running at once; new ones start as slots free."""
    gpu_hours_budget: float | None = Field(default=None, gt=0.0, le=1e7)
    """Start no new trial once the sweep's trials have used this many GPU-hours."""
    pruning: PruningSpec = PruningSpec()
    """When to prune, on what score."""
    objective: ObjectiveSpec = ObjectiveSpec()
    """How finished trials are ranked."""
    suspend: bool = False
    """Suspend every trial (their pods are deleted, GPUs freed) and start no new one."""

    def objective_metric(self) -> Literal["evalLoss", "trainLoss"]:
        if self.objective.metric is not None:
            return self.objective.metric
        return "evalLoss" if self.template.data.eval_fraction > 0 else "trainLoss"


class SweepPhase(StrEnum):
    Pending = "Pending"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"
    Suspended = "Suspended"


class TrialPhase(StrEnum):
    Pending = "Pending"
    Running = "Running"
    Pruned = "Pruned"
    Succeeded = "Succeeded"
    Failed = "Failed"
    EarlyStopped = "EarlyStopped"
    Suspended = "Suspended"


FINISHED_TRIAL_PHASES = frozenset({TrialPhase.Pruned, TrialPhase.Succeeded, TrialPhase.Failed, TrialPhase.EarlyStopped})


class RungScore(SpecModel):
    """A trial's score at one rung."""

    step: int = Field(ge=1)
    """The rung's optimizer step."""
    score: str | None = None
    """The score (a string, so NaN and Inf survive JSON); absent when it could not be read."""


class TrialStatus(SpecModel):
    """One row of the trial table."""

    index: int = Field(ge=0)
    """Position in the expansion order (grid, then explicit trials, each seed in turn)."""
    name: ShortText
    """The trial's FineTuneJob."""
    parameters: dict[str, JsonValue] = {}
    """The values this trial sets (path to value), seed included."""
    calibration: bool = False
    """Never pruned: kept to measure whether the score predicts the objective."""
    phase: TrialPhase = TrialPhase.Pending
    """Pending, Running, Pruned, Succeeded, Failed, EarlyStopped or Suspended."""
    rung: int | None = None
    """Highest rung (optimizer step) reached with a score."""
    scores: Annotated[list[RungScore], Field(max_length=64)] = []
    """Score at each rung reached."""
    objective: float | None = None
    """Final objective (finished trials)."""
    gpu_seconds: float | None = Field(default=None, ge=0.0)
    """GPU-seconds the trial has used."""
    gpu_seconds_saved: float | None = Field(default=None, ge=0.0)
    """A pruned trial: the GPU-seconds it would still have used (its rate times its remaining steps)."""
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    """Why it is in its phase (e.g. PrunedBySweep)."""
    message: Annotated[str, StringConstraints(max_length=4096)] = ""
    """The evidence: score, the rung's cut-off, the peers compared."""
    checkpoint: Annotated[str, StringConstraints(max_length=4096)] | None = None
    """Where its model or last checkpoint is."""


class Correlation(SpecModel):
    """Does the early score predict the final objective on this sweep's own runs?"""

    # Written by the operator only, so its Python names may construct it too (`n`, wire name `trials`: a bare
    # `n` key is the boolean false to YAML 1.1 readers such as kubectl's).
    model_config = ConfigDict(**{**SpecModel.model_config, "validate_by_name": True})

    rho: float | None = None
    """Spearman rho between the first-rung score and the objective over finished trials (sign-adjusted: positive
    means a better score went with a better objective)."""
    n: int = Field(default=0, ge=0, alias="trials")
    """Finished trials the rho is computed over (those with a first-rung score and an objective)."""
    rung: int | None = None
    """The rung whose scores were used."""


class FineTuneSweepStatus(SpecModel):
    """Observed state, written by the operator."""

    phase: SweepPhase | None = None
    """Pending, Running, Succeeded, Failed or Suspended."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = []
    """Latest observations, Kubernetes style (e.g. ScoreNotPredictive)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The spec generation the status reflects."""
    trials_total: int = Field(default=0, ge=0)
    """Trials the space defines."""
    running: int = Field(default=0, ge=0)
    """Trials running now."""
    pruned: int = Field(default=0, ge=0)
    """Trials pruned."""
    succeeded: int = Field(default=0, ge=0)
    """Trials that finished training."""
    trials: Annotated[list[TrialStatus], Field(max_length=MAX_TRIALS)] = []
    """The trial table."""
    best_trial: ShortText | None = None
    """The finished trial with the best objective."""
    best_objective: float | None = None
    """Its objective."""
    best_checkpoint: Annotated[str, StringConstraints(max_length=4096)] | None = None
    """Where its model is."""
    gpu_seconds: float = Field(default=0.0, ge=0.0)
    """GPU-seconds used by all trials."""
    gpu_seconds_saved: float = Field(default=0.0, ge=0.0)
    """GPU-seconds the pruned trials would still have used (their rate times their remaining steps)."""
    saved_percent: Annotated[str, StringConstraints(max_length=16)] | None = None
    """saved / (used + saved), for kubectl."""
    score_objective_correlation: Correlation | None = None
    """The sweep's check of its own pruning rule."""


class FineTuneSweep(BaseModel):
    """A whole FineTuneSweep manifest."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["finetune.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneSweep"]
    metadata: ObjectMeta
    spec: FineTuneSweepSpec
    status: FineTuneSweepStatus | None = None


# --- expansion: which trials a sweep defines (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class TrialProblem:
    """A trial spec the FineTuneJob models reject, located in the sweep (spec path) and in the trial."""

    path: str
    rule: str
    value: str | None = None


@dataclass(frozen=True)
class PlannedTrial:
    """One trial as the sweep defines it: index, name, the values it sets, its full FineTuneJob spec."""

    index: int
    name: str
    parameters: dict[str, Any]
    spec: FineTuneJobSpec
    calibration: bool


@dataclass(frozen=True)
class Point:
    """Before seeds: the values one grid cell or explicit trial sets, and where each came from in the sweep."""

    values: dict[str, Any]
    origins: dict[str, str]


def trial_name(sweep: str, index: int) -> str:
    """Deterministic, unique per index, a DNS-1035 label short enough that its PyTorchJob keeps the same name.
    A sweep name that is not such a label itself (dots, a leading digit, too long) gets a prefix plus a hash."""
    suffix = f"-t{index}"
    if len(sweep) + len(suffix) <= TRIAL_NAME_BUDGET and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", sweep):
        return sweep + suffix
    digest = hashlib.sha256(sweep.encode()).hexdigest()[:8]
    room = TRIAL_NAME_BUDGET - len(suffix) - len(digest) - 1
    prefix = re.sub(r"[^a-z0-9-]", "-", sweep)[:room].strip("-")
    if not prefix or not prefix[0].isalpha():
        prefix = ("fts-" + prefix)[:room].rstrip("-")
    return f"{prefix}-{digest}{suffix}"


def points(spec: FineTuneSweepSpec) -> list[Point]:
    """Grid cells (first axis slowest), then explicit trials; seeds are applied by `plan`."""
    out: list[Point] = []
    if spec.parameters:
        axes = [list(enumerate(parameter.values)) for parameter in spec.parameters]
        for combination in itertools.product(*axes):
            values, origins = {}, {}
            for axis, (position, value) in enumerate(combination):
                path = spec.parameters[axis].path
                values[path] = value
                origins[path] = f"spec.parameters[{axis}].values[{position}]"
            out.append(Point(values, origins))
    for index, trial in enumerate(spec.trials):
        out.append(
            Point(
                dict(trial.parameters), {path: f"spec.trials[{index}].parameters.{path}" for path in trial.parameters}
            )
        )
    return out


def trial_count(spec: FineTuneSweepSpec) -> int:
    grid = 1
    for parameter in spec.parameters:
        grid *= len(parameter.values)
    return ((grid if spec.parameters else 0) + len(spec.trials)) * spec.seeds


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a wire-form spec, creating the objects on the way (their defaults fill in later)."""
    *parents, leaf = path.split(".")
    node = document
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = copy.deepcopy(value)


def unknown_path(path: str) -> str | None:
    """None when `path` names a field of the FineTuneJob spec (wire names), else the rule it breaks. Only objects
    are walked into: a list (data.datasets) is set whole, never one member of each item."""
    model: Any = FineTuneJobSpec
    parts = path.split(".")
    for position, part in enumerate(parts):
        walked = ".".join(parts[:position])
        if model is None:
            return f"{walked} is not an object with fields, so {path} cannot be set (set {walked} whole)"
        fields = {(info.alias or name): info for name, info in model.model_fields.items()}
        if part not in fields:
            where = walked or "the FineTuneJob spec"
            return f"{where} has no field {part!r} (known: {', '.join(sorted(fields))})"
        model = _model_of(fields[part].annotation)
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds directly (X or X | None), never one inside a list or a map."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for argument in typing.get_args(annotation):
            if isinstance(argument, type) and issubclass(argument, BaseModel):
                return argument
    return None


def default_calibration_count(total: int) -> int:
    return max(1, total // 10) if total >= 6 else 0


def calibration_indices(sweep: str, total: int, count: int | None) -> frozenset[int]:
    """Which trials are never pruned: a random pick seeded by the sweep's name, so a restart picks the same."""
    wanted = default_calibration_count(total) if count is None else min(count, total)
    return frozenset(random.Random(f"calibration:{sweep}").sample(range(total), wanted))


def plan(sweep: str, spec: FineTuneSweepSpec) -> tuple[list[PlannedTrial], list[TrialProblem]]:
    """Every trial the sweep defines, or the problems that stop any from starting, by sweep path: the size and
    every path first; then, when the space fits and its paths exist, every value any trial's spec rejects."""
    total = trial_count(spec)
    problems: list[TrialProblem] = []
    if total > spec.max_trials:
        too_many = f"the space defines {total} trials ((grid + trials) x {spec.seeds} seeds), more than maxTrials"
        problems.append(TrialProblem("spec.maxTrials", too_many, str(spec.max_trials)))
    for axis, parameter in enumerate(spec.parameters):
        if (rule := unknown_path(parameter.path)) is not None:
            problems.append(TrialProblem(f"spec.parameters[{axis}].path", rule, repr(parameter.path)))
    for number, trial in enumerate(spec.trials):
        for path in trial.parameters:
            if (rule := unknown_path(path)) is not None:
                problems.append(TrialProblem(f"spec.trials[{number}].parameters", rule, repr(path)))
    if problems:
        return [], problems
    template = spec.template.to_wire()
    base_seed = spec.template.training.seed
    calibration = calibration_indices(sweep, total, spec.pruning.calibration_trials)
    trials: list[PlannedTrial] = []
    seen: set[str] = set()
    for point in points(spec):
        for repeat in range(spec.seeds):
            index = len(trials)
            values = dict(point.values)
            if spec.seeds > 1:  # repeats of a point: its own seed (from the space, else the template's) + k
                seed = values.get("training.seed", base_seed)
                values["training.seed"] = seed + repeat if type(seed) is int else seed  # a bad seed: reported below
            document = copy.deepcopy(template)
            for path, value in values.items():
                set_path(document, path, value)
            if OUTPUT_DIR_PATH not in values:  # trials share the template's volume: each writes its own folder
                set_path(
                    document,
                    OUTPUT_DIR_PATH,
                    f"{spec.template.training.checkpoint.output_dir}/{trial_name(sweep, index)}",
                )
            try:
                trial_spec = FineTuneJobSpec.model_validate_json(json.dumps(document), strict=True)
            except ValidationError as error:
                for item in error.errors(include_url=False):
                    problems.append(_trial_problem(item, point))
                continue
            trials.append(PlannedTrial(index, trial_name(sweep, index), values, trial_spec, index in calibration))
    return ([] if problems else trials), _unique(problems, seen)


def _trial_problem(item: Any, point: Point) -> TrialProblem:
    """A pydantic error in a trial's spec, reported on the sweep value that caused it when one did."""
    loc = [part for part in item["loc"] if not isinstance(part, int)]
    field = ".".join(str(part) for part in loc)
    rule = item["msg"].removeprefix("Value error, ")
    member = (item.get("ctx") or {}).get("member")
    if member:
        field = f"{field}.{member}" if field else member
    for related in (_inside, _siblings):
        for path, origin in point.origins.items():
            if related(field, path):
                return TrialProblem(origin, f"{field}: {rule}", repr(point.values[path]))
    shown = None if member else repr(item.get("input"))[:80]  # a cross-field rule's input is the whole object
    return TrialProblem(f"spec.template.{field}", rule, shown)


def _inside(field: str, path: str) -> bool:
    """The error's field is the parameter's path, inside it, or an object holding it."""
    return field == path or field.startswith(path + ".") or path.startswith(field + ".")


def _siblings(field: str, path: str) -> bool:
    """A cross-field rule's member next to the parameter (training.warmupSteps against training.maxSteps)."""
    return field.rsplit(".", 1)[0] == path.rsplit(".", 1)[0]


def _unique(problems: list[TrialProblem], seen: set[str]) -> list[TrialProblem]:
    out = []
    for problem in problems:
        key = f"{problem.path}|{problem.rule}|{problem.value}"
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def trial_manifest(sweep: FineTuneSweep, trial: PlannedTrial) -> dict[str, Any]:
    """The trial's FineTuneJob, owned by the sweep (deleting the sweep deletes its trials)."""
    from finetune_contract import names

    metadata: dict[str, Any] = {
        "name": trial.name,
        "namespace": sweep.metadata.namespace,
        "labels": {names.SWEEP_LABEL: _label(sweep.metadata.name), names.TRIAL_INDEX_LABEL: str(trial.index)},
        "annotations": {names.TRIAL_PARAMETERS_ANNOTATION: json.dumps(trial.parameters, sort_keys=True)},
    }
    if sweep.metadata.uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": SWEEP_KIND,
                "name": sweep.metadata.name,
                "uid": sweep.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    spec = trial.spec.to_wire()
    if sweep.spec.suspend:
        spec["suspend"] = True
    return {"apiVersion": API_VERSION, "kind": "FineTuneJob", "metadata": metadata, "spec": spec}


def _label(name: str) -> str:
    from finetune_operator.children.pytorchjob import label_value

    return label_value(name)


__all__ = [
    "DNS_SUBDOMAIN",
    "FineTuneSweep",
    "FineTuneSweepSpec",
    "FineTuneSweepStatus",
    "PlannedTrial",
    "TrialProblem",
    "plan",
    "trial_manifest",
    "trial_name",
]
