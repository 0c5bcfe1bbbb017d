"""The FineTuneSweep API (issue 13): validation by field path, the expansion into trials (`plan`), trial names,
calibration picks and the trial FineTuneJob manifests.

Expected values are derived here independently of the code under test (a hand-written product for the grid, the
DNS-1035 pattern for names, the documented calibration formula).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from finetune_contract import names
from finetune_operator.api.models import DNS_SUBDOMAIN, FineTuneJobSpec
from finetune_operator.api.sweep import (
    MAX_TRIALS,
    TRIAL_NAME_BUDGET,
    FineTuneSweep,
    FineTuneSweepSpec,
    PlannedTrial,
    calibration_indices,
    default_calibration_count,
    plan,
    points,
    set_path,
    trial_count,
    trial_manifest,
    trial_name,
    unknown_path,
)
from finetune_operator.api.validation import (
    FieldError,
    InvalidInputError,
    field_errors,
    validate_manifest,
    validate_sweep_manifest,
)
from finetune_operator.children.pytorchjob import child_name
from finetune_trainer.config import TrainingSpec
from tests.manifests import minimal_job

TEMPLATE_SEED = 7
TEMPLATE_OUTPUT_DIR = "/output"  # CheckpointSpec's default
OUTPUT_DIR = "training.checkpoint.outputDir"
TEMPLATE: dict[str, Any] = {**minimal_job()["spec"], "training": {"seed": TEMPLATE_SEED}}
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def spec_of(**fields: Any) -> FineTuneSweepSpec:
    """A sweep spec from wire fields (camelCase), validated as the API server would: strictly, from JSON."""
    document = {"template": fields.pop("template", TEMPLATE), **fields}
    return FineTuneSweepSpec.model_validate_json(json.dumps(document), strict=True)


def sweep_manifest(name: str = "sweep", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneSweep",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"template": TEMPLATE, **spec},
    }


def sweep_errors(document: dict[str, Any]) -> list[FieldError]:
    with pytest.raises(ValidationError) as raised:
        FineTuneSweep.model_validate_json(json.dumps(document), strict=True)
    return field_errors(raised.value)


def get_path(document: dict[str, Any], path: str) -> Any:
    node: Any = document
    for part in path.split("."):
        node = node[part]
    return node


def flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted path -> leaf value (lists and empty objects are leaves)."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def expected_points(parameters: list[dict[str, Any]], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grid cells with the first axis varying slowest (written without itertools), then the explicit trials."""
    cells: list[dict[str, Any]] = [{}] if parameters else []
    for axis in parameters:
        cells = [{**cell, axis["path"]: value} for cell in cells for value in axis["values"]]
    return cells + [dict(trial["parameters"]) for trial in trials]


# --- validation of the sweep object -------------------------------------------------------------------------------


