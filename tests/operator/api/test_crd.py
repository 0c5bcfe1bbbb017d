"""The generated CRD: fresh, structural, documented, and carrying the models' rules and defaults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from finetune_contract.schema import SpecModel
from finetune_operator.api import EarlyStoppingSpec, models
from finetune_operator.api import crd as crdgen
from finetune_trainer import config as recipe
from finetune_trainer.config import TrainingSpec
from tests.manifests import REPO_ROOT


def schema() -> dict[str, Any]:
    return crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below `node`, with its dotted path."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield f"{path}[]", node["items"]
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield f"{path}{{}}", node["additionalProperties"]


def test_committed_crd_files_are_fresh() -> None:
    """Fails when the models changed without `python -m finetune_operator.api.crd`."""
    assert crdgen.stale_files(REPO_ROOT) == []


@pytest.mark.parametrize("stale", range(4))
def test_check_mode_reports_a_stale_copy(tmp_path, stale: int) -> None:
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / crdgen.CRD_PATHS[stale]).write_text("stale")
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda kind: kind.kind)
def test_committed_file_parses_to_the_generated_object(kind: crdgen.Kind) -> None:
    for path in kind.paths:
        assert yaml.safe_load((REPO_ROOT / path).read_text()) == crdgen.crd(kind)


def test_names_and_scope() -> None:
    spec = crdgen.crd()["spec"]
    assert spec["group"] == "finetune.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "FineTuneJob"
    assert spec["names"]["plural"] == "finetunejobs"
    assert "ftj" in spec["names"]["shortNames"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize(
    ("path", "node"), list(walk(schema())), ids=lambda value: value if isinstance(value, str) else ""
)
def test_every_node_is_structural_and_documented(path: str, node: dict[str, Any]) -> None:
    """A structural schema needs a type on every node unless it is int-or-string or free-form."""
    assert not {"$ref", "anyOf", "title"} & node.keys(), path
    has_type = (
        "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    )
    assert has_type, f"{path} has no type"
    if not path.endswith(("[]", "{}")) and not path.startswith((".metadata", ".apiVersion", ".kind")):
        assert node.get("description"), f"{path} has no description"


def test_quantities_are_int_or_string() -> None:
    resources = schema()["properties"]["spec"]["properties"]["resources"]["properties"]
    for name in ("cpu", "memory", "sharedMemorySize"):
        assert resources[name]["x-kubernetes-int-or-string"] is True


def test_paper_defaults_are_in_the_schema() -> None:
    training = schema()["properties"]["spec"]["properties"]["training"]["properties"]
    assert training["effectiveBatchSize"]["default"] == 3840
    assert training["lrScheduler"]["default"] == "constant"
    assert training["warmupSteps"]["default"] == 0
    assert training["adamBetas"]["default"] == [0.9, 0.95]
    assert training["strategy"]["enum"] == ["stacked", "phased"]


def test_sub_object_defaults_are_the_models_defaults_without_nulls() -> None:
    """Written out in full: the API server checks a default against the CEL rules before member defaulting."""
    spec = schema()["properties"]["spec"]["properties"]
    training = TrainingSpec().to_wire()
    assert spec["training"]["default"] == training
    assert "maxSteps" not in spec["training"]["default"]
    assert spec["earlyStopping"]["default"] == EarlyStoppingSpec().to_wire()


def test_exclusive_bounds_use_the_openapi_v3_boolean_form() -> None:
    learning_rate = schema()["properties"]["spec"]["properties"]["training"]["properties"]["learningRate"]
    assert learning_rate["minimum"] == 0
    assert learning_rate["exclusiveMinimum"] is True
    for path, node in walk(schema()):
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key, True) is True, f"{path}.{key}"


def _models() -> list[type[SpecModel]]:
    seen: list[type[SpecModel]] = []
    for value in [*vars(models).values(), *vars(recipe).values()]:
        if isinstance(value, type) and issubclass(value, SpecModel) and value.rules and value not in seen:
            seen.append(value)
    return seen


def test_every_cross_field_rule_reaches_the_crd() -> None:
    """Read back from the generated YAML (as the API server reads it), not matched as text: long rules wrap."""
    found: dict[str, str] = {}

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for entry in node.get("x-kubernetes-validations") or []:
                found[entry["rule"]] = entry["message"]
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(yaml.safe_load(crdgen.crd_yaml()))
    rules = [rule for model in _models() for rule in model.rules]
    assert len(rules) >= 8
    for rule in rules:
        assert found.get(rule.cel) == rule.message, rule.cel


def test_printer_columns_show_phase_progress_loss_grad_norm_age() -> None:
    names = [column["name"] for column in crdgen.crd()["spec"]["versions"][0]["additionalPrinterColumns"]]
    for name in ("Phase", "Progress", "Loss", "GradNorm", "Age"):
        assert name in names


def test_no_anchors_in_the_yaml() -> None:
    assert "&id" not in crdgen.crd_yaml()


def test_null_is_kept_where_it_means_off() -> None:
    """divergenceFactor defaults to 3.0 and null disables it: without nullable the API server would prune the null
    and default it back to 3.0."""
    early = schema()["properties"]["spec"]["properties"]["earlyStopping"]["properties"]
    assert early["divergenceFactor"]["nullable"] is True
    assert "nullable" not in early["maxGradNorm"]  # unset already means off; no default to fight
