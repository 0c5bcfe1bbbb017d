"""Multi-node jobs keep what rank 0 writes for the other nodes (checkpoints, the tokenized-data cache) on a shared,
writable claim. The refusals are in the shared invalid-case table (tests/invalid_cases.py, `multi-node-*`), checked
against our validation and the real API server's CEL; here, what must stay accepted, and the message."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.api.validation import InvalidInputError, validate_manifest
from tests.invalid_cases import CASES
from tests.manifests import SHARED_OUTPUT, minimal_job


def job(nodes: int, volumes: list[dict[str, Any]], **data: Any) -> dict[str, Any]:
    manifest = minimal_job(resources={"nodes": nodes, "volumes": volumes})
    manifest["spec"]["data"].update(data)
    return manifest


@pytest.mark.parametrize(
    ("nodes", "volumes", "data"),
    [
        (1, [], {}),  # one node: rank 0's files are on the node that reads them
        (2, [SHARED_OUTPUT], {}),
        (2, [{**SHARED_OUTPUT, "mountPath": "/output"}], {"cacheDir": "/output/cache"}),  # the cache inside it
        (2, [{**SHARED_OUTPUT, "mountPath": "/output/"}], {}),
        (4, [SHARED_OUTPUT, {"name": "cache", "claimName": "cache", "mountPath": "/cache"}], {"cacheDir": "/cache/x"}),
        (2, [{"name": "m", "claimName": "models", "mountPath": "/models", "readOnly": True}, SHARED_OUTPUT], {}),
    ],
)
def test_shared_writable_claims_at_or_above_the_output_are_accepted(
    nodes: int, volumes: list[dict[str, Any]], data: dict[str, Any]
) -> None:
    assert validate_manifest(job(nodes, volumes, **data)).spec.resources.nodes == nodes


def test_the_refusal_says_why_and_what_to_do() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_manifest(job(2, []))
    (problem,) = caught.value.errors
    assert problem.path == "spec.resources.volumes"
    for words in ("rank 0 writes", "other nodes read", "ReadWriteMany", "resources.volumes"):
        assert words in problem.rule


def test_the_shared_table_holds_the_refusals() -> None:
    ids = {case.id for case in CASES if case.id.startswith("multi-node")}
    assert len(ids) == 4
