"""Invariants the README promises, held on the real control plane against what broke them (issue 17).

- exactly one child per FineTuneJob, for every spec change, mutable or not, over names of every length;
- a child the API server refuses ends the job Failed with the server's words, once, without a retry loop;
- a child whose pods cannot be created says so on the FineTuneJob;
- a FineTuneJob deleted and re-created under the same name waits for its predecessor's child to go, and a
  name held by someone else's PyTorchJob is reported, never adopted.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_operator.children.pytorchjob import child_name
from tests.cluster.controlplane import Cluster
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.pytorchjobs import create_pytorchjob, get_pytorchjob, handwritten_pytorchjob
from tests.cluster.test_operator import (
    GROUP,
    PLURAL,
    QUEUE_LABEL,
    VERSION,
    children,
    events_of,
    patch_spec,
    pytorchjob_gone,
    reasons,
    small_job,
)
from tests.cluster.trainer_jobs import conditions_of, create_ftj, get_ftj, zero_pod_quota
from tests.cluster.waiting import stays, wait_for
from tests.manifests import SHARED_OUTPUT

pytestmark = pytest.mark.cluster

NAME_LENGTHS = [5, 51, 52, 54, 63, 64, 120, 253]
"""Around every boundary: the child-name budget (51), the old nodes-dependent budgets (54 for one node, 52 for
twelve), a DNS label (63), and the longest FineTuneJob name (253, a dotted subdomain)."""


def job_name(length: int) -> str:
    """A valid FineTuneJob name (DNS-1123 subdomain) of exactly `length` characters: one label up to 63, dotted
    labels beyond."""
    stem = f"j{uuid.uuid4().hex[:6]}"
    name = (stem + "a" * 63)[:length] if length <= 63 else ".".join([stem + "a" * 43] * 6)[:length]
    return name[:-1] + "z" if name.endswith(".") else name


def child_of(api: client.ApiClient, namespace: str, name: str) -> str | None:
    return (get_ftj(api, namespace, name).get("status") or {}).get("pytorchJobName")


def condition(api: client.ApiClient, namespace: str, name: str, kind: str) -> dict[str, Any]:
    return conditions_of(get_ftj(api, namespace, name)).get(kind) or {}


def wait_condition(
    operator: OperatorProcess,
    api: client.ApiClient,
    namespace: str,
    name: str,
    kind: str,
    timeout: float = 30,
    **want: str,
) -> dict[str, Any]:
    """Wait until the job's condition `kind` has every field in `want` (e.g. status="True"); return it."""

    def matching() -> dict[str, Any] | None:
        found = condition(api, namespace, name, kind)
        return found if found and all(found.get(key) == value for key, value in want.items()) else None

    described = ", ".join(f"{key}={value}" for key, value in want.items())
    result: dict[str, Any] = operator.wait_for(matching, timeout, f"{name}: condition {kind} with {described}")
    return result


# -- 1. exactly one child ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", NAME_LENGTHS)
def test_exactly_one_child_through_immutable_and_mutable_changes(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str, length: int
) -> None:
    name = job_name(length)
    assert len(name) == length
    job = small_job(name, nodes=1)
    job["spec"]["resources"]["volumes"] = [SHARED_OUTPUT]  # so that the node-count edit below passes the CRD
    create_ftj(api, namespace, job)
    child = operator_process.wait_for(lambda: child_of(api, namespace, name), 30, f"{name}'s child recorded")
    assert child == child_name(name)
    first = get_pytorchjob(api, namespace, child)["metadata"]["uid"]

    def one_child() -> bool:
        found = children(api, namespace)
        return [job["metadata"]["uid"] for job in found] == [first] and child_of(api, namespace, name) == child

    # Immutable: the node count (the child's name once depended on it).
    patch_spec(api, namespace, name, {"resources": {"nodes": 12}})
    rejected = wait_condition(operator_process, api, namespace, name, "SpecChangeRejected", 30, status="True")
    assert rejected["reason"] == "ImmutableFieldChanged"
    assert "spec.resources.nodes" in rejected["message"], rejected
    assert one_child(), children(api, namespace)

    # Mutable: the Kueue queue; then the node count reverted.
    patch_spec(api, namespace, name, {"queueName": "team-a", "resources": {"nodes": 1}})
    operator_process.wait_for(
        lambda: get_pytorchjob(api, namespace, child)["metadata"]["labels"].get(QUEUE_LABEL) == "team-a",
        30,
        "the queue label on the one child",
    )
    wait_condition(operator_process, api, namespace, name, "SpecChangeRejected", 30, reason="SpecApplied")
    stays(one_child, 2, "exactly one child, the first one, recorded")


# -- 2. a child the API server refuses --------------------------------------------------------------------------


@contextlib.contextmanager
def pytorchjobs_denied(cluster: Cluster, api: client.ApiClient, namespace: str, message: str) -> Any:
    """A ValidatingAdmissionPolicy that refuses every PyTorchJob create in `namespace` (a real 4xx refusal)."""
    name = f"deny-{namespace}"[:63]
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        stdin=f"""
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [kubeflow.org], apiVersions: ["*"], operations: [CREATE], resources: [pytorchjobs]}}
  validations:
  - {{expression: "false", message: "{message}"}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {namespace}}}}}
""",
    )

    def refused() -> bool:
        probe = handwritten_pytorchjob("probe", workers=0, gpus=1)
        try:
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "kubeflow.org", "v1", namespace, "pytorchjobs", {**probe, "metadata": {"name": "probe"}}, dry_run="All"
            )
        except ApiException as error:
            return message in (error.body or "")
        return False

    wait_for(refused, 30, "the admission policy in force")
    try:
        yield
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, check=False)


