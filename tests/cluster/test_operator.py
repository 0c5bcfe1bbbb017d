"""The operator end to end (issue 5): `finetune operator` as a real process against the real control plane.

FineTuneJobs go in through kubectl or the API; what comes out is judged only where a user would see it: the
PyTorchJob and its pods (made by the real training-operator, bound by the real scheduler, run and ended by
kwok), the FineTuneJob's status and Events, garbage collection, and the operator's /healthz and /metrics.

GPU budget: the cluster has 4 fake nodes x 8 GPUs. Tests ask for 1 GPU per pod except the examples (8 per
pod; the multi-node one takes all 32, so it first waits until earlier tests' pods are gone).
Tests run in file order; the metrics test is last on purpose (it reads counters the others produced).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_operator.children.pytorchjob import child_name
from tests.cluster.controlplane import GPU_NODES, GPU_PRODUCT, GPU_PRODUCT_LABEL, GPUS_PER_NODE, Cluster
from tests.cluster.operator_process import CRD_FILE, TRAINER_IMAGE, OperatorProcess, wait_stable
from tests.cluster.pytorchjobs import (
    REPLICA_TYPE_LABEL,
    end_pod,
    get_pytorchjob,
    gpu_limit,
    gpus_in_use,
    job_pods,
    wait_running,
)
from tests.cluster.storage import bound_claims, shared_output_claim
from tests.cluster.trainer_jobs import conditions_of, create_ftj, get_ftj
from tests.cluster.waiting import stays, wait_for
from tests.manifests import REPO_ROOT, minimal_job

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL, KIND = "finetune.dev", "v1alpha1", "finetunejobs", "FineTuneJob"
MANAGED_BY = "app.kubernetes.io/managed-by=finetune-operator"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RECIPE_ENV = "FINETUNE_RECIPE"
OWN_CONDITIONS = {
    "InvalidSpec",
    "SpecChangeRejected",
    "MetricsUnavailable",
    "ChildConflict",
    "PodsNotCreated",
}  # the operator's; every other type mirrors the child's
BULK_JOBS = 50

# -- FineTuneJobs, children, events -------------------------------------------------------------------------


def small_job(name: str, nodes: int = 1, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    resources = {"nodes": nodes, "gpusPerNode": gpus, "cpu": "1", "memory": "1Gi"}
    return minimal_job(name, resources=resources, **spec)


def patch_spec(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch of the spec, as `kubectl patch --type merge` does."""
    patched: dict[str, Any] = client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
    )
    return patched


def phase_of(ftj: dict[str, Any]) -> str | None:
    return ftj.get("status", {}).get("phase")


