"""Which failures a restart can help, from pods as the kubelet and the training-operator leave them."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.decisions.recovery import backoff_seconds, classify, pod_failure


def pod(name: str = "job-master-0", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": "Failed", **status}}


def exited(code: int, reason: str = "Error", container: str = "pytorch") -> dict[str, Any]:
    terminated = {"exitCode": code, "reason": reason}
    return {"containerStatuses": [{"name": container, "state": {"terminated": terminated}}]}


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ({"reason": "Evicted", "message": "The node was low on resource: memory."}, "PodEvicted"),
        ({"reason": "NodeLost"}, "NodeLost"),
        ({"reason": "Preempting"}, "PodPreempted"),
        (
            {"reason": "Terminated", "message": "Pod was terminated in response to imminent node shutdown."},
            "NodeShutdown",
        ),
        (exited(137), "Killed"),
        (exited(143), "Killed"),
    ],
)
def test_failures_the_cluster_caused_are_retriable(status: dict[str, Any], reason: str) -> None:
    failure = classify([pod(**status)])
    assert (failure.retriable, failure.reason) == (True, reason)
    assert "job-master-0" in failure.message


@pytest.mark.parametrize(
    ("status", "reason", "fragment"),
    [
        (exited(2), "TrainerFailed", "code 2 (bad recipe or data)"),
        (exited(3), "TrainerFailed", "code 3 (non-finite loss)"),
        (exited(1), "TrainerFailed", "code 1"),
        (exited(134), "TrainerFailed", "code 134"),
        (exited(137, reason="OOMKilled"), "OOMKilled", "memory limit"),
        ({"reason": "DeadlineExceeded", "message": "Pod was active too long"}, "DeadlineExceeded", "too long"),
    ],
)
def test_failures_of_the_run_itself_are_not(status: dict[str, Any], reason: str, fragment: str) -> None:
    failure = classify([pod(**status)])
    assert (failure.retriable, failure.reason) == (False, reason)
    assert fragment in failure.message


def test_a_disruption_condition_wins_over_the_exit_code_it_caused() -> None:
    """The scheduler preempted the pod; the trainer died of the SIGTERM with exit 1 after its own cleanup."""
    disrupted = pod(
        conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "x"}],
        **exited(1),
    )
    assert classify([disrupted]).reason == "PodPreempted"
    kueue = pod(conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByKueue"}])
    assert classify([kueue]).retriable


def test_one_pod_taken_away_makes_the_peers_errors_consequences() -> None:
    """A 2-node run: the worker's node went; the master died of the NCCL error (exit 1)."""
    master = pod("job-master-0", **exited(1))
    worker = pod("job-worker-0", reason="NodeLost", message="node went away")
    for order in ([master, worker], [worker, master]):
        failure = classify(order)
        assert (failure.retriable, failure.reason) == (True, "NodeLost")
        assert "job-worker-0" in failure.message


def test_only_the_trainer_container_counts_and_running_pods_are_ignored() -> None:
    sidecar_killed = pod(containerStatuses=[{"name": "sidecar", "state": {"terminated": {"exitCode": 137}}}])
    assert not classify([sidecar_killed]).retriable
    running = {"metadata": {"name": "job-worker-0"}, "status": {"phase": "Running"}}
    assert pod_failure(running) is None


def test_a_deleted_pod_was_taken_away_unless_the_trainer_had_its_own_verdict() -> None:
    """A drain or `kubectl delete pod`: SIGTERM, the trainer checkpoints, exits 143 (or anything but its verdicts)."""
    deleting = {"name": "job-master-0", "deletionTimestamp": "2026-12-01T12:00:00Z"}
    assert (classify([{**pod(**exited(143)), "metadata": deleting}]).reason) == "PodDeleted"
    assert classify([{**pod(**exited(1)), "metadata": deleting}]).retriable
    assert classify([{**pod(), "metadata": deleting}]).reason == "PodDeleted"
    assert not classify([{**pod(**exited(2)), "metadata": deleting}]).retriable


def test_a_failed_run_whose_failed_pod_is_gone_was_taken_away() -> None:
    """The training-operator saw the pod fail, then the pod was deleted before the operator looked."""
    running = {"metadata": {"name": "job-worker-0"}, "status": {"phase": "Running"}}
    for pods in ([], [running]):
        failure = classify(pods)
        assert (failure.retriable, failure.reason) == (True, "PodGone")


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(done, 30, 600) for done in range(7)] == [30, 60, 120, 240, 480, 600, 600]
    assert backoff_seconds(10_000, 1, 86_400) == 86_400
    assert backoff_seconds(3, 0, 600) == 0


def test_a_pod_that_failed_on_its_own_outweighs_one_deleted_after_it() -> None:
    """Master exits 1 (a bug); the training-operator then deletes the still-running worker (cleanPodPolicy), which
    exits 143 while being deleted: a bug, not a restart."""
    master = pod("job-master-0", **exited(1))
    worker = {**pod("job-worker-0", **exited(143)), "metadata": {"name": "job-worker-0", "deletionTimestamp": "x"}}
    for order in ([master, worker], [worker, master]):
        failure = classify(order)
        assert (failure.retriable, failure.reason) == (False, "TrainerFailed")
    evicted = pod("job-worker-1", reason="Evicted")
    assert classify([master, worker, evicted]).reason == "PodEvicted"  # a real eviction still wins
