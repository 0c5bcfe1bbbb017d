"""Automatic resume end to end, with real parts only: a real trainer (on the node agent's node) is SIGKILLed
mid-run — what a host's OOM killer or a preemption that kills the process does — or its pod deleted, or its
whole node lost (a second node agent whose machine "dies": processes killed, kubelet silent), and the operator,
the training-operator, the node lifecycle controller, the pod garbage collector and the trainer's checkpoint
resume must bring it to Succeeded with nothing lost beyond the newest checkpoint; a run that fails on its own
(bad data, exit 2) is never restarted.

Each test ends with the issue's invariants: one PyTorchJob for the job, the job in the right phase, the steps
after the restart continuing from the newest complete checkpoint at the time of the kill.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubernetes import client

from finetune_contract.checkpoints import METRICS_FILE, latest_checkpoint
from finetune_contract.records import KIND, KIND_EVENT, KIND_STEP
from finetune_operator.children.pytorchjob import child_name
from tests.cluster.components import free_port
from tests.cluster.controlplane import Cluster
from tests.cluster.nodeagent_handle import NodeAgentHandle, start_node_agent
from tests.cluster.operator_process import ConfiguredOperator as Operator
from tests.cluster.operator_process import apply_crd, stop_cleanly
from tests.cluster.pytorchjobs import get_pytorchjob
from tests.cluster.trainer_jobs import conditions_of, create_ftj, get_ftj, trainer_job
from tests.cluster.waiting import stays

pytestmark = pytest.mark.cluster

CHECKPOINT_EVERY = 40
MAX_STEPS = 400  # ~12 s of steps at ~30 ms a step, after ~8 s of start-up
KILL_AFTER_STEP = 2 * CHECKPOINT_EVERY + 10  # at least two checkpoints exist, and steps past the newest
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, pytorchjob_garbage_collection: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    apply_crd(cluster)
    running = Operator(cluster, tmp_path_factory.mktemp("operator")).start()
    try:
        yield running
    finally:
        stop_cleanly(running)


def steps(output_dir: Path) -> list[int]:
    """The optimizer steps logged to metrics.jsonl, in the order written (both runs append to it)."""
    path = output_dir / METRICS_FILE
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written as we read
        if record.get(KIND) == KIND_STEP:
            found.append(int(record["step"]))
    return found


def trainer_workers(pids: list[int]) -> list[psutil.Process]:
    """The pod's torchrun workers: children of its launcher (`python -m finetune_trainer.launch`)."""
    processes = [psutil.Process(pid) for pid in pids]
    launchers = {p.pid for p in processes if "finetune_trainer.launch" in " ".join(p.cmdline())}
    return [p for p in processes if p.ppid() in launchers]


def recovery_job(name: str, output_dir: Path, **recovery: Any) -> dict[str, Any]:
    training = {"maxSteps": MAX_STEPS, "checkpoint": {"outputDir": str(output_dir), "intervalSteps": CHECKPOINT_EVERY}}
    manifest = trainer_job(name, output_dir, free_port(), training=training, early_stopping={"enabled": False})
    manifest["spec"]["recovery"] = {"backoffSeconds": 1, **recovery}
    return manifest