def test_a_valid_sweep_manifest_passes_with_its_defaults() -> None:
    sweep = FineTuneSweep.model_validate_json(
        json.dumps(sweep_manifest(parameters=[{"path": "training.learningRate", "values": [1e-5]}])), strict=True
    )
    assert sweep.spec.seeds == 1
    assert sweep.spec.pruning.score.metric == "trainLoss"
    assert sweep.spec.pruning.score.better() == "minimize"
    assert sweep.spec.objective_metric() == "trainLoss"  # the template holds out no eval data
    with_eval = spec_of(
        template={**TEMPLATE, "data": {**TEMPLATE["data"], "evalFraction": 0.1}},
        trials=[{"parameters": {"training.epochs": 2}}],
    )
    assert with_eval.objective_metric() == "evalLoss"


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({}, "spec.parameters", "the search space is empty"),
        ({"parameters": [], "trials": []}, "spec.parameters", "the search space is empty"),
        (
            {
                "parameters": [
                    {"path": "training.learningRate", "values": [1e-5]},
                    {"path": "training.epochs", "values": [1]},
                    {"path": "training.learningRate", "values": [2e-5]},
                ]
            },
            "spec.parameters",
            "each parameter path may appear once",
        ),
        (
            {"trials": [{"parameters": {"training.epochs": 2}}], "maxTrials": 3, "maxParallelTrials": 4},
            "spec.maxParallelTrials",
            "maxParallelTrials must not exceed maxTrials",
        ),
        (
            {"trials": [{"parameters": {"training.epochs": 2}}], "pruning": {"score": {"metric": "promql"}}},
            "spec.pruning.score.promql",
            "promql is required when metric is promql",
        ),
        (
            {"trials": [{"parameters": {"training.epochs": 2}}], "pruning": {"score": {"promql": "up"}}},
            "spec.pruning.score.promql",
            "and only then",
        ),
        (
            {"parameters": [{"path": "Training.seed", "values": [1]}]},
            "spec.parameters[0].path",
            "pattern",
        ),
        ({"parameters": [{"path": "training.seed", "values": []}]}, "spec.parameters[0].values", "at least 1"),
        ({"trials": [{"parameters": {}}]}, "spec.trials[0].parameters", "at least 1"),
        ({"trials": [{"parameters": {"training.epochs": 2}}], "seeds": 0}, "spec.seeds", "greater than or equal to 1"),
        (
            {"trials": [{"parameters": {"training.epochs": 2}}], "maxTrials": MAX_TRIALS + 1},
            "spec.maxTrials",
            f"less than or equal to {MAX_TRIALS}",
        ),
        (
            {"trials": [{"parameters": {"training.epochs": 2}}], "pruning": {"reductionFactor": 1}},
            "spec.pruning.reductionFactor",
            "greater than or equal to 2",
        ),
        (
            {"trials": [{"parameters": {"training.epochs": 2}}], "objective": {"metric": "gradNorm"}},
            "spec.objective.metric",
            "'evalLoss' or 'trainLoss'",
        ),
        ({"trials": [{"parameters": {"training.epochs": 2}}], "grid": []}, "spec.grid", "unknown field"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_invalid_sweep_names_field_and_rule(spec: dict[str, Any], path: str, message: str) -> None:
    errors = sweep_errors(sweep_manifest(**spec))
    matching = [error for error in errors if error.path == path]
    assert matching, f"no error at {path}: {errors}"
    assert any(message in error.rule for error in matching), errors


@pytest.mark.parametrize(
    "spec",
    [
        {"trials": [{"parameters": {"training.epochs": 2}}], "maxTrials": 4, "maxParallelTrials": 4},
        {
            "trials": [{"parameters": {"training.epochs": 2}}],
            "pruning": {"score": {"metric": "promql", "promql": "up"}},
        },
        {"parameters": [{"path": "training.epochs", "values": [1]}, {"path": "training.seed", "values": [1]}]},
    ],
)
def test_boundary_specs_are_valid(spec: dict[str, Any]) -> None:
    FineTuneSweep.model_validate_json(json.dumps(sweep_manifest(**spec)), strict=True)


def test_the_template_is_validated_as_a_finetunejob_spec() -> None:
    errors = sweep_errors(
        sweep_manifest(
            template={**TEMPLATE, "training": {"learningRate": -1}}, trials=[{"parameters": {"training.epochs": 2}}]
        )
    )
    assert [error.path for error in errors] == ["spec.template.training.learningRate"]


# --- expansion ----------------------------------------------------------------------------------------------------


def test_grid_order_first_axis_slowest_then_explicit_trials() -> None:
    parameters = [
        {"path": "training.learningRate", "values": [1e-5, 2e-5]},
        {"path": "training.effectiveBatchSize", "values": [64, 128, 256]},
    ]
    trials = [{"parameters": {"training.learningRate": 5e-6, "training.epochs": 3}}]
    planned, problems = plan("sweep", spec_of(parameters=parameters, trials=trials))
    assert problems == []
    wanted = [
        {"training.learningRate": 1e-5, "training.effectiveBatchSize": 64},
        {"training.learningRate": 1e-5, "training.effectiveBatchSize": 128},
        {"training.learningRate": 1e-5, "training.effectiveBatchSize": 256},
        {"training.learningRate": 2e-5, "training.effectiveBatchSize": 64},
        {"training.learningRate": 2e-5, "training.effectiveBatchSize": 128},
        {"training.learningRate": 2e-5, "training.effectiveBatchSize": 256},
        {"training.learningRate": 5e-6, "training.epochs": 3},
    ]
    assert [trial.parameters for trial in planned] == wanted
    assert [trial.index for trial in planned] == list(range(len(wanted)))
    assert [trial.name for trial in planned] == [f"sweep-t{index}" for index in range(len(wanted))]
    last = planned[-1].spec.training
    assert (last.learning_rate, last.epochs, last.effective_batch_size) == (
        5e-6,
        3,
        TrainingSpec().effective_batch_size,
    )
    assert [point.origins for point in points(spec_of(parameters=parameters, trials=trials))][4] == {
        "training.learningRate": "spec.parameters[0].values[1]",
        "training.effectiveBatchSize": "spec.parameters[1].values[1]",
    }


def test_seeds_repeat_each_point_with_consecutive_seeds_from_the_template() -> None:
    planned, problems = plan(
        "s", spec_of(parameters=[{"path": "training.learningRate", "values": [1e-5, 3e-5]}], seeds=3)
    )
    assert problems == []
    wanted = [
        (learning_rate, TEMPLATE_SEED + k) for learning_rate in (1e-5, 3e-5) for k in range(3)
    ]  # each point, then its seeds
    assert [(trial.spec.training.learning_rate, trial.spec.training.seed) for trial in planned] == wanted
    assert [trial.parameters["training.seed"] for trial in planned] == [seed for _, seed in wanted]


def test_one_seed_keeps_the_template_seed_and_sets_no_seed_parameter() -> None:
    planned, _ = plan("s", spec_of(parameters=[{"path": "training.learningRate", "values": [1e-5, 3e-5]}]))
    assert all(trial.spec.training.seed == TEMPLATE_SEED for trial in planned)
    assert all("training.seed" not in trial.parameters for trial in planned)


def test_a_seed_set_by_the_space_is_not_silently_replaced() -> None:
    planned, problems = plan("s", spec_of(parameters=[{"path": "training.seed", "values": [100, 200]}], seeds=2))
    if problems:  # refusing the combination is acceptable too
        return
    # The recipes, without the per-trial output folder (which differs by construction).
    recipes = [
        json.dumps({**trial.spec.to_wire()["training"], "checkpoint": None}, sort_keys=True) for trial in planned
    ]
    assert len(set(recipes)) == len(recipes), [trial.spec.training.seed for trial in planned]


def test_set_path_creates_objects_and_copies_values() -> None:
    document: dict[str, Any] = {"training": 5}
    value = {"a": [1]}
    set_path(document, "training.checkpoint.x", value)
    value["a"].append(2)
    assert document == {"training": {"checkpoint": {"x": {"a": [1]}}}}


PARAMETER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "training.learningRate": st.floats(min_value=1e-7, max_value=1.0),
    "training.effectiveBatchSize": st.integers(1, 10_000),
    "training.epochs": st.integers(1, 20),
    "training.weightDecay": st.floats(min_value=0.0, max_value=1.0),
    "training.lrScheduler": st.sampled_from(["constant", "cosine", "linear"]),
    "training.warmupSteps": st.integers(0, 1000),
    "training.gradientClipping": st.floats(min_value=0.0, max_value=1e6),
    "data.maxSeqLen": st.integers(16, 16384),
    "model.dtype": st.sampled_from(["bfloat16", "float16", "float32"]),
    "metrics.port": st.integers(1024, 65535),
    "suspend": st.booleans(),
}


