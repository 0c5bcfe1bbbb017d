"""The API server's side of the hostile-document property (tests/operator/api/test_hostile_documents.py): for
generated FineTuneJob documents — valid, almost valid, hostile — every one our validation accepts is accepted by
the real API server (the CRD's schema and CEL rules, server-side dry run) and renders a PyTorchJob the server
accepts too. Documents we refuse may still be accepted by the server (rules only Python can check, e.g. the
environment-size limit): the operator then fails them with InvalidSpec, which other tests cover.

Example count: HOSTILE_CLUSTER_EXAMPLES (default 60 in CI; thousands for a nightly run).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_operator.api.validation import InvalidInputError, validate_manifest
from finetune_operator.children.pytorchjob import render
from tests.cluster.controlplane import Cluster
from tests.cluster.operator_process import apply_crd
from tests.operator.api.hostile import documents

pytestmark = pytest.mark.cluster
EXAMPLES = int(os.environ.get("HOSTILE_CLUSTER_EXAMPLES", 60))


def server_verdict(api: client.ApiClient, namespace: str, group_version_plural: tuple[str, str, str], body: Any) -> str:
    """'accepted', or the API server's refusal (status and message)."""
    group, version, plural = group_version_plural
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            group, version, namespace, plural, body, dry_run="All"
        )
    except ApiException as error:
        return f"{error.status}: {error.body}"
    return "accepted"


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    apply_crd(cluster)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,  # the namespace is only a place for dry runs: nothing is created
    ],
)
@given(document=documents())
def test_every_spec_we_accept_is_accepted_by_the_api_server_and_so_is_its_child(
    api: client.ApiClient, namespace: str, crd: None, document: Any
) -> None:
    try:
        model = validate_manifest(document)
    except InvalidInputError:
        event("refused by us")
        return
    body = json.loads(json.dumps(document))
    body["metadata"] = {**body["metadata"], "namespace": namespace}
    job_verdict = server_verdict(api, namespace, ("finetune.dev", "v1alpha1", "finetunejobs"), body)
    assert job_verdict == "accepted", f"we accept it, the API server does not: {job_verdict}"
    child = render(model, trainer_image="example.invalid/trainer:1")
    child["metadata"]["namespace"] = namespace
    child_verdict = server_verdict(api, namespace, ("kubeflow.org", "v1", "pytorchjobs"), child)
    assert child_verdict == "accepted", f"the rendered PyTorchJob is refused: {child_verdict}"
    event("accepted by us and by the API server, child too")
