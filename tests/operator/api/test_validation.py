"""Every invalid spec is refused with its field path and the rule it breaks; valid ones pass."""

from __future__ import annotations

import pytest
import yaml

from finetune_operator.api.validation import (
    InvalidInputError,
    field_path,
    parse_documents,
    validate_any,
    validate_manifest,
)
from tests.invalid_cases import CASES, Case
from tests.manifests import EXAMPLES, minimal_job


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_invalid_spec_names_field_and_rule(case: Case) -> None:
    with pytest.raises(InvalidInputError) as raised:
        validate_manifest(case.manifest, "job.yaml")
    matching = [error for error in raised.value.errors if error.path == case.path]
    assert matching, f"no error at {case.path}: {raised.value}"
    assert any(case.message in error.rule for error in matching), str(raised.value)
    assert str(raised.value).startswith(f"job.yaml: {case.path}")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_examples_are_valid(example) -> None:
    """Every example (FineTuneJobs and FineTuneSweeps, whose every trial must be a valid FineTuneJob too)."""
    (document,) = parse_documents(example.read_text())
    manifest = validate_any(document)
    assert manifest.kind == document["kind"]
    assert manifest.metadata.name == document["metadata"]["name"]


def test_the_offending_value_is_shown() -> None:
    job = minimal_job(training={"learningRate": -0.5})
    with pytest.raises(InvalidInputError, match=r"spec.training.learningRate: .*greater than 0 \(got -0.5\)"):
        validate_manifest(job)


def test_every_problem_is_reported_at_once() -> None:
    job = minimal_job(training={"learningRate": -1, "epochs": 0}, resources={"nodes": 0})
    with pytest.raises(InvalidInputError) as raised:
        validate_manifest(job)
    assert {error.path for error in raised.value.errors} == {
        "spec.training.learningRate",
        "spec.training.epochs",
        "spec.resources.nodes",
    }


@pytest.mark.parametrize(
    ("document", "rule"),
    [
        (["a", "list"], "a FineTuneJob must be a mapping"),
        ({**minimal_job(), "kind": "PyTorchJob"}, "Input should be 'FineTuneJob'"),
        ({**minimal_job(), "apiVersion": "finetune.dev/v1"}, "Input should be 'finetune.dev/v1alpha1'"),
        ({**minimal_job(), "metadata": {"name": "Bad_Name"}}, "match pattern"),
        ({key: value for key, value in minimal_job().items() if key != "spec"}, "required field is missing"),
    ],
)
def test_document_level_errors(document, rule: str) -> None:
    with pytest.raises(InvalidInputError, match=rule):
        validate_manifest(document)


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(InvalidInputError, match=r"line 2, column \d+: invalid YAML"):
        parse_documents("spec:\n  model: a: b\n")


def test_empty_file_is_an_error() -> None:
    with pytest.raises(InvalidInputError, match="no FineTuneJob document found"):
        parse_documents("---\n")


@pytest.mark.parametrize(
    ("loc", "path"), [(("spec", "data", "datasets", 0, "path"), "spec.data.datasets[0].path"), ((), "")]
)
def test_field_path(loc, path: str) -> None:
    assert field_path(loc) == path


def test_multi_document_files_validate_each_document() -> None:
    text = yaml.safe_dump_all([minimal_job("a"), minimal_job("b", training={"epochs": 0})])
    documents = parse_documents(text)
    assert validate_manifest(documents[0]).metadata.name == "a"
    with pytest.raises(InvalidInputError, match=r"spec\.training\.epochs"):
        validate_manifest(documents[1])