@st.composite
def spaces(draw: st.DrawFn) -> dict[str, Any]:
    """A valid search space: up to 3 grid axes of up to 4 values, up to 3 explicit trials, up to 3 seeds."""
    paths = draw(st.lists(st.sampled_from(sorted(PARAMETER_VALUES)), max_size=3, unique=True))
    parameters = [
        {"path": path, "values": draw(st.lists(PARAMETER_VALUES[path], min_size=1, max_size=4))} for path in paths
    ]
    trials = [
        {"parameters": {path: draw(PARAMETER_VALUES[path]) for path in chosen}}
        for chosen in draw(
            st.lists(
                st.lists(st.sampled_from(sorted(PARAMETER_VALUES)), min_size=1, max_size=2, unique=True),
                min_size=0 if parameters else 1,
                max_size=3,
            )
        )
    ]
    return {"parameters": parameters, "trials": trials, "seeds": draw(st.integers(1, 3)), "maxTrials": MAX_TRIALS}


@settings(max_examples=80, deadline=None)
@given(spaces())
def test_plan_expands_the_space_exactly(space: dict[str, Any]) -> None:
    spec = spec_of(**space)
    planned, problems = plan("prop", spec)
    assert problems == []
    wanted = [
        {**point, **({"training.seed": TEMPLATE_SEED + k} if space["seeds"] > 1 else {})}
        for point in expected_points(space["parameters"], space["trials"])
        for k in range(space["seeds"])
    ]
    assert trial_count(spec) == len(planned) == len(wanted)
    assert [trial.parameters for trial in planned] == wanted
    assert [trial.index for trial in planned] == list(range(len(planned)))
    assert len({trial.name for trial in planned}) == len(planned)

    template = flatten(FineTuneJobSpec.model_validate_json(json.dumps(TEMPLATE), strict=True).to_wire())
    for trial in planned:
        wire = trial.spec.to_wire()
        # Every trial is a valid FineTuneJob spec on its own ...
        assert FineTuneJobSpec.model_validate_json(json.dumps(wire), strict=True) == trial.spec
        # ... carries the trial's values at their paths ...
        for path, value in trial.parameters.items():
            assert get_path(wire, path) == value
        # ... writes its own output folder on the template's volume ...
        assert wire["training"]["checkpoint"]["outputDir"] == f"{TEMPLATE_OUTPUT_DIR}/{trial.name}"
        # ... and differs from the template nowhere else.
        mine = flatten(wire)
        differing = {path for path in template.keys() | mine.keys() if template.get(path) != mine.get(path)}
        assert differing <= {*trial.parameters, OUTPUT_DIR}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-7, max_value=1.0), min_size=0, max_size=5),
    st.lists(st.floats(min_value=1e-7, max_value=1.0), min_size=0, max_size=5),
    st.sampled_from([-1.0, 0.0, 1.5, "fast", None, True]),
    st.integers(1, 3),
    st.integers(1, 3),
)
def test_one_rejected_value_is_named_and_no_partial_trial_list_is_returned(
    before: list[float], after: list[float], bad: Any, other_axis: int, seeds: int
) -> None:
    position = len(before)
    parameters = [
        {"path": "training.learningRate", "values": [*before, bad, *after]},
        {"path": "training.epochs", "values": list(range(1, other_axis + 1))},
    ]
    planned, problems = plan("s", spec_of(parameters=parameters, seeds=seeds, maxTrials=MAX_TRIALS))
    assert planned == []
    # Once, however many trials the bad value reaches (other axis x seeds): problems are deduplicated.
    assert [problem.path for problem in problems] == [f"spec.parameters[0].values[{position}]"]
    assert problems[0].rule.startswith("training.learningRate: ")
    assert problems[0].value == repr(bad)


