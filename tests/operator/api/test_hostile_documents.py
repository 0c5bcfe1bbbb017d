"""Property: whatever document arrives, validation either returns a FineTuneJob or raises InvalidInputError whose
every problem names a field path and a rule — never another exception — and every accepted spec renders a
PyTorchJob that is plain JSON (no NaN, no infinity) and passes our own validation again after a JSON round trip.
The real API server's side of it (accepted specs' children pass its server-side dry run) is in
tests/cluster/test_hostile_documents.py."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, event, given, settings

from finetune_operator.api.validation import InvalidInputError, validate_manifest
from finetune_operator.children.pytorchjob import render
from tests.operator.api.hostile import BASES, documents, examples_setting

EXAMPLES = examples_setting(300)


def verdict(document: Any) -> tuple[str, Any]:
    try:
        return "accepted", validate_manifest(document)
    except InvalidInputError as error:
        return "refused", error


def test_the_bases_are_valid() -> None:
    """The edits start from valid documents, so a refusal is the edit's doing."""
    assert BASES
    for document in BASES:
        assert verdict(document)[0] == "accepted"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(document=documents())
def test_any_document_is_accepted_and_renders_or_is_refused_by_field(document: Any) -> None:
    outcome, result = verdict(document)
    event(outcome)
    if outcome == "refused":
        assert result.errors
        for problem in result.errors:
            assert problem.rule
            assert isinstance(problem.path, str)
            assert len(str(problem)) < 2_000, "a message must stay readable whatever the value"
        return
    child = render(result, trainer_image="example.invalid/trainer:1")
    text = json.dumps(child, allow_nan=False)
    assert json.loads(text) == child
    for container in child["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]:
        for variable in container.get("env") or []:
            assert isinstance(variable.get("value", ""), str)
    again = validate_manifest(json.loads(json.dumps(result.to_wire() if hasattr(result, "to_wire") else document)))
    assert again.spec == result.spec
    _finite(result.spec.to_wire())


def _finite(node: Any) -> None:
    if isinstance(node, float):
        assert math.isfinite(node)
    elif isinstance(node, dict):
        for value in node.values():
            _finite(value)
    elif isinstance(node, list):
        for value in node:
            _finite(value)