def events_of(output_dir: Path, event: str) -> list[dict[str, Any]]:
    """The trainer's event records of one kind (checkpoint, interrupted, resumed …) from metrics.jsonl."""
    found = []
    for line in (output_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get(KIND) == KIND_EVENT and record.get("event") == event:
            found.append(record)
    return found


def pytorchjobs(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs")
    return list(listed["items"])


def events(api: client.ApiClient, namespace: str, name: str, reason: str) -> list[client.CoreV1Event]:
    selector = f"involvedObject.kind=FineTuneJob,involvedObject.name={name},reason={reason}"
    return list(client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=selector).items)


def test_a_killed_trainer_resumes_from_its_newest_checkpoint_and_succeeds(
    api: client.ApiClient, namespace: str, operator: Operator, node_agent: NodeAgentHandle, tmp_path: Path
) -> None:
    name, output = "killed", tmp_path / "out"
    create_ftj(api, namespace, recovery_job(name, output))
    pod = f"{namespace}/{child_name(name)}-master-0"

    operator.wait_for(lambda: max(steps(output), default=0) >= KILL_AFTER_STEP, TIMEOUT_S, "steps past 2 checkpoints")
    first_uid = get_pytorchjob(api, namespace, child_name(name))["metadata"]["uid"]
    workers = trainer_workers(node_agent.pod_processes(pod))
    assert workers, f"no trainer worker process for {pod}"
    for worker in workers:  # the trainer, not the pod's launcher: what a host's OOM killer picks
        worker.send_signal(signal.SIGKILL)
    psutil.wait_procs(workers, timeout=10)
    killed_at = max(steps(output))
    resume = latest_checkpoint(output)
    assert resume is not None
    assert CHECKPOINT_EVERY <= resume.step <= killed_at

    def succeeded() -> dict[str, Any] | None:
        status = get_ftj(api, namespace, name).get("status") or {}
        return status if status.get("phase") == "Succeeded" else None

    status = operator.wait_for(succeeded, TIMEOUT_S, "Succeeded after the restart")
    assert status["restarts"] == 1, status
    (record,) = status["restartHistory"]
    assert (record["reason"], record["replacedUid"]) == ("Killed", first_uid)
    assert "SIGKILL, exit 137" in record["message"]
    recovering = {c["type"]: c for c in status["conditions"]}["Recovering"]
    assert (recovering["status"], recovering["reason"]) == ("False", "Restarted")
    assert len(events(api, namespace, name, "Restarting")) == 1

    children = pytorchjobs(api, namespace)
    assert [c["metadata"]["name"] for c in children] == [child_name(name)]
    assert children[0]["metadata"]["uid"] != first_uid

    assert_resumed_from(output, killed_at, resume.step)


def test_a_run_that_fails_on_its_own_is_not_restarted(
    api: client.ApiClient, namespace: str, operator: Operator, node_agent: NodeAgentHandle, tmp_path: Path
) -> None:
    name, output = "bad-data", tmp_path / "out"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n', encoding="utf-8")
    manifest = recovery_job(name, output)
    manifest["spec"]["data"]["datasets"] = [{"path": str(broken)}]
    create_ftj(api, namespace, manifest)

    def failed() -> dict[str, Any] | None:
        status = get_ftj(api, namespace, name).get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = operator.wait_for(failed, TIMEOUT_S, "Failed")
    time.sleep(3)  # more than the backoff: a restart would have begun
    status = get_ftj(api, namespace, name)["status"]
    assert status["phase"] == "Failed"
    assert "restarts" not in status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert "Recovering" not in conditions
    assert "exited with code 2" in conditions["Failed"]["message"]
    assert not events(api, namespace, name, "Restarting")
    assert len(pytorchjobs(api, namespace)) == 1


def test_a_deleted_trainer_pod_checkpoints_and_the_run_resumes_losing_nothing(
    api: client.ApiClient, namespace: str, operator: Operator, node_agent: NodeAgentHandle, tmp_path: Path
) -> None:
    """A node drained, a pod deleted by hand or by a preemption: SIGTERM, the trainer checkpoints at the step it
    reached, the pod comes back (the training-operator recreates a missing pod; or, if the pod's failure was seen
    first, the operator restarts the run) and the run resumes from that very step."""
    name, output = "drained", tmp_path / "out"
    create_ftj(api, namespace, recovery_job(name, output))
    pod = f"{child_name(name)}-master-0"
    operator.wait_for(lambda: max(steps(output), default=0) >= KILL_AFTER_STEP, TIMEOUT_S, "steps past 2 checkpoints")
    first_uid = get_pytorchjob(api, namespace, child_name(name))["metadata"]["uid"]
    client.CoreV1Api(api).delete_namespaced_pod(pod, namespace)

    def succeeded() -> dict[str, Any] | None:
        status = get_ftj(api, namespace, name).get("status") or {}
        return status if status.get("phase") == "Succeeded" else None

    try:
        status = operator.wait_for(succeeded, TIMEOUT_S, "Succeeded after the pod was deleted")
    except Exception as error:
        raise AssertionError(f"{error}\nstatus: {get_ftj(api, namespace, name).get('status')}") from None
    assert steps(output) == list(range(1, MAX_STEPS + 1)), "every step once: nothing lost, nothing repeated"
    stopped = [event["step"] for event in events_of(output, "interrupted")]
    resumed = [event["step"] for event in events_of(output, "resumed")]
    assert len(stopped) == 1, stopped
    assert resumed == stopped, "resumed from the checkpoint taken at SIGTERM, the last step reached"
    assert status.get("restarts", 0) <= 1, status
    children = pytorchjobs(api, namespace)
    assert len(children) == 1, children
    if not status.get("restarts"):
        assert children[0]["metadata"]["uid"] == first_uid


NODE_LOSS_TIMEOUT_S = 240  # the node lifecycle controller's 50 s grace, the pod GC's 40 s quarantine, 20 s period
OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}