def test_rejected_value_names_the_field_rule() -> None:
    parameters = [{"path": "training.learningRate", "values": [1e-5, 2e-5, -1.0]}]
    planned, problems = plan("s", spec_of(parameters=parameters))
    assert planned == []
    (problem,) = problems
    assert (problem.path, problem.value) == ("spec.parameters[0].values[2]", "-1.0")
    assert "training.learningRate" in problem.rule
    assert "greater than 0" in problem.rule


def test_a_rejected_explicit_value_names_the_trial_and_path() -> None:
    trials = [
        {"parameters": {"training.epochs": 2}},
        {"parameters": {"training.epochs": 3, "training.learningRate": 2.0}},
    ]
    planned, problems = plan("s", spec_of(trials=trials))
    assert planned == []
    assert [(problem.path, problem.value) for problem in problems] == [
        ("spec.trials[1].parameters.training.learningRate", "2.0")
    ]
    assert "less than or equal to 1" in problems[0].rule


def test_problems_in_several_parameters_are_all_reported() -> None:
    parameters = [
        {"path": "training.learningRate", "values": [-1.0, 1e-5]},
        {"path": "training.epochs", "values": [1, 0]},
    ]
    planned, problems = plan("s", spec_of(parameters=parameters))
    assert planned == []
    assert {problem.path for problem in problems} == {"spec.parameters[0].values[0]", "spec.parameters[1].values[1]"}


