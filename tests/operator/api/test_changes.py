"""Which spec changes a running training takes, and which it refuses (with the field paths)."""

from __future__ import annotations

from finetune_operator.api import FineTuneJob, FineTuneJobSpec
from finetune_operator.api.changes import IMMUTABLE_SECTIONS, MUTABLE_SECTIONS, changed_paths, immutable_part
from finetune_operator.reconcile.child import applied_spec
from tests.manifests import minimal_job


def spec(**overrides: object) -> dict:
    return FineTuneJob.model_validate(minimal_job(**overrides)).spec.to_wire()


def test_sections_are_partitioned() -> None:
    """Every spec section is either mutable or immutable: a new section must be classified, or this fails."""
    assert not set(IMMUTABLE_SECTIONS) & set(MUTABLE_SECTIONS)
    wire_names = {field.alias or name for name, field in FineTuneJobSpec.model_fields.items()}
    assert set(IMMUTABLE_SECTIONS) | set(MUTABLE_SECTIONS) == wire_names


def test_changed_paths_name_nested_fields() -> None:
    before = spec(training={"learningRate": 2e-5})
    after = spec(training={"learningRate": 1e-5})
    assert changed_paths(immutable_part(before), immutable_part(after)) == ["spec.training.learningRate"]


def test_list_items_are_named_by_index() -> None:
    before = spec(data={"datasets": [{"path": "/a"}, {"path": "/b"}]})
    after = spec(data={"datasets": [{"path": "/a"}, {"path": "/c"}]})
    assert changed_paths(immutable_part(before), immutable_part(after)) == ["spec.data.datasets[1].path"]


def test_mutable_changes_are_not_reported() -> None:
    before = FineTuneJob.model_validate(minimal_job())
    after = FineTuneJob.model_validate(minimal_job(suspend=True, queueName="q", earlyStopping={"maxGradNorm": 3.0}))
    assert changed_paths(applied_spec(before), applied_spec(after)) == []


def test_resources_are_immutable() -> None:
    before = FineTuneJob.model_validate(minimal_job())
    after = FineTuneJob.model_validate(minimal_job(resources={"nodes": 2}))  # with the shared output volume
    assert changed_paths(applied_spec(before), applied_spec(after)) == [
        "spec.resources.nodes",
        "spec.resources.volumes",
    ]
