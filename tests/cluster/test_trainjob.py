"""TrainJobs (Kubeflow Trainer v2.3) rendered from FineTuneJobs, on the real Trainer and JobSet controllers: their
webhooks judge the manifests, JobSet makes the Jobs, kube-controller-manager's Job controller the pods, the
scheduler binds them to kwok GPU nodes. The runtime is ours (`runtime_manifest`), applied as a user would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_contract import names
from finetune_operator.children.trainjob import UnsupportedFieldError, render_trainjob
from tests.cluster.controlplane import GPU_RESOURCE, Cluster
from tests.cluster.operator_process import ConfiguredOperator as Operator
from tests.cluster.operator_process import apply_crd, stop_cleanly
from tests.cluster.pytorchjobs import end_pod
from tests.cluster.storage import shared_output_claim
from tests.cluster.test_operator import GROUP, PLURAL, VERSION, patch_spec, reasons, small_job, wait_events
from tests.cluster.trainer_jobs import conditions_of, create_ftj, get_ftj, zero_pod_quota
from tests.cluster.trainer_v2 import TRAINER_IMAGE, TrainerV2
from tests.cluster.waiting import stays, wait_for
from tests.manifests import JOB_EXAMPLES, minimal_job

pytestmark = pytest.mark.cluster

CONTAINER = names.TRAINJOB_CONTAINER


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def create_trainjob(api: client.ApiClient, namespace: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    created: dict[str, Any] = custom(api).create_namespaced_custom_object(
        names.TRAINJOB_GROUP, names.TRAINJOB_VERSION, namespace, names.TRAINJOB_PLURAL, body, **kwargs
    )
    return created


def get_trainjob(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = custom(api).get_namespaced_custom_object(
        names.TRAINJOB_GROUP, names.TRAINJOB_VERSION, namespace, names.TRAINJOB_PLURAL, name
    )
    return found


def pods_of(api: client.ApiClient, namespace: str, name: str) -> list[client.V1Pod]:
    selector = f"{names.JOBSET_NAME_LABEL}={name}"
    return sorted(
        client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items,
        key=lambda pod: pod.metadata.name,
    )


def running_pods(api: client.ApiClient, namespace: str, name: str, count: int) -> list[client.V1Pod]:
    def running() -> list[client.V1Pod]:
        pods = [pod for pod in pods_of(api, namespace, name) if pod.status.phase == "Running"]
        return pods if len(pods) == count else []

    return wait_for(running, 90, f"{count} Running pods of TrainJob {name}")


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found.get("type") == kind and found.get("status") == "True":
            return dict(found)
    return None


def env_of(pod: client.V1Pod) -> dict[str, Any]:
    container = next(c for c in pod.spec.containers if c.name == CONTAINER)
    return {var.name: var.value if var.value is not None else var.value_from for var in container.env or []}


def finetunejob(namespace: str, name: str, nodes: int, gpus: int, **spec: Any) -> dict[str, Any]:
    job = minimal_job(name, resources={"nodes": nodes, "gpusPerNode": gpus, "cpu": 8, "memory": "64Gi"}, **spec)
    job["metadata"]["namespace"] = namespace
    return job


@pytest.mark.parametrize("example", JOB_EXAMPLES, ids=lambda path: path.name)
def test_every_example_renders_to_a_trainjob_the_webhooks_accept(
    api: client.ApiClient, namespace: str, trainer_v2: TrainerV2, example: Path
) -> None:
    """Server-side dry run through Trainer's and the CRD's validation; what TrainJob cannot carry is refused by name."""
    ftj = yaml.safe_load(example.read_text())
    ftj["metadata"]["namespace"] = namespace
    if (ftj["spec"].get("resources") or {}).get("priorityClassName"):
        with pytest.raises(UnsupportedFieldError, match=r"^spec\.resources\.priorityClassName: "):
            render_trainjob(ftj, trainer_image=TRAINER_IMAGE)
        return
    accepted = create_trainjob(api, namespace, render_trainjob(ftj, trainer_image=TRAINER_IMAGE), dry_run="All")
    assert accepted["spec"]["trainer"]["numNodes"] == ftj["spec"].get("resources", {}).get("nodes", 1)


@pytest.mark.parametrize(("nodes", "gpus"), [(1, 8), (3, 4)])
def test_rendered_trainjob_runs_on_gpu_nodes_with_the_recipe_and_torchrun_env(
    api: client.ApiClient, namespace: str, trainer_v2: TrainerV2, nodes: int, gpus: int
) -> None:
    ftj = finetunejob(namespace, "rendered", nodes, gpus)
    if nodes > 1:
        shared_output_claim(api, namespace)
    body = render_trainjob(ftj, trainer_image=TRAINER_IMAGE)
    name = create_trainjob(api, namespace, body)["metadata"]["name"]
    pods = running_pods(api, namespace, name, nodes)
    ranks = set()
    for pod in pods:
        container = next(c for c in pod.spec.containers if c.name == CONTAINER)
        assert container.resources.limits[GPU_RESOURCE] == str(gpus)
        assert container.image == TRAINER_IMAGE
        assert container.command == body["spec"]["trainer"]["command"]
        assert container.security_context.allow_privilege_escalation is False
        assert pod.spec.restart_policy == "Never"
        env = env_of(pod)
        assert env["PET_NNODES"] == str(nodes)
        assert env["PET_NPROC_PER_NODE"] == str(gpus)
        assert env["PET_MASTER_ADDR"] == f"{name}-node-0-0.{name}"
        assert env[names.ENV_JOB_NAME] == "rendered"
        assert '"learningRate"' in env[names.ENV_RECIPE]
        assert pod.metadata.labels[names.JOB_LABEL] == "rendered"
        assert pod.metadata.annotations["prometheus.io/port"] == "8000"
        mounts = {mount.mount_path for mount in container.volume_mounts}
        assert "/dev/shm" in mounts
        ranks.add(int(pod.metadata.labels["batch.kubernetes.io/job-completion-index"]))
    assert ranks == set(range(nodes))
    if gpus == 8:  # a whole 8-GPU node each
        assert len({pod.spec.node_name for pod in pods}) == nodes


def test_suspend_frees_the_pods_and_resume_recreates_them(
    api: client.ApiClient, namespace: str, trainer_v2: TrainerV2
) -> None:
    body = render_trainjob(finetunejob(namespace, "paused", 1, 1, suspend=True), trainer_image=TRAINER_IMAGE)
    name = create_trainjob(api, namespace, body)["metadata"]["name"]
    stays(lambda: not pods_of(api, namespace, name), 5, "a suspended TrainJob has no pods")
    patch = {"spec": {"suspend": False}}
    custom(api).patch_namespaced_custom_object(
        names.TRAINJOB_GROUP, names.TRAINJOB_VERSION, namespace, names.TRAINJOB_PLURAL, name, patch
    )
    running_pods(api, namespace, name, 1)
    patch = {"spec": {"suspend": True}}
    custom(api).patch_namespaced_custom_object(
        names.TRAINJOB_GROUP, names.TRAINJOB_VERSION, namespace, names.TRAINJOB_PLURAL, name, patch
    )
    wait_for(lambda: not pods_of(api, namespace, name), 60, "the suspended TrainJob's pods gone")
    wait_for(lambda: condition(get_trainjob(api, namespace, name), "Suspended"), 30, "Suspended condition")


def test_a_failed_trainer_fails_the_trainjob_at_once_with_its_exit_code(
    api: client.ApiClient, namespace: str, trainer_v2: TrainerV2
) -> None:
    body = render_trainjob(finetunejob(namespace, "crashes", 1, 1), trainer_image=TRAINER_IMAGE)
    name = create_trainjob(api, namespace, body)["metadata"]["name"]
    (pod,) = running_pods(api, namespace, name, 1)
    end_pod(api, namespace, pod.metadata.name, 3)
    failed = wait_for(lambda: condition(get_trainjob(api, namespace, name), "Failed"), 60, "TrainJob Failed")
    assert failed["reason"], failed
    ended = client.CoreV1Api(api).read_namespaced_pod(pod.metadata.name, namespace)
    (status,) = [c for c in ended.status.container_statuses if c.name == CONTAINER]
    terminated = status.state.terminated if status.state else None
    assert terminated is not None
    assert terminated.exit_code == 3
    stays(lambda: len(pods_of(api, namespace, name)) <= 1, 5, "no second pod (backoffLimit 0, no JobSet restart)")


def test_deleting_the_trainjob_collects_its_jobset_and_pods(
    api: client.ApiClient, namespace: str, trainer_v2: TrainerV2
) -> None:
    body = render_trainjob(finetunejob(namespace, "collected", 1, 1), trainer_image=TRAINER_IMAGE)
    name = create_trainjob(api, namespace, body)["metadata"]["name"]
    running_pods(api, namespace, name, 1)
    custom(api).delete_namespaced_custom_object(
        names.TRAINJOB_GROUP, names.TRAINJOB_VERSION, namespace, names.TRAINJOB_PLURAL, name
    )

    def collected() -> bool:
        try:
            custom(api).get_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", namespace, "jobsets", name)
        except ApiException as error:
            return error.status == 404 and not pods_of(api, namespace, name)
        return False

    wait_for(collected, 60, "JobSet and pods garbage-collected")


# -- the operator with the trainjob backend --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainjob_operator(
    cluster: Cluster, trainer_v2: TrainerV2, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """`--backend auto` on a cluster with both CRDs installed: new jobs run as TrainJobs."""
    apply_crd(cluster)
    running = Operator(cluster, tmp_path_factory.mktemp("operator"), extra=["--backend", "auto"]).start()
    try:
        yield running
    finally:
        stop_cleanly(running)


def ftj_phase(api: client.ApiClient, namespace: str, name: str, phase: str) -> dict[str, Any] | None:
    ftj = get_ftj(api, namespace, name)
    return ftj if (ftj.get("status") or {}).get("phase") == phase else None


def test_operator_runs_a_finetunejob_as_a_trainjob_through_to_succeeded(
    api: client.ApiClient, namespace: str, trainjob_operator: Operator
) -> None:
    name = "lifecycle"
    shared_output_claim(api, namespace)
    ftj = create_ftj(api, namespace, small_job(name, nodes=2, gpus=1))
    pods = running_pods(api, namespace, name, 2)
    child = get_trainjob(api, namespace, name)
    assert child["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]
    assert child["spec"]["trainer"]["numNodes"] == 2
    running = trainjob_operator.wait_for(lambda: ftj_phase(api, namespace, name, "Running"), 60, "Running")
    assert running["status"]["trainJobName"] == name
    assert "pytorchJobName" not in running["status"]
    started = running["status"].get("startTime")
    assert started, running["status"]  # a TrainJob has no startTime of its own: stamped when first Running
    assert "new jobs run as TrainJob (--backend auto)" in trainjob_operator.log_tail(400)
    for pod in pods:
        end_pod(api, namespace, pod.metadata.name, 0)
    done = trainjob_operator.wait_for(lambda: ftj_phase(api, namespace, name, "Succeeded"), 60, "Succeeded")
    assert done["status"]["startTime"] == started, "the start time moved"
    assert done["status"].get("completionTime", "") >= started, done["status"]  # RFC 3339 in UTC sorts as text
    assert conditions_of(done)["Succeeded"]["status"] == "True"
    assert "Complete" not in conditions_of(done), "the TrainJob's Complete is mirrored as Succeeded"
    phases = ("Pending", "Running", "Succeeded")
    counted = reasons(wait_events(trainjob_operator, api, namespace, name, set(phases)))
    assert {phase: counted[phase] for phase in phases} == dict.fromkeys(phases, 1), counted


def test_a_failed_trainer_fails_the_finetunejob_naming_the_pod_and_exit_code(
    api: client.ApiClient, namespace: str, trainjob_operator: Operator
) -> None:
    name = "crashes"
    create_ftj(api, namespace, small_job(name, nodes=1, gpus=1))
    (pod,) = running_pods(api, namespace, name, 1)
    trainjob_operator.wait_for(lambda: ftj_phase(api, namespace, name, "Running"), 60, "Running")
    end_pod(api, namespace, pod.metadata.name, 1)
    failed = trainjob_operator.wait_for(lambda: ftj_phase(api, namespace, name, "Failed"), 60, "Failed")
    message = conditions_of(failed)["Failed"]["message"]
    assert pod.metadata.name in message
    assert "container node exited with code 1" in message
    assert "restarts" not in failed["status"]


def test_suspend_resume_and_queue_label_go_to_the_trainjob(
    api: client.ApiClient, namespace: str, trainjob_operator: Operator
) -> None:
    name = "pausable"
    create_ftj(api, namespace, small_job(name, nodes=1, gpus=1))
    running_pods(api, namespace, name, 1)
    patch_spec(api, namespace, name, {"suspend": True, "queueName": "team-gpus"})
    trainjob_operator.wait_for(lambda: get_trainjob(api, namespace, name)["spec"].get("suspend") is True, 30, "suspend")
    assert get_trainjob(api, namespace, name)["metadata"]["labels"][names.QUEUE_LABEL] == "team-gpus"
    trainjob_operator.wait_for(lambda: not pods_of(api, namespace, name), 60, "the pods deleted")
    trainjob_operator.wait_for(lambda: ftj_phase(api, namespace, name, "Suspended"), 60, "Suspended")
    patch_spec(api, namespace, name, {"suspend": False})
    running_pods(api, namespace, name, 1)
    trainjob_operator.wait_for(lambda: ftj_phase(api, namespace, name, "Running"), 60, "Running again")


def test_deleting_the_finetunejob_collects_its_trainjob_and_pods(
    api: client.ApiClient, namespace: str, trainjob_operator: Operator
) -> None:
    name = "doomed"
    create_ftj(api, namespace, small_job(name, nodes=1, gpus=1))
    running_pods(api, namespace, name, 1)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def collected() -> bool:
        try:
            get_trainjob(api, namespace, name)
        except ApiException as error:
            return error.status == 404 and not pods_of(api, namespace, name)
        return False

    trainjob_operator.wait_for(collected, 60, "TrainJob and pods garbage-collected")
    stays(lambda: not pods_of(api, namespace, name), 3, "no TrainJob re-created after the delete")


def test_a_trainjob_whose_pods_cannot_be_created_says_so(
    api: client.ApiClient, namespace: str, trainjob_operator: Operator
) -> None:
    """A ResourceQuota of 0 pods: the Job controller's FailedCreate Events on the JobSet's Job reach the job."""
    zero_pod_quota(api, namespace)
    name = "podless"
    create_ftj(api, namespace, small_job(name, nodes=1, gpus=1))

    def said() -> dict[str, Any] | None:
        found = conditions_of(get_ftj(api, namespace, name)).get("PodsNotCreated") or {}
        return found if found.get("status") == "True" else None

    found = trainjob_operator.wait_for(said, 60, "PodsNotCreated")
    assert found["reason"] == "FailedCreatePod"
    assert "exceeded quota" in found["message"], found
    assert (get_ftj(api, namespace, name).get("status") or {}).get("phase") == "Pending"