def test_a_cross_field_rule_broken_by_a_parameter_stops_the_plan() -> None:
    template = {**TEMPLATE, "training": {**TEMPLATE["training"], "warmupSteps": 10}}
    parameters = [{"path": "training.maxSteps", "values": [100, 10, 200]}]
    planned, problems = plan("s", spec_of(template=template, parameters=parameters))
    assert planned == []
    assert problems
    assert any("warmupSteps must be smaller than maxSteps" in problem.rule for problem in problems)


def test_a_cross_field_rule_broken_by_a_parameter_is_reported_on_the_value() -> None:
    template = {**TEMPLATE, "training": {**TEMPLATE["training"], "warmupSteps": 10}}
    parameters = [{"path": "training.maxSteps", "values": [100, 10, 200]}]
    _, problems = plan("s", spec_of(template=template, parameters=parameters))
    assert [(problem.path, problem.value) for problem in problems] == [("spec.parameters[0].values[1]", "10")]
    assert "warmupSteps must be smaller than maxSteps" in problems[0].rule


def test_unknown_path_names_the_sweep_path_and_lists_known_fields() -> None:
    parameters = [
        {"path": "training.learningRate", "values": [1e-5]},
        {"path": "training.learningRat", "values": [1e-5]},
    ]
    planned, problems = plan("s", spec_of(parameters=parameters))
    assert planned == []
    (problem,) = problems
    assert problem.path == "spec.parameters[1].path"
    assert problem.value == repr("training.learningRat")
    assert "'learningRat'" in problem.rule
    known = {info.alias for info in TrainingSpec.model_fields.values()}
    assert known <= set(re.findall(r"[A-Za-z]+", problem.rule.split("known:", 1)[1]))


def test_unknown_top_level_path_lists_the_spec_fields() -> None:
    rule = unknown_path("trainig.seed")
    assert rule is not None
    assert rule.startswith("the FineTuneJob spec has no field 'trainig'")
    for known in ("model", "data", "training", "resources", "earlyStopping", "metrics", "suspend", "queueName"):
        assert known in rule


def test_unknown_paths_in_explicit_trials_are_reported_with_the_rest() -> None:
    spec = spec_of(
        parameters=[{"path": "training.nope", "values": [1]}],
        trials=[{"parameters": {"training.epochs": 1}}, {"parameters": {"model.nope": 1}}],
    )
    planned, problems = plan("s", spec)
    assert planned == []
    assert [(problem.path, problem.value) for problem in problems] == [
        ("spec.parameters[0].path", repr("training.nope")),
        ("spec.trials[1].parameters", repr("model.nope")),
    ]


def test_a_path_through_a_scalar_is_refused() -> None:
    rule = unknown_path("training.seed.value")
    assert rule is not None
    assert "training.seed is not an object" in rule