def test_child_refused_by_the_api_server_fails_the_job_once(
    operator_process: OperatorProcess, cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    message = "PyTorchJobs are not allowed here (test policy)"
    with pytorchjobs_denied(cluster, api, namespace, message):
        name = "refused"
        create_ftj(api, namespace, small_job(name))

        def failed() -> dict[str, Any] | None:
            ftj = get_ftj(api, namespace, name)
            return ftj if (ftj.get("status") or {}).get("phase") == "Failed" else None

        ftj = operator_process.wait_for(failed, 30, "phase Failed")
        invalid = conditions_of(ftj)["InvalidSpec"]
        assert (invalid["status"], invalid["reason"]) == ("True", "ChildRejected"), invalid
        assert message in invalid["message"], invalid
        assert child_name(name) in invalid["message"], invalid
        operator_process.wait_for(
            lambda: reasons(events_of(api, namespace, name))["ChildRejected"] == 1, 30, "one ChildRejected event"
        )
        assert not children(api, namespace)

        def snapshot() -> tuple[str, int]:
            job = get_ftj(api, namespace, name)
            return job["metadata"]["resourceVersion"], sum(reasons(events_of(api, namespace, name)).values())

        settled = snapshot()
        stays(lambda: snapshot() == settled, 5, "no retries after Failed (same object, no new events)")


# -- 3. a child whose pods cannot be created --------------------------------------------------------------------


def test_child_that_cannot_create_pods_says_so(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    zero_pod_quota(api, namespace)
    name = "podless"
    create_ftj(api, namespace, small_job(name))
    found = wait_condition(operator_process, api, namespace, name, "PodsNotCreated", 60, status="True")
    assert found["reason"] == "FailedCreatePod"
    assert "exceeded quota" in found["message"], found
    assert (get_ftj(api, namespace, name).get("status") or {}).get("phase") == "Pending"
    operator_process.wait_for(
        lambda: reasons(events_of(api, namespace, name))["FailedCreatePod"] == 1, 30, "one FailedCreatePod event"
    )


# -- 4. same name, new uid; a name held by someone else ----------------------------------------------------------


def test_recreated_job_waits_for_its_predecessors_child(
    operator_process: OperatorProcess,
    api: client.ApiClient,
    namespace: str,
    pytorchjob_garbage_collection: None,
) -> None:
    name = "phoenix"
    custom = client.CustomObjectsApi(api)
    old = create_ftj(api, namespace, small_job(name))
    child = operator_process.wait_for(lambda: child_of(api, namespace, name), 30, "the first child")
    # A finalizer holds the old child in deletion, as a slow garbage collection would.
    custom.patch_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", child, {"metadata": {"finalizers": ["test.finetune.dev/hold"]}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_for(
        lambda: get_pytorchjob(api, namespace, child)["metadata"].get("deletionTimestamp"), 60, "the old child in GC"
    )
    new = create_ftj(api, namespace, small_job(name))
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    waiting = wait_condition(
        operator_process, api, namespace, name, "ChildConflict", 30, reason="PreviousChildTerminating"
    )
    assert waiting["status"] == "True"

    custom.patch_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", child, {"metadata": {"finalizers": None}}
    )

    def owned_by_new() -> bool:
        try:
            refs = get_pytorchjob(api, namespace, child)["metadata"].get("ownerReferences") or []
        except ApiException:
            return False
        return [ref["uid"] for ref in refs] == [new["metadata"]["uid"]]

    operator_process.wait_for(owned_by_new, 30, "a new child owned by the new FineTuneJob")
    wait_condition(operator_process, api, namespace, name, "ChildConflict", 30, status="False")
    assert child_of(api, namespace, name) == child
    stays(lambda: len(children(api, namespace)) == 1, 2, "exactly one child")


def test_name_held_by_a_foreign_pytorchjob_is_reported_not_adopted(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    name = "squatted"
    foreign = create_pytorchjob(api, namespace, handwritten_pytorchjob(child_name(name), workers=0, gpus=1))
    create_ftj(api, namespace, small_job(name))
    reported = wait_condition(operator_process, api, namespace, name, "ChildConflict", 30, status="True")
    assert reported["reason"] == "ChildNameTaken"
    assert child_name(name) in reported["message"]
    assert (get_ftj(api, namespace, name).get("status") or {}).get("phase") == "Pending"
    operator_process.wait_for(
        lambda: reasons(events_of(api, namespace, name))["ChildNameTaken"] == 1, 30, "one ChildNameTaken event"
    )
    untouched = get_pytorchjob(api, namespace, child_name(name))
    assert untouched["metadata"]["uid"] == foreign["metadata"]["uid"]
    assert not untouched["metadata"].get("ownerReferences"), "the foreign PyTorchJob was adopted"

    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", child_name(name)
    )
    wait_for(lambda: pytorchjob_gone(api, namespace, child_name(name)), 30, "the foreign PyTorchJob gone")
    wait_condition(operator_process, api, namespace, name, "ChildConflict", 30, status="False")
    assert [job["metadata"]["ownerReferences"][0]["name"] for job in children(api, namespace)] == [name]