def wait_phase(
    operator: OperatorProcess, api: client.ApiClient, namespace: str, name: str, phase: str, timeout: float = 30
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        ftj = get_ftj(api, namespace, name)
        return ftj if phase_of(ftj) == phase else None

    found = operator.wait_for(reached, timeout, f"FineTuneJob {name} phase {phase}")
    assert found is not None
    return found


def children(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    """PyTorchJobs in the namespace carrying the operator's managed-by label."""
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", label_selector=MANAGED_BY
    )
    return list(listed["items"])


def pytorchjob_gone(api: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        get_pytorchjob(api, namespace, name)
    except ApiException as error:
        return error.status == 404
    return False


def recipe_env(child: dict[str, Any]) -> str:
    container = child["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    return next(str(var["value"]) for var in container["env"] if var["name"] == RECIPE_ENV)


def events_of(api: client.ApiClient, namespace: str, name: str) -> list[client.CoreV1Event]:
    selector = f"involvedObject.kind={KIND},involvedObject.name={name}"
    return list(client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=selector).items)


def reasons(events: list[client.CoreV1Event]) -> Counter[str]:
    counted: Counter[str] = Counter()
    for event in events:
        counted[event.reason] += event.count or 1
    return counted


def wait_events(
    operator: OperatorProcess, api: client.ApiClient, namespace: str, name: str, wanted: set[str]
) -> list[client.CoreV1Event]:
    def probe() -> list[client.CoreV1Event]:
        events = events_of(api, namespace, name)
        return events if wanted <= set(reasons(events)) else []

    return operator.wait_for(probe, 30, f"Events {sorted(wanted)} on FineTuneJob {name}")


def assert_owned_child(child: dict[str, Any], ftj: dict[str, Any]) -> None:
    """The contract's ownership: managed-by label, one controller ownerReference to the FineTuneJob."""
    assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
    refs = child["metadata"].get("ownerReferences") or []
    assert len(refs) == 1, refs
    ref = refs[0]
    assert (ref["apiVersion"], ref["kind"], ref["name"], ref["uid"]) == (
        f"{GROUP}/{VERSION}",
        KIND,
        ftj["metadata"]["name"],
        ftj["metadata"]["uid"],
    )
    assert ref.get("controller") is True
    assert ref.get("blockOwnerDeletion") is True


def assert_no_finalizer(ftj: dict[str, Any]) -> None:
    assert not ftj["metadata"].get("finalizers"), ftj["metadata"].get("finalizers")


def _when(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def mirrored_conditions(ftj: dict[str, Any], child: dict[str, Any]) -> bool:
    """The FineTuneJob's non-own conditions equal the child's: type, status, reason, message, transition time."""

    def key(conds: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        return {
            kind: (c.get("status"), c.get("reason"), c.get("message"), _when(c.get("lastTransitionTime")))
            for kind, c in conds.items()
            if kind not in OWN_CONDITIONS
        }

    return key(conditions_of(ftj)) == key(conditions_of(child))


def wait_mirrored(
    operator: OperatorProcess, api: client.ApiClient, namespace: str, name: str, child: str
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        ftj = get_ftj(api, namespace, name)
        return ftj if mirrored_conditions(ftj, get_pytorchjob(api, namespace, child)) else None

    try:
        found = operator.wait_for(probe, 30, f"{name}'s conditions to mirror PyTorchJob {child}'s")
    except AssertionError as error:
        ours = conditions_of(get_ftj(api, namespace, name))
        theirs = conditions_of(get_pytorchjob(api, namespace, child))
        raise AssertionError(f"{error}\nFineTuneJob: {ours}\nPyTorchJob: {theirs}") from None
    assert found is not None
    return found


# -- liveness -----------------------------------------------------------------------------------------------


def test_operator_is_live_and_logs_json_lines_to_stderr(operator_process: OperatorProcess) -> None:
    assert operator_process.healthz() == 200
    operator_process.wait_for(lambda: operator_process.stderr_log.stat().st_size > 0, 30, "a log line on stderr")
    records = operator_process.log_records()
    assert records, "no log records"
    assert all(isinstance(record, dict) for record in records), records[:3]


# -- the examples on fake GPU nodes ---------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["single-node-8gpu.yaml", "multi-node-phased.yaml"])
def test_example_becomes_a_pytorchjob_on_fake_gpu_nodes(
    operator_process: OperatorProcess, cluster: Cluster, api: client.ApiClient, namespace: str, example: str
) -> None:
    manifest = yaml.safe_load((REPO_ROOT / "examples" / example).read_text())
    manifest["metadata"].pop("namespace", None)  # applied with -n into the test's namespace
    name = manifest["metadata"]["name"]
    resources = manifest["spec"]["resources"]
    nodes, gpus = resources.get("nodes", 1), resources["gpusPerNode"]
    total = GPU_NODES * GPUS_PER_NODE
    wait_for(lambda: gpus_in_use(api) + nodes * gpus <= total, 120, f"{nodes * gpus} free GPUs (earlier tests')")
    scheduling = client.SchedulingV1Api(api)
    priority_class = resources.get("priorityClassName")
    if priority_class:
        scheduling.create_priority_class({"metadata": {"name": priority_class}, "value": 1000})
    volumes = bound_claims(api, namespace, [volume["claimName"] for volume in resources.get("volumes", [])])
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest))
        child = child_name(name)
        pods = wait_running(api, namespace, child, count=nodes, timeout=90)
        ftj = wait_phase(operator_process, api, namespace, name, "Running")
        assert ftj["status"]["pytorchJobName"] == child
        assert_no_finalizer(ftj)
        job = get_pytorchjob(api, namespace, child)
        assert_owned_child(job, ftj)
        assert job["metadata"]["labels"].get(QUEUE_LABEL) == manifest["spec"].get("queueName")
        types = Counter(pod.metadata.labels[REPLICA_TYPE_LABEL] for pod in pods)
        assert types == Counter({"master": 1, **({"worker": nodes - 1} if nodes > 1 else {})})
        # 8 GPUs per pod on 8-GPU nodes: the scheduler must spread them one per node.
        assert len({pod.spec.node_name for pod in pods}) == nodes
        core = client.CoreV1Api(api)
        for pod in pods:
            assert gpu_limit(pod) == str(gpus)
            assert core.read_node(pod.spec.node_name).metadata.labels[GPU_PRODUCT_LABEL] == GPU_PRODUCT
            assert pod.spec.containers[0].image == TRAINER_IMAGE  # --trainer-image, the example sets none
            assert pod.spec.priority_class_name == priority_class
    finally:  # free the GPUs now (the namespace goes only after the test) and the cluster-scoped objects
        with contextlib.suppress(ApiException):
            client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        for volume in volumes:
            client.CoreV1Api(api).delete_persistent_volume(volume)
        if priority_class:
            scheduling.delete_priority_class(priority_class)


# -- lifecycle: Running, Succeeded, Failed -----------------------------------------------------------------


def test_running_then_succeeded_with_mirrored_conditions_and_events(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    name = "lifecycle"
    shared_output_claim(api, namespace)
    create_ftj(api, namespace, small_job(name, nodes=2, gpus=1))
    wait_running(api, namespace, name, count=2)
    ftj = wait_phase(operator_process, api, namespace, name, "Running")
    status = ftj["status"]
    assert status["pytorchJobName"] == name
    assert status.get("startTime"), status
    assert not status.get("completionTime"), status
    assert status.get("observedGeneration") == ftj["metadata"]["generation"]
    wait_mirrored(operator_process, api, namespace, name, name)

    end_pod(api, namespace, f"{name}-worker-0", 0)
    end_pod(api, namespace, f"{name}-master-0", 0)
    ftj = wait_phase(operator_process, api, namespace, name, "Succeeded", timeout=60)
    status = ftj["status"]
    assert status.get("completionTime"), status
    assert status["completionTime"] >= status["startTime"]  # RFC 3339 in UTC sorts as text
    ftj = wait_mirrored(operator_process, api, namespace, name, name)
    assert conditions_of(ftj)["Succeeded"]["status"] == "True"

    events = wait_events(operator_process, api, namespace, name, {"Pending", "Running", "Succeeded"})
    counted = reasons(events)
    assert {reason: counted[reason] for reason in ("Pending", "Running", "Succeeded")} == {
        "Pending": 1,
        "Running": 1,
        "Succeeded": 1,
    }, counted
    assert all(e.type == "Normal" for e in events if e.reason in ("Pending", "Running", "Succeeded"))


@pytest.mark.parametrize("exit_code", [137, 1], ids=["exit-137-killed-no-restarts-left", "exit-1-permanent"])
def test_failed_pod_fails_the_job_naming_pod_and_exit_code(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str, exit_code: int
) -> None:
    """137 is a kill from outside: restarted by default (tests/cluster/test_recovery.py), so here with no restarts
    allowed; 1 is a crash that is never restarted nor retried by the training-operator."""
    name = f"crash-{exit_code}"
    create_ftj(api, namespace, small_job(name, nodes=1, gpus=1, recovery={"maxRestarts": 0}))
    wait_running(api, namespace, name, count=1)
    wait_phase(operator_process, api, namespace, name, "Running")
    pod = f"{name}-master-0"
    ended = client.CoreV1Api(api).read_namespaced_pod(pod, namespace).metadata.uid
    end_pod(api, namespace, pod, exit_code)
    try:
        ftj = wait_phase(operator_process, api, namespace, name, "Failed", timeout=30)
    except AssertionError as error:
        child = get_pytorchjob(api, namespace, name)
        now = [(p.metadata.name, p.metadata.uid == ended, p.status.phase) for p in job_pods(api, namespace, name)]
        raise AssertionError(
            f"{error}\nPyTorchJob conditions: {conditions_of(child)}\n"
            f"pods now (name, same pod as the one ended, phase): {now}"
        ) from None
    failed = conditions_of(ftj)["Failed"]
    assert failed["status"] == "True"
    assert pod in failed["message"], failed
    # The exit code as a number in the message ("exit code 137", "exited with code 137"), not e.g. "code 1370".
    assert re.search(rf"\bcode {exit_code}\b", failed["message"]), failed
    if exit_code == 137:
        assert "not restarted: spec.recovery.maxRestarts is 0" in failed["message"], failed
    assert ftj["status"].get("completionTime"), ftj["status"]
    events = wait_events(operator_process, api, namespace, name, {"Failed"})
    assert {e.type for e in events if e.reason == "Failed"} == {"Warning"}


# -- delete, suspend -----------------------------------------------------------------------------------------


def test_deleting_the_finetunejob_garbage_collects_child_and_pods(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    name = "doomed"
    shared_output_claim(api, namespace)
    create_ftj(api, namespace, small_job(name, nodes=2, gpus=1))
    wait_running(api, namespace, name, count=2)
    ftj = wait_phase(operator_process, api, namespace, name, "Running")
    assert_no_finalizer(ftj)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def ftj_gone() -> bool:
        try:
            get_ftj(api, namespace, name)
        except ApiException as error:
            return error.status == 404
        return False

    operator_process.wait_for(ftj_gone, 15, "the FineTuneJob to be gone (nothing may hold it)")
    operator_process.wait_for(lambda: pytorchjob_gone(api, namespace, name), 60, "GC of the PyTorchJob")
    operator_process.wait_for(lambda: not job_pods(api, namespace, name), 60, "the pods to be deleted")
    stays(lambda: not children(api, namespace), 3, "no PyTorchJob re-created after the delete")


def test_suspend_deletes_the_pods_and_resume_brings_them_back(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    name = "pausable"
    shared_output_claim(api, namespace)
    create_ftj(api, namespace, small_job(name, nodes=2, gpus=1))
    wait_running(api, namespace, name, count=2)
    wait_phase(operator_process, api, namespace, name, "Running")

    def child_suspend() -> bool | None:
        return get_pytorchjob(api, namespace, name)["spec"].get("runPolicy", {}).get("suspend")

    patch_spec(api, namespace, name, {"suspend": True})
    operator_process.wait_for(lambda: child_suspend() is True, 30, "the child's runPolicy.suspend=true")
    operator_process.wait_for(lambda: not job_pods(api, namespace, name), 60, "the pods to be deleted")
    wait_phase(operator_process, api, namespace, name, "Suspended")
    wait_events(operator_process, api, namespace, name, {"Suspended"})

    patch_spec(api, namespace, name, {"suspend": False})
    operator_process.wait_for(lambda: child_suspend() is False, 30, "the child's runPolicy.suspend=false")
    wait_running(api, namespace, name, count=2)
    wait_phase(operator_process, api, namespace, name, "Running")
    counted = reasons(events_of(api, namespace, name))
    assert counted["Suspended"] == 1, counted
    assert counted["Running"] >= 2, counted  # before the suspend, and after the resume


# -- crash of the operator itself ----------------------------------------------------------------------------


def test_sigkill_right_after_child_creation_then_restart_converges(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    name = "survivor"
    create_ftj(api, namespace, small_job(name, nodes=1, gpus=1))
    try:
        first = operator_process.wait_for(lambda: children(api, namespace), 30, "the child PyTorchJob", interval=0.02)
        operator_process.kill()
    finally:
        if not operator_process.alive():
            operator_process.start()
    assert [job["metadata"]["name"] for job in first] == [name]
    ftj = wait_phase(operator_process, api, namespace, name, "Running", timeout=60)
    after = children(api, namespace)
    assert [job["metadata"]["uid"] for job in after] == [first[0]["metadata"]["uid"]], "child was re-created"
    assert_owned_child(after[0], ftj)
    assert ftj["status"]["pytorchJobName"] == name
    stays(lambda: len(children(api, namespace)) == 1, 3, "exactly one PyTorchJob")


# -- invalid and changed specs -------------------------------------------------------------------------------


@contextlib.contextmanager
def crd_without_quantity_rule(cluster: Cluster) -> Any:
    """The FineTuneJob CRD with the memory quantity rule taken out, then the real one back: what a cluster whose
    CRD is older than its operator accepts (Helm installs CRDs once and never upgrades them)."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["resources"]["properties"]["memory"].pop("x-kubernetes-validations")
    apply = ("apply", "--server-side", "--force-conflicts", "--field-manager=finetune-tests", "-f", "-")
    cluster.kubectl(*apply, stdin=yaml.safe_dump(crd))
    try:
        yield
    finally:
        cluster.kubectl(*apply, stdin=CRD_FILE.read_text())


def created_or_refused(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> bool:
    """True once the API server accepts the manifest (the CRD's new schema takes a moment to be served)."""
    try:
        create_ftj(api, namespace, manifest)
    except ApiException as error:
        if error.status == 422:
            return False
        raise
    return True


def test_invalid_spec_fails_once_without_child_or_retry_loop(
    operator_process: OperatorProcess, cluster: Cluster, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """Run on an operator watching only this namespace (--namespace), so its counters count this job alone."""
    operator_process.stop()  # its SIGTERM exit code is checked at the end of the module
    scoped = OperatorProcess(cluster, tmp_path, namespaces=[namespace])
    try:
        scoped.start()
        name = "bad-memory"
        manifest = small_job(name)
        manifest["spec"]["resources"]["memory"] = "lots"
        with crd_without_quantity_rule(cluster):  # as stored under an older CRD (Helm never upgrades CRDs)
            wait_for(lambda: created_or_refused(api, namespace, manifest), 30, "the looser CRD in force")
        ftj = wait_phase(scoped, api, namespace, name, "Failed")
        invalid = conditions_of(ftj).get("InvalidSpec")
        assert invalid, conditions_of(ftj)
        assert (invalid["status"], invalid["reason"]) == ("True", "InvalidSpec")
        assert "spec.resources.memory" in invalid["message"], invalid
        events = wait_events(scoped, api, namespace, name, {"InvalidSpec"})
        assert {e.type for e in events if e.reason == "InvalidSpec"} == {"Warning"}
        assert not children(api, namespace)

        def snapshot() -> tuple[Any, ...]:
            counts = scoped.metric_by_label("finetune_operator_reconciles_total", "handler")
            errors = scoped.metric_by_label("finetune_operator_reconcile_errors_total", "handler")
            version = get_ftj(api, namespace, name)["metadata"]["resourceVersion"]
            return counts, errors, version, reasons(events_of(api, namespace, name))

        settled = wait_stable(snapshot, window=3, timeout=30, what="the operator's work on the invalid job")
        assert sum(settled[0].values()) > 0, "no reconcile counted"
        stays(lambda: snapshot() == settled, 6, f"quiet after Failed (no retries); was {settled}")
        assert not children(api, namespace)
        assert scoped.alive()
        assert scoped.healthz() == 200
        assert scoped.stop() == 0, f"scoped operator's exit code on SIGTERM:\n{scoped.log_tail()}"

        # A restarted operator counts the job too, though it has nothing to write for it (it was lost before).
        restarted = OperatorProcess(cluster, tmp_path / "restarted", namespaces=[namespace])
        (tmp_path / "restarted").mkdir()
        scoped = restarted.start()
        restarted.wait_for(
            lambda: restarted.metric_by_label("finetune_operator_jobs", "phase").get("Failed") == 1,
            30,
            "finetune_operator_jobs{phase=Failed} == 1 after the restart",
        )
        assert sum(restarted.metric_by_label("finetune_operator_jobs", "phase").values()) == 1
    finally:
        scoped.stop()
        if not operator_process.alive():
            operator_process.start()


def test_immutable_change_is_rejected_and_mutable_change_applied(
    operator_process: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    name = "recipe"
    create_ftj(api, namespace, small_job(name, training={"learningRate": 2.0e-5}))
    wait_phase(operator_process, api, namespace, name, "Running", timeout=60)
    recipe = recipe_env(get_pytorchjob(api, namespace, name))

    # Mutable: early-stopping thresholds and the Kueue queue.
    patched = patch_spec(api, namespace, name, {"earlyStopping": {"maxGradNorm": 7.5}, "queueName": "team-a"})
    generation = patched["metadata"]["generation"]
    operator_process.wait_for(
        lambda: get_pytorchjob(api, namespace, name)["metadata"]["labels"].get(QUEUE_LABEL) == "team-a",
        30,
        "the queue label on the child",
    )
    operator_process.wait_for(
        lambda: get_ftj(api, namespace, name).get("status", {}).get("observedGeneration") == generation,
        30,
        f"status.observedGeneration {generation}",
    )
    # Not rejected: no SpecChangeRejected condition, or one that is not True (Kubernetes: False = does not hold).
    assert conditions_of(get_ftj(api, namespace, name)).get("SpecChangeRejected", {}).get("status") != "True"
    assert "SpecChangeRejected" not in reasons(events_of(api, namespace, name))
    before = get_pytorchjob(api, namespace, name)

    # Immutable: the recipe.
    patch_spec(api, namespace, name, {"training": {"learningRate": 1.0e-4}})

    def rejection() -> dict[str, Any] | None:
        found = conditions_of(get_ftj(api, namespace, name)).get("SpecChangeRejected")
        return found if found and found["status"] == "True" else None

    rejected = operator_process.wait_for(rejection, 30, "condition SpecChangeRejected=True")
    assert rejected["reason"] == "ImmutableFieldChanged"
    assert "spec.training.learningRate" in rejected["message"], rejected
    events = wait_events(operator_process, api, namespace, name, {"SpecChangeRejected"})
    assert {e.type for e in events if e.reason == "SpecChangeRejected"} == {"Warning"}

    def child_unchanged() -> bool:
        now = get_pytorchjob(api, namespace, name)
        return (
            now["metadata"]["uid"] == before["metadata"]["uid"]
            and now["metadata"]["generation"] == before["metadata"]["generation"]
            and recipe_env(now) == recipe
            and now["metadata"]["labels"].get(QUEUE_LABEL) == "team-a"
        )

    assert child_unchanged()
    stays(child_unchanged, 3, "the child unchanged after the rejected change")


# -- scale ---------------------------------------------------------------------------------------------------


def test_fifty_jobs_applied_at_once_all_reconciled(
    operator_process: OperatorProcess,
    cluster: Cluster,
    api: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """1 GPU each: 50 > 32 GPUs, so some run and the rest stay Pending (both are reconciled states).
    The time is reported, not held to a budget."""
    names = [f"bulk-{index:02d}" for index in range(BULK_JOBS)]
    documents = yaml.safe_dump_all([small_job(name, nodes=1, gpus=1) for name in names])
    custom = client.CustomObjectsApi(api)
    started = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=documents)
    applied = time.monotonic() - started
    phases: dict[str, str | None] = {}
    missing: list[str] = names
    deadline = started + 180
    while missing and time.monotonic() < deadline:
        assert operator_process.alive(), operator_process.log_tail()
        ftjs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        phases = {ftj["metadata"]["name"]: phase_of(ftj) for ftj in ftjs}
        owned = {job["metadata"]["name"] for job in children(api, namespace)}
        missing = [name for name in names if not (phases.get(name) and name in owned)]
        if missing:
            time.sleep(0.25)
    elapsed = time.monotonic() - started
    assert not missing, f"{len(missing)} of {BULK_JOBS} not reconciled after {elapsed:.0f}s: {missing[:5]}..."
    split = Counter(phases.values())
    assert set(split) <= {"Pending", "Running"}, split
    result = {"jobs": BULK_JOBS, "apply_s": round(applied, 2), "reconciled_s": round(elapsed, 2), "phases": split}
    (tmp_path / "fifty-jobs.json").write_text(json.dumps(result, indent=2))
    record_property("fifty_jobs_reconciled_seconds", round(elapsed, 2))
    print(f"\n{BULK_JOBS} FineTuneJobs: kubectl apply {applied:.1f}s, all reconciled {elapsed:.1f}s, phases {split}")


# -- the operator's own endpoints (last: reads counters the tests above produced) ---------------------------


def test_healthz_metrics_and_logs_after_the_run(operator_process: OperatorProcess) -> None:
    assert operator_process.healthz() == 200
    assert operator_process.log_records(), "no log records"  # every stderr line since the last start is JSON
    text = operator_process.metrics()
    declared = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}

    def kind(family: str) -> str | None:
        return declared.get(family) or declared.get(f"{family}_total")

    assert kind("finetune_operator_reconciles") == "counter", declared
    assert kind("finetune_operator_reconcile_errors") == "counter", declared
    assert kind("finetune_operator_reconcile_duration_seconds") == "histogram", declared
    assert kind("finetune_operator_jobs") == "gauge", declared
    reconciles = operator_process.metric_by_label("finetune_operator_reconciles_total", "handler")
    assert sum(reconciles.values()) > 0, reconciles
    timed = operator_process.metric_by_label("finetune_operator_reconcile_duration_seconds_count", "handler")
    assert sum(timed.values()) > 0, timed
    jobs = operator_process.metric_by_label("finetune_operator_jobs", "phase")
    assert jobs, "no finetune_operator_jobs{phase=...} series"
    assert set(jobs) <= {"Pending", "Running", "Succeeded", "Failed", "EarlyStopped", "Suspended"}, jobs
