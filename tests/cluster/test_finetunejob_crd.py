"""Our generated CRD judged by the real API server: structural schema, defaults, OpenAPI and CEL rules.

The invalid cases are the shared table in tests/invalid_cases.py (the unit tests hold our own validation
to the same table). The server phrases OpenAPI violations its own way, so each case's expected text is
translated (`server_wording`); CEL violations must carry the CRD's own message verbatim.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import Cluster
from tests.cluster.waiting import wait_for
from tests.invalid_cases import CASES, Case
from tests.manifests import JOB_EXAMPLES, REPO_ROOT, minimal_job

pytestmark = pytest.mark.cluster

CRD_FILE = REPO_ROOT / "crds" / "finetunejob.yaml"
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
SERVER_CASES = [case for case in CASES if case.server]
# Paper defaults named in ARCHITECTURE.md (binding): the API server itself must fill them in.
PAPER_DEFAULTS = {
    ("training", "effectiveBatchSize"): 3840,
    ("training", "lrScheduler"): "constant",
    ("training", "warmupSteps"): 0,
    ("training", "adamBetas"): [0.9, 0.95],
    ("training", "adamEpsilon"): 1e-8,
    ("training", "weightDecay"): 0,
    ("training", "gradientClipping"): 1.0,
    ("training", "strategy"): "stacked",
}


def _crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return crd


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _cel_messages(node: dict[str, Any]) -> Iterator[str]:
    for rule in node.get("x-kubernetes-validations", []):
        yield rule["message"]
    for child in node.get("properties", {}).values():
        yield from _cel_messages(child)
    if isinstance(node.get("items"), dict):
        yield from _cel_messages(node["items"])


@pytest.fixture(scope="module")
def crd_applied(cluster: Cluster) -> Cluster:
    """Server-side apply, as a user or Helm would; the CRD must become Established."""
    cluster.kubectl("apply", "--server-side", "--field-manager=finetune-tests", "-f", str(CRD_FILE))
    cluster.wait_condition(f"crd/{PLURAL}.{GROUP}", "Established")
    # The aggregated OpenAPI (what `kubectl explain` reads) is republished a moment after Established.
    wait_for(
        lambda: cluster.kubectl("explain", "finetunejob", check=False).returncode == 0, 60, "OpenAPI for FineTuneJob"
    )
    return cluster


def _create(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(manifest)
    body["metadata"]["namespace"] = namespace
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def test_crd_is_established_with_our_names(crd_applied: Cluster) -> None:
    names = crd_applied.kubectl("api-resources", "--api-group", GROUP, "-o", "name").stdout.split()
    assert f"{PLURAL}.{GROUP}" in names
    assert set(names) <= {f"{PLURAL}.{GROUP}", f"finetunesweeps.{GROUP}"}  # the sweep CRD when a test applied it
    short = crd_applied.kubectl("get", "crd", f"{PLURAL}.{GROUP}", "-o", "jsonpath={.spec.names.shortNames}")
    assert "ftj" in short.stdout


def test_kubectl_explain_shows_our_descriptions(crd_applied: Cluster) -> None:
    spec = _schema()["properties"]["spec"]
    explained = crd_applied.kubectl("explain", "finetunejob.spec").stdout
    flat = " ".join(explained.split())
    assert " ".join(spec["description"].split()) in flat
    for field, node in spec["properties"].items():
        assert field in explained
        first_line = " ".join(node.get("description", "").split())[:60]
        assert first_line in flat, field
    training = crd_applied.kubectl("explain", "finetunejob.spec.training.effectiveBatchSize").stdout
    assert "integer" in training


def _assert_defaults(schema: dict[str, Any], sent: Any, got: Any, path: str) -> None:
    """Every schema default whose parent exists must be present in `got` when `sent` left it out."""
    for name, child in schema.get("properties", {}).items():
        here = f"{path}.{name}"
        was_sent = isinstance(sent, dict) and name in sent
        if "default" in child and not was_sent:
            assert name in got, f"{here} not defaulted"
            if not isinstance(child["default"], dict):
                assert got[name] == child["default"], here
        if isinstance(got, dict) and isinstance(got.get(name), dict):
            _assert_defaults(child, sent.get(name) if was_sent else None, got[name], here)


def test_valid_job_is_accepted_with_server_side_defaults(
    crd_applied: Cluster, api: client.ApiClient, namespace: str
) -> None:
    sent = minimal_job("defaults")
    created = _create(api, namespace, sent)
    spec = created["spec"]
    _assert_defaults(_schema()["properties"]["spec"], sent["spec"], spec, "spec")
    for (section, field), value in PAPER_DEFAULTS.items():
        assert spec[section][field] == pytest.approx(value), f"spec.{section}.{field}"
    assert spec["model"] == {**sent["spec"]["model"], "dtype": "bfloat16", "attnImplementation": "sdpa"}


@pytest.mark.parametrize("example", JOB_EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(crd_applied: Cluster, api: client.ApiClient, namespace: str, example: Any) -> None:
    manifest = yaml.safe_load(example.read_text())
    created = _create(api, namespace, manifest)
    assert created["metadata"]["uid"]


def server_wording(case: Case) -> str:
    """What the API server says for the rule `case.message` names in pydantic's words."""
    if case.server_message:
        return case.server_message
    enum = re.fullmatch(r"((?:'[^']+', )*'[^']+') or '([^']+)'", case.message)
    if enum:
        values = [*re.findall(r"'([^']+)'", enum.group(1)), enum.group(2)]
        return "supported values: " + ", ".join(f'"{value}"' for value in values)
    kind = re.fullmatch(r"valid (number|integer|boolean|string)", case.message)
    if kind:
        return f"must be of type {kind.group(1)}"
    if case.message == "match pattern":
        return "should match"
    return case.message


def _causes(err: ApiException) -> list[dict[str, str]]:
    status = yaml.safe_load(err.body)
    causes: list[dict[str, str]] = status.get("details", {}).get("causes", [])
    return causes


def _cel_messages_near(path: str) -> list[str]:
    """The CEL messages of the schema node at `path` and of its parent (a rule on an object names its member
    with fieldPath), e.g. spec.training.warmupSteps -> the rules of training and of warmupSteps."""
    nodes = [_schema()]
    for part in re.sub(r"\[\d+\]", ".[]", path).split("."):
        node = nodes[-1]
        nodes.append(node.get("items", {}) if part == "[]" else node.get("properties", {}).get(part, {}))
    return [rule["message"] for node in nodes[-2:] for rule in node.get("x-kubernetes-validations", [])]


def test_enough_invalid_cases_reach_the_server() -> None:
    assert len(SERVER_CASES) >= 10
    cel = set(_cel_messages(_schema()))
    assert sum(any(case.message in message for message in cel) for case in SERVER_CASES) >= 5


@pytest.mark.parametrize("case", SERVER_CASES, ids=lambda case: case.id)
def test_api_server_rejects_invalid_job(
    crd_applied: Cluster, api: client.ApiClient, namespace: str, case: Case
) -> None:
    with pytest.raises(ApiException) as err:
        _create(api, namespace, case.manifest)
    assert err.value.status == 422, err.value.body
    causes = _causes(err.value)
    expected = server_wording(case)
    # The same field path as our validation reports (the CLI and the operator), not only a parent of it.
    matching = [c for c in causes if c.get("field") == case.path and expected in c.get("message", "")]
    assert matching, f"no cause at {case.path} saying {expected!r}: {causes}"
    cel = [message for message in _cel_messages_near(case.path) if case.message in message]
    if cel:
        assert any(message in cause["message"] for cause in matching for message in cel), causes
