"""render: the PyTorchJob contract (replicas, GPUs, names, env, scheduling), checked property by property."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_contract import names
from finetune_operator.api import MAX_NODES, FineTuneJob
from finetune_operator.children.pytorchjob import (
    CONTAINER_NAME,
    MAX_DNS_LABEL,
    child_name,
    label_value,
    render,
    render_pytorchjob,
)
from tests.manifests import minimal_job

DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def pods(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kind: spec["template"]["spec"] for kind, spec in job["spec"]["pytorchReplicaSpecs"].items()}


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in pod["containers"][0]["env"]}


@pytest.mark.parametrize(("nodes", "workers"), [(1, None), (2, 1), (4, 3), (64, 63)])
def test_master_plus_nodes_minus_one_workers(nodes: int, workers: int | None) -> None:
    specs = render_pytorchjob(minimal_job(resources={"nodes": nodes}))["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1
    assert specs.get("Worker", {}).get("replicas") == workers


@pytest.mark.parametrize("gpus", [1, 4, 8])
def test_gpu_limits_and_nproc_per_node(gpus: int) -> None:
    job = render_pytorchjob(minimal_job(resources={"nodes": 2, "gpusPerNode": gpus}))
    assert job["spec"]["nprocPerNode"] == str(gpus)
    for pod in pods(job).values():
        (container,) = pod["containers"]
        assert container["name"] == CONTAINER_NAME
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)


def test_cpu_job_has_no_gpu_and_one_process() -> None:
    job = render_pytorchjob(minimal_job(resources={"gpusPerNode": 0, "cpu": 2, "memory": "4Gi"}))
    resources = pods(job)["Master"]["containers"][0]["resources"]
    assert resources == {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "2", "memory": "4Gi"}}
    assert job["spec"]["nprocPerNode"] == "1"


def test_custom_gpu_resource_name() -> None:
    job = render_pytorchjob(minimal_job(resources={"gpusPerNode": 1, "gpuResourceName": "nvidia.com/mig-3g.40gb"}))
    assert pods(job)["Master"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-3g.40gb": "1"}


def test_shared_memory_is_a_memory_backed_empty_dir() -> None:
    pod = pods(render_pytorchjob(minimal_job(resources={"sharedMemorySize": "32Gi"})))["Master"]
    shm = next(volume for volume in pod["volumes"] if volume["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_identity_env_and_metrics_port() -> None:
    job = minimal_job(metrics={"port": 9100})
    job["metadata"].update(name="sft-a", namespace="team-a")
    rendered = render_pytorchjob(job)
    pod = pods(rendered)["Master"]
    env = env_of(pod)
    assert env[names.ENV_JOB_NAME] == "sft-a"
    assert env[names.ENV_JOB_NAMESPACE] == "team-a"
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in pod["containers"][0]["ports"]
    assert rendered["metadata"]["namespace"] == "team-a"


def test_user_env_cannot_shadow_the_contract() -> None:
    pod = pods(render_pytorchjob(minimal_job(resources={"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]})))["Master"]
    names = [var["name"] for var in pod["containers"][0]["env"]]
    assert names[0] == "HF_HUB_OFFLINE"
    assert names[-1] == "FINETUNE_RECIPE"


def test_suspend_and_queue_are_propagated() -> None:
    job = render_pytorchjob(minimal_job(suspend=True, queueName="gpu-queue"))
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert job["metadata"]["labels"][names.QUEUE_LABEL] == "gpu-queue"
    assert names.QUEUE_LABEL not in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]


def test_finished_jobs_free_their_gpus() -> None:
    assert render_pytorchjob(minimal_job())["spec"]["runPolicy"]["cleanPodPolicy"] in ("Running", "All")


def test_render_is_deterministic() -> None:
    assert render_pytorchjob(minimal_job()) == render_pytorchjob(minimal_job())


def test_image_comes_from_spec_or_operator_default() -> None:
    default = pods(render_pytorchjob(minimal_job(), trainer_image="registry.local/trainer:1"))["Master"]
    own = pods(render_pytorchjob(minimal_job(resources={"image": "mine:2"}), trainer_image="registry.local/trainer:1"))
    assert default["containers"][0]["image"] == "registry.local/trainer:1"
    assert own["Master"]["containers"][0]["image"] == "mine:2"


_LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
JOB_NAMES = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=6).map(".".join).filter(lambda name: len(name) <= 253),
    st.integers(1, 253).map(lambda length: "a" * length),
    st.sampled_from(["b" * 60, "x." * 100 + "y", "7b-model-sft", "granite.7b", "a" * 51, "a" * 52, "a" * 54]),
)
"""Every kind of valid FineTuneJob name (DNS-1123 subdomains up to 253 characters), every length."""


@settings(max_examples=300, deadline=None)
@given(name=JOB_NAMES, nodes=st.integers(1, MAX_NODES), other_nodes=st.integers(1, MAX_NODES))
def test_child_name_is_the_jobs_identity_only_and_every_pod_name_is_valid(
    name: str, nodes: int, other_nodes: int
) -> None:
    """The rendered child's name never depends on `nodes` (a long name once got a second child when nodes changed),
    and every pod name the training-operator derives from it, at any node count, is a DNS-1035 label."""
    rendered = render_pytorchjob(minimal_job(name=name, resources={"nodes": nodes}))
    assert rendered["metadata"]["name"] == child_name(name)
    assert render_pytorchjob(minimal_job(name=name, resources={"nodes": other_nodes}))["metadata"]["name"] == (
        child_name(name)
    )
    child = child_name(name)
    for pod_name in (f"{child}-master-0", f"{child}-worker-{MAX_NODES - 2}"):
        assert len(pod_name) <= MAX_DNS_LABEL, pod_name
        assert re.fullmatch(DNS_1035, pod_name), pod_name


def test_child_name_budget_is_the_longest_worker_suffix() -> None:
    """Names up to the budget are kept as they are; one character more gets the hashed form."""
    budget = MAX_DNS_LABEL - len(f"-worker-{MAX_NODES - 2}")
    assert child_name("a" * budget) == "a" * budget
    longer = child_name("a" * (budget + 1))
    assert longer != "a" * (budget + 1)
    assert len(longer) <= budget


def test_recorded_name_is_kept_by_render() -> None:
    """A child recorded under an earlier naming rule keeps its name: render takes the record over a re-render."""
    assert render(FineTuneJob.model_validate(minimal_job(name="x" * 54)), name="recorded")["metadata"]["name"] == (
        "recorded"
    )


def test_short_valid_names_are_kept() -> None:
    assert child_name("llama-sft") == "llama-sft"


def test_long_names_with_a_common_prefix_get_distinct_children() -> None:
    assert child_name("a" * 80 + "-one") != child_name("a" * 80 + "-two")


def test_label_values_fit_63_characters() -> None:
    job = render_pytorchjob(minimal_job(name="n" * 200))
    for value in job["metadata"]["labels"].values():
        assert len(value) <= MAX_DNS_LABEL
    assert job["metadata"]["labels"][names.JOB_LABEL] == label_value("n" * 200)
    assert env_of(pods(job)["Master"])[names.ENV_JOB_NAME] == "n" * 200


def test_scheduling_fields_and_pvcs() -> None:
    job = minimal_job(
        resources={
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "high",
            "serviceAccountName": "trainer",
            "imagePullSecrets": ["regcred"],
            "volumes": [
                {"name": "data", "claimName": "pvc-data", "mountPath": "/data", "readOnly": True, "subPath": "v1"}
            ],
        }
    )
    pod = pods(render_pytorchjob(job))["Master"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "high"
    assert pod["serviceAccountName"] == "trainer"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "pvc-data", "readOnly": True}} in pod["volumes"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True, "subPath": "v1"} in pod["containers"][0][
        "volumeMounts"
    ]


def test_the_recipe_in_the_pod_is_the_specs_recipe() -> None:
    manifest = minimal_job(training={"learningRate": 1e-5, "maxSteps": 7})
    env = env_of(pods(render_pytorchjob(manifest))["Master"])
    from finetune_trainer.config import parse_recipe

    assert parse_recipe(env["FINETUNE_RECIPE"]) == FineTuneJob.model_validate(manifest).spec.recipe()


# -- security ---------------------------------------------------------------------------------------------------
SECRET_REF = {"secretKeyRef": {"name": "hf-credentials", "key": "token"}}


@pytest.mark.parametrize("nodes", [1, 3])
def test_pods_are_restricted_by_default(nodes: int) -> None:
    """Pod Security Admission `restricted`, checked field by field on every replica's pod and container."""
    for pod in pods(render_pytorchjob(minimal_job(resources={"nodes": nodes}))).values():
        assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsNonRoot"] is True
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert all("hostPath" not in volume for volume in pod["volumes"])


def test_security_ids_and_the_unconfined_override() -> None:
    ids = {"runAsUser": 2000, "runAsGroup": 3000, "fsGroup": 4000}
    pod = pods(render_pytorchjob(minimal_job(resources={"security": ids})))["Master"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}, **ids}
    pod = pods(render_pytorchjob(minimal_job(resources={"security": {"profile": "unconfined"}})))["Master"]
    assert "securityContext" not in pod
    assert "securityContext" not in pod["containers"][0]


def test_a_secret_reference_is_rendered_as_a_reference_and_never_resolved() -> None:
    job = minimal_job(resources={"env": [{"name": "HF_TOKEN", "valueFrom": SECRET_REF}]})
    rendered = render_pytorchjob(job)
    container = pods(rendered)["Master"]["containers"][0]
    reference = {"secretKeyRef": {**SECRET_REF["secretKeyRef"], "optional": False}}
    assert {"name": "HF_TOKEN", "valueFrom": reference} in container["env"]
    recipe = next(var["value"] for var in container["env"] if var["name"] == names.ENV_RECIPE)
    assert "HF_TOKEN" not in recipe
    assert "hf-credentials" not in recipe  # the recipe carries what the trainer needs, not the pod's wiring
