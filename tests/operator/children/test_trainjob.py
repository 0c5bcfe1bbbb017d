"""render (TrainJob backend): the same contract as the PyTorchJob's, carried by Kubeflow Trainer v2.3 fields."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_contract import names
from finetune_operator.api import MAX_NODES
from finetune_operator.children.pytorchjob import MAX_DNS_LABEL, render_pytorchjob
from finetune_operator.children.trainjob import (
    RUNTIME_NAME,
    UnsupportedFieldError,
    render_trainjob,
    runtime_manifest,
    trainjob_name,
)
from tests.manifests import minimal_job
from tests.operator.children.test_pytorchjob import JOB_NAMES

DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def pod_patch(job: dict[str, Any]) -> dict[str, Any]:
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == names.TRAINJOB_CONTAINER
    template: dict[str, Any] = replicated["template"]["spec"]["template"]
    return template


def master_pod(pytorchjob: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    return pod


@pytest.mark.parametrize(("nodes", "gpus", "procs"), [(1, 0, 1), (1, 8, 8), (4, 8, 8), (MAX_NODES, 1, 1)])
def test_nodes_processes_and_gpus_per_node(nodes: int, gpus: int, procs: int) -> None:
    trainer = render_trainjob(minimal_job(resources={"nodes": nodes, "gpusPerNode": gpus}))["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, procs)
    assert trainer["resourcesPerNode"]["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)


def test_shared_parts_are_the_pytorchjobs_exactly() -> None:
    """Env (recipe, identity), command, resources, volumes, mounts, scheduling, security: one source for both."""
    manifest = minimal_job(
        resources={
            "gpusPerNode": 8,
            "nodeSelector": {"pool": "h100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "serviceAccountName": "trainer",
            "env": [{"name": "HF_HOME", "value": "/cache"}],
        },
        queueName="team-a",
    )
    trainjob, pytorchjob = render_trainjob(manifest), render_pytorchjob(manifest)
    ours, theirs = pod_patch(trainjob), master_pod(pytorchjob)
    container = theirs["spec"]["containers"][0]
    trainer = trainjob["spec"]["trainer"]
    assert trainer["env"] == container["env"]
    assert (trainer["image"], trainer["command"]) == (container["image"], container["command"])
    assert trainer["resourcesPerNode"] == container["resources"]
    assert ours["metadata"] == theirs["metadata"]
    assert ours["spec"]["containers"][0]["volumeMounts"] == container["volumeMounts"]
    assert ours["spec"]["containers"][0]["securityContext"] == container["securityContext"]
    for key in ("volumes", "nodeSelector", "tolerations", "serviceAccountName", "securityContext"):
        assert ours["spec"][key] == theirs["spec"][key], key
    assert trainjob["metadata"]["labels"] == pytorchjob["metadata"]["labels"]
    assert trainjob["metadata"]["labels"][names.QUEUE_LABEL] == "team-a"
    assert names.QUEUE_LABEL not in ours["metadata"]["labels"]  # Kueue reads it from the TrainJob, not the pods


def test_suspend_and_runtime_reference() -> None:
    spec = render_trainjob(minimal_job(suspend=True))["spec"]
    assert spec["suspend"] is True
    assert spec["runtimeRef"] == {
        "name": RUNTIME_NAME,
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    assert render_trainjob(minimal_job(), runtime="other")["spec"]["runtimeRef"]["name"] == "other"


def test_no_field_removed_in_trainer_v2_2_or_v2_3() -> None:
    spec = render_trainjob(minimal_job())["spec"]
    assert "podTemplateOverrides" not in spec  # removed in v2.3 for runtimePatches
    assert "podSpecOverrides" not in spec
    assert "managedBy" not in spec  # left to the default (the Trainer controller); Kueue's integration needs that


def test_a_priority_class_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedFieldError) as raised:
        render_trainjob(minimal_job(resources={"priorityClassName": "high"}))
    message = str(raised.value)
    assert message.startswith("spec.resources.priorityClassName: 'high' cannot be set on a TrainJob")
    assert "pytorchjob backend" in message


@settings(max_examples=200, deadline=None)
@given(name=JOB_NAMES, nodes=st.integers(1, MAX_NODES))
def test_longest_pod_name_jobset_can_derive_is_a_dns_label(name: str, nodes: int) -> None:
    """JobSet's webhook refuses a JobSet whose longest pod name (<js>-node-0-<index>-<5 random>) passes 63."""
    child = trainjob_name(name)
    assert render_trainjob(minimal_job(name=name, resources={"nodes": nodes}))["metadata"]["name"] == child
    assert re.match(DNS_1035, child), child
    longest_pod = f"{child}-{names.TRAINJOB_CONTAINER}-0-{MAX_NODES - 1}-abcde"
    assert len(longest_pod) <= MAX_DNS_LABEL
    assert trainjob_name(name) == child  # a function of the name only


def test_runtime_runs_the_trainer_once_per_failure_policy() -> None:
    runtime = runtime_manifest(trainer_image="example/trainer:1")
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    template = runtime["spec"]["template"]["spec"]
    assert template["failurePolicy"] == {"maxRestarts": 0}
    (replicated,) = template["replicatedJobs"]
    job = replicated["template"]
    assert job["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert [(c["name"], c["image"]) for c in pod["containers"]] == [("node", "example/trainer:1")]