def test_every_field_of_a_full_spec_is_a_known_path() -> None:
    """The wire form of a spec with every default written out: each leaf (and each object) is a settable path."""
    wire = FineTuneJobSpec.model_validate_json(json.dumps(TEMPLATE), strict=True).to_wire()
    leaves = flatten(wire)
    objects = {path.rsplit(".", 1)[0] for path in leaves if "." in path}
    for path in sorted(leaves.keys() | objects):
        assert unknown_path(path) is None, path


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            "data.maxSeqLen.maxSeqLen",
        ),
        pytest.param(
            "data.datasets.path",
        ),
    ],
)
def test_paths_that_cannot_be_set_are_refused_by_unknown_path(path: str) -> None:
    assert unknown_path(path) is not None


def test_grid_larger_than_max_trials_is_refused_before_any_trial() -> None:
    parameters = [
        {"path": "training.learningRate", "values": [1e-5, 2e-5, 3e-5]},
        {"path": "training.epochs", "values": [1, 2, 3]},
    ]
    size = 3 * 3 * 2
    planned, problems = plan("s", spec_of(parameters=parameters, seeds=2, maxTrials=size - 1))
    assert planned == []
    (problem,) = problems
    assert (problem.path, problem.value) == ("spec.maxTrials", str(size - 1))
    assert f"defines {size} trials" in problem.rule
    planned, problems = plan("s", spec_of(parameters=parameters, seeds=2, maxTrials=size))
    assert (len(planned), problems) == (size, [])


def test_validate_sweep_manifest_reports_plan_problems_by_sweep_path() -> None:
    document = sweep_manifest(parameters=[{"path": "training.learningRate", "values": [1e-5, 5.0]}])
    with pytest.raises(InvalidInputError) as raised:
        validate_sweep_manifest(document, "sweep.yaml")
    assert [(error.path, error.value) for error in raised.value.errors] == [("spec.parameters[0].values[1]", "5.0")]
    assert str(raised.value).startswith("sweep.yaml: spec.parameters[0].values[1]: training.learningRate")
    ok = validate_sweep_manifest(sweep_manifest(parameters=[{"path": "training.learningRate", "values": [1e-5]}]))
    assert ok.metadata.name == "sweep"


# --- names --------------------------------------------------------------------------------------------------------