@pytest.fixture
def doomed_node(cluster: Cluster, api: client.ApiClient, tmp_path: Path) -> Iterator[NodeAgentHandle]:
    """A second agent node (1 GPU) for a test to lose; its Node and Lease are removed afterwards, whatever happened."""
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    agent = start_node_agent(cluster.kubeconfig, tmp_path / "doomed-agent", name, gpus=1)
    try:
        cluster.wait_condition(f"node/{name}", "Ready", timeout=60)
        yield agent
    finally:
        agent.stop()
        cluster.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")
        cluster.kubectl("delete", "lease", name, "-n", "kube-node-lease", "--ignore-not-found")


@contextlib.contextmanager
def cordoned(api: client.ApiClient, node: str) -> Iterator[None]:
    core = client.CoreV1Api(api)
    core.patch_node(node, {"spec": {"unschedulable": True}})
    try:
        yield
    finally:
        core.patch_node(node, {"spec": {"unschedulable": False}})


def start_on(api: client.ApiClient, namespace: str, operator: Operator, spare: str, manifest: dict[str, Any]) -> str:
    """Create the job with the session's agent node cordoned, so its pod lands on the node the test will lose."""
    core, pod = client.CoreV1Api(api), f"{child_name(manifest['metadata']['name'])}-master-0"
    with cordoned(api, spare):
        create_ftj(api, namespace, manifest)

        def bound() -> str | None:
            try:
                return str(core.read_namespaced_pod(pod, namespace).spec.node_name or "") or None
            except client.ApiException:
                return None

        return operator.wait_for(bound, TIMEOUT_S, f"{pod} bound to a node")


def succeeded_status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    status = get_ftj(api, namespace, name).get("status") or {}
    return status if status.get("phase") == "Succeeded" else None


def step_losses(output: Path) -> list[tuple[int, float]]:
    """(step, loss) of every step record, in the order written."""
    found = []
    for line in (output / METRICS_FILE).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get(KIND) == KIND_STEP:
            found.append((int(record["step"]), float(record["loss"])))
    return found


def assert_resumed_from(output: Path, killed_at: int, resume_step: int) -> None:
    """The steps logged: 1..killed_at by the lost run, then resume_step+1..MAX_STEPS by the new one — and the loss
    curve continues where it stopped: the steps done twice (after the checkpoint, before the loss) give the same
    loss both times (same weights, optimizer state, data order and RNG restored; CPU arithmetic is deterministic)."""
    logged = steps(output)
    cut = logged.index(killed_at) + 1
    assert logged[:cut] == list(range(1, killed_at + 1))
    assert logged[cut:] == list(range(resume_step + 1, MAX_STEPS + 1)), "the second run continues at the checkpoint"
    assert 0 <= killed_at - resume_step < CHECKPOINT_EVERY
    losses = step_losses(output)
    first, second = dict(losses[:cut]), dict(losses[cut:])
    replayed = range(resume_step + 1, killed_at + 1)
    assert [second[step] for step in replayed] == pytest.approx([first[step] for step in replayed], rel=1e-6)


def lose_mid_run(operator: Operator, doomed: NodeAgentHandle, output: Path) -> tuple[int, int]:
    """Wait for steps past two checkpoints, lose the node; (last step logged, newest complete checkpoint's step)."""
    operator.wait_for(lambda: max(steps(output), default=0) >= KILL_AFTER_STEP, TIMEOUT_S, "steps past 2 checkpoints")
    assert doomed.lose(), "no trainer process ran on the lost node"
    resume = latest_checkpoint(output)
    assert resume is not None
    return max(steps(output)), resume.step


