"""Automatic resume end to end, with real parts only: a real trainer (on the node agent's node) is SIGKILLed
mid-run — what a host's OOM killer or a preemption that kills the process does — and the operator, the
training-operator, the garbage collector and the trainer's checkpoint resume must bring it to Succeeded with
nothing lost beyond the newest checkpoint; a run that fails on its own (bad data, exit 2) is never restarted.

Each test ends with the issue's invariants: one PyTorchJob for the job, the job in the right phase, the steps
after the restart continuing from the newest complete checkpoint at the time of the kill.
"""

from __future__ import annotations

import json
import signal
import time
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
from tests.cluster.nodeagent_handle import NodeAgentHandle
from tests.cluster.operator_process import ConfiguredOperator as Operator
from tests.cluster.operator_process import apply_crd, stop_cleanly
from tests.cluster.pytorchjobs import get_pytorchjob
from tests.cluster.trainer_jobs import create_ftj, get_ftj, trainer_job

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

    logged = steps(output)
    cut = logged.index(killed_at) + 1
    before, after = logged[:cut], logged[cut:]
    assert before == list(range(1, killed_at + 1))
    assert after == list(range(resume.step + 1, MAX_STEPS + 1)), "the second run continues at the checkpoint"
    lost = killed_at - resume.step
    assert 0 <= lost < CHECKPOINT_EVERY


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