SWEEP_NAMES = st.from_regex(DNS_SUBDOMAIN, fullmatch=True).filter(lambda name: 1 <= len(name) <= 253)
DOT_FREE_NAMES = st.from_regex(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", fullmatch=True).filter(lambda name: len(name) <= 253)
INDICES = st.lists(st.integers(0, MAX_TRIALS - 1), min_size=1, max_size=50, unique=True)


@settings(max_examples=300, deadline=None)
@given(SWEEP_NAMES, INDICES)
@example("a", [0, 9, 10, 999])
@example("a" * 253, [0, 1, 999])
@example("0" * 253, [0, 999])
@example("x" * 47, [9, 10, 100, 999])  # the name switches form between short and hashed indices
def test_trial_names_are_short_deterministic_and_unique(sweep: str, indices: list[int]) -> None:
    generated = [trial_name(sweep, index) for index in indices]
    assert generated == [trial_name(sweep, index) for index in indices]
    assert len(set(generated)) == len(generated)
    for index, name in zip(indices, generated, strict=True):
        assert len(name) <= TRIAL_NAME_BUDGET
        assert name.endswith(f"-t{index}")
        assert name[0].isalpha()
        assert re.fullmatch(DNS_SUBDOMAIN, name), name  # at least a valid FineTuneJob name


@settings(max_examples=300, deadline=None)
@given(DOT_FREE_NAMES, INDICES)
@example("0", [0])
@example("a" * 253, [999])
@example("-".join(["a"] * 30), [0, 999])
def test_trial_names_of_dot_free_sweeps_are_dns1035_labels_and_their_own_pytorchjob_name(
    sweep: str, indices: list[int]
) -> None:
    for index in indices:
        name = trial_name(sweep, index)
        assert DNS_1035_LABEL.fullmatch(name), name
        assert child_name(name) == name  # TRIAL_NAME_BUDGET's promise: the PyTorchJob keeps the trial's name


@settings(max_examples=100, deadline=None)
@given(SWEEP_NAMES, INDICES)
@example("my.sweep", [0])
def test_trial_names_are_dns1035_labels_for_any_sweep_name(sweep: str, indices: list[int]) -> None:
    for index in indices:
        name = trial_name(sweep, index)
        assert DNS_1035_LABEL.fullmatch(name), name
        assert child_name(name) == name


@settings(max_examples=200, deadline=None)
@given(
    st.from_regex(r"^[a-z][-a-z0-9]{59}$", fullmatch=True),
    st.from_regex(r"^[a-z0-9]{1,40}$", fullmatch=True),
    st.from_regex(r"^[a-z0-9]{1,40}$", fullmatch=True),
    st.integers(0, MAX_TRIALS - 1),
)
def test_long_names_sharing_a_prefix_get_distinct_trial_names(prefix: str, one: str, two: str, index: int) -> None:
    if one == two:
        two = two + "x"
    assert trial_name(prefix + one, index) != trial_name(prefix + two, index)


def test_long_names_sharing_a_prefix_concrete() -> None:
    shared = "team-a-llama-7b-instruction-tuning-learning-rate-search-xy"
    assert len(shared) >= 51
    names_ = {trial_name(shared + tail, 0) for tail in ("-one", "-two", "-three")}
    assert len(names_) == 3


# --- calibration --------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(0, MAX_TRIALS), st.one_of(st.none(), st.integers(0, MAX_TRIALS)), SWEEP_NAMES)
def test_calibration_count_and_range(total: int, count: int | None, sweep: str) -> None:
    picked = calibration_indices(sweep, total, count)
    wanted = (0 if total < 6 else max(1, total // 10)) if count is None else min(count, total)
    assert len(picked) == wanted == (default_calibration_count(total) if count is None else wanted)
    assert picked <= set(range(total))
    assert picked == calibration_indices(sweep, total, count)  # same sweep, same picks


@pytest.mark.parametrize(("total", "count"), [(0, 0), (5, 0), (6, 1), (19, 1), (20, 2), (99, 9), (1000, 100)])
def test_default_calibration_count(total: int, count: int) -> None:
    assert default_calibration_count(total) == count


def test_calibration_picks_survive_a_restart() -> None:
    """A fresh interpreter with another hash seed (as after an operator restart) picks the same trials."""
    code = (
        "from finetune_operator.api.sweep import calibration_indices as c; "
        "print(sorted(c('restart-sweep', 200, None)), sorted(c('restart-sweep', 50, 7)))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    default, explicit = calibration_indices("restart-sweep", 200, None), calibration_indices("restart-sweep", 50, 7)
    here = f"{sorted(default)} {sorted(explicit)}\n"
    assert outputs == {here}


def calibrated(planned: list[PlannedTrial]) -> set[int]:
    return {trial.index for trial in planned if trial.calibration}


@pytest.mark.parametrize(("values", "seeds", "wanted"), [(5, 1, 0), (3, 2, 1), (25, 1, 2)])
def test_plan_marks_the_default_number_of_calibration_trials(values: int, seeds: int, wanted: int) -> None:
    spec = spec_of(parameters=[{"path": "training.epochs", "values": list(range(1, values + 1))}], seeds=seeds)
    planned, _ = plan("cal", spec)
    assert len(calibrated(planned)) == wanted
    assert calibrated(planned) == calibration_indices("cal", values * seeds, None)
    again, _ = plan("cal", spec)
    assert calibrated(again) == calibrated(planned)


@pytest.mark.parametrize(("explicit", "wanted"), [(0, 0), (3, 3), (6, 6), (50, 6)])
def test_plan_honours_calibration_trials(explicit: int, wanted: int) -> None:
    spec = spec_of(
        parameters=[{"path": "training.epochs", "values": [1, 2, 3, 4, 5, 6]}], pruning={"calibrationTrials": explicit}
    )
    planned, _ = plan("cal", spec)
    assert len(calibrated(planned)) == wanted


# --- trial manifests ----------------------------------------------------------------------------------------------


def sweep_object(name: str = "sweep", uid: str | None = "uid-1", **spec: Any) -> FineTuneSweep:
    document = sweep_manifest(
        name, parameters=[{"path": "training.learningRate", "values": [1e-5, 2e-5]}], seeds=2, **spec
    )
    if uid is not None:
        document["metadata"]["uid"] = uid
    return FineTuneSweep.model_validate_json(json.dumps(document), strict=True)


def test_trial_manifest_is_owned_labelled_and_annotated() -> None:
    sweep = sweep_object()
    planned, _ = plan(sweep.metadata.name, sweep.spec)
    trial = planned[3]
    manifest = trial_manifest(sweep, trial)
    job = validate_manifest(manifest)  # a valid FineTuneJob
    assert job.spec == trial.spec
    metadata = manifest["metadata"]
    assert (metadata["name"], metadata["namespace"]) == (trial.name, "team")
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneSweep",
            "name": "sweep",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert metadata["labels"] == {names.SWEEP_LABEL: "sweep", names.TRIAL_INDEX_LABEL: "3"}
    annotation = json.loads(metadata["annotations"][names.TRIAL_PARAMETERS_ANNOTATION])
    assert annotation == trial.parameters == {"training.learningRate": 2e-5, "training.seed": TEMPLATE_SEED + 1}
    assert manifest["spec"]["suspend"] is False


def test_trial_manifest_without_uid_has_no_owner() -> None:
    sweep = sweep_object(uid=None)
    planned, _ = plan(sweep.metadata.name, sweep.spec)
    assert "ownerReferences" not in trial_manifest(sweep, planned[0])["metadata"]


def test_suspend_propagates_to_every_trial() -> None:
    sweep = sweep_object(suspend=True)
    planned, _ = plan(sweep.metadata.name, sweep.spec)
    assert planned
    for trial in planned:
        manifest = trial_manifest(sweep, trial)
        assert manifest["spec"]["suspend"] is True
        assert validate_manifest(manifest).spec.suspend


def test_long_sweep_name_gets_a_valid_label() -> None:
    name = "a." * 100 + "b"
    sweep = sweep_object(name=name)
    planned, _ = plan(name, sweep.spec)
    labels = trial_manifest(sweep, planned[0])["metadata"]["labels"]
    value = labels[names.SWEEP_LABEL]
    assert len(value) <= 63
    assert DNS_LABEL_VALUE.fullmatch(value), value
    other = sweep_object(name="a." * 100 + "c")
    assert (
        trial_manifest(other, plan(other.metadata.name, other.spec)[0][0])["metadata"]["labels"][names.SWEEP_LABEL]
        != value
    )


# --- output folders -----------------------------------------------------------------------------------------------


def test_each_trial_writes_its_own_folder_under_the_template_output_dir() -> None:
    template = {**TEMPLATE, "training": {**TEMPLATE["training"], "checkpoint": {"outputDir": "/pvc/runs"}}}
    planned, problems = plan(
        "s", spec_of(template=template, parameters=[{"path": "training.epochs", "values": [1, 2]}])
    )
    assert problems == []
    dirs = [trial.spec.training.checkpoint.output_dir for trial in planned]
    assert dirs == [f"/pvc/runs/{trial.name}" for trial in planned]
    assert len(set(dirs)) == len(dirs)
    assert all(OUTPUT_DIR not in trial.parameters for trial in planned)


def test_an_output_dir_set_by_the_sweep_is_kept() -> None:
    trials = [{"parameters": {OUTPUT_DIR: "/pvc/a"}}, {"parameters": {OUTPUT_DIR: "/pvc/b"}}]
    planned, problems = plan("s", spec_of(trials=trials))
    assert problems == []
    assert [trial.spec.training.checkpoint.output_dir for trial in planned] == ["/pvc/a", "/pvc/b"]