def test_a_run_on_a_node_that_is_deleted_resumes_elsewhere_from_its_newest_checkpoint(
    api: client.ApiClient,
    namespace: str,
    operator: Operator,
    node_agent: NodeAgentHandle,
    doomed_node: NodeAgentHandle,
    tmp_path: Path,
) -> None:
    """The machine dies and its Node is deleted (a cloud node controller or the autoscaler does that for a VM that is
    gone): the pod garbage collector removes the orphaned pod, the run comes back on the other node."""
    name, output = "node-deleted", tmp_path / "out"
    assert start_on(api, namespace, operator, node_agent.node, recovery_job(name, output)) == doomed_node.node
    killed_at, resume_step = lose_mid_run(operator, doomed_node, output)
    client.CoreV1Api(api).delete_node(doomed_node.node)

    status = operator.wait_for(lambda: succeeded_status(api, namespace, name), NODE_LOSS_TIMEOUT_S, "Succeeded")
    assert_resumed_from(output, killed_at, resume_step)
    assert len(pytorchjobs(api, namespace)) == 1
    assert status.get("restarts", 0) <= 1, status
    for record in status.get("restartHistory") or []:
        assert record["reason"] in ("NodeLost", "PodGone"), record
    pod = client.CoreV1Api(api).read_namespaced_pod(f"{child_name(name)}-master-0", namespace)
    assert pod.spec.node_name == node_agent.node


def test_a_run_on_a_node_that_stops_answering_says_so_and_resumes_once_the_node_is_out_of_service(
    api: client.ApiClient,
    namespace: str,
    operator: Operator,
    node_agent: NodeAgentHandle,
    doomed_node: NodeAgentHandle,
    tmp_path: Path,
) -> None:
    """The machine stops answering and its Node stays: NotReady after the grace period, the pod evicted after its
    toleration (2 s here) and then Terminating for good — the run would hang without a word. The job says why, and
    names the way out; an administrator taints the node out-of-service, and the run resumes on the other node."""
    name, output = "node-silent", tmp_path / "out"
    manifest = recovery_job(name, output)
    manifest["spec"]["resources"]["tolerations"] += [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}
        for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
    ]
    assert start_on(api, namespace, operator, node_agent.node, manifest) == doomed_node.node
    killed_at, resume_step = lose_mid_run(operator, doomed_node, output)

    def stuck_and_said() -> dict[str, Any] | None:
        condition = conditions_of(get_ftj(api, namespace, name)).get("NodeNotReady") or {}
        return condition if condition.get("status") == "True" and "Terminating" in condition["message"] else None

    condition = operator.wait_for(stuck_and_said, NODE_LOSS_TIMEOUT_S, "NodeNotReady saying the pod is Terminating")
    pod = f"{child_name(name)}-master-0"
    assert f"pod {pod} is on node {doomed_node.node}" in condition["message"]
    assert f"kubectl taint nodes {doomed_node.node} node.kubernetes.io/out-of-service" in condition["message"]

    # The hang the condition explains: the training-operator counts the evicted pod failed, the operator starts a
    # restart (Recovering, NodeLost) — and the old PyTorchJob cannot go while its pod stays Terminating.
    def hanging() -> bool:
        phase = get_ftj(api, namespace, name)["status"]["phase"]
        terminating = client.CoreV1Api(api).read_namespaced_pod(pod, namespace).metadata.deletion_timestamp
        return phase not in ("Succeeded", "Failed") and terminating is not None and max(steps(output)) == killed_at

    stays(hanging, 10, "stuck: pod Terminating, job not ended, no step trained")
    assert len(events(api, namespace, name, "NodeNotReady")) == 1

    taints = client.CoreV1Api(api).read_node(doomed_node.node).spec.taints or []
    kept = [api.sanitize_for_serialization(taint) for taint in taints]
    client.CoreV1Api(api).patch_node(doomed_node.node, {"spec": {"taints": [*kept, OUT_OF_SERVICE]}})

    status = operator.wait_for(lambda: succeeded_status(api, namespace, name), NODE_LOSS_TIMEOUT_S, "Succeeded")
    assert_resumed_from(output, killed_at, resume_step)
    assert len(pytorchjobs(api, namespace)) == 1
    assert status.get("restarts", 0) <= 1, status

    def cleared() -> bool:
        return (conditions_of(get_ftj(api, namespace, name)).get("NodeNotReady") or {}).get("status") == "False"

    operator.wait_for(cleared, TIMEOUT_S, "NodeNotReady cleared once no pod is on the lost node")
