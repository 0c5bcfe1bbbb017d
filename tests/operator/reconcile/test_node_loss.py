"""NodeNotReady: a run's pod on a node that stopped answering is reported, with what ends the wait; cleared after.

The cluster test (tests/cluster/test_node_loss.py) holds the same against the real API server's table of Nodes,
its taint eviction and pod garbage collector; these check the decisions and the cost (requests per check)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from finetune_contract import names
from finetune_operator.config import OperatorConfig
from finetune_operator.decisions.node_loss import OUT_OF_SERVICE_TAINT, node_detail, stuck_runs, unready_nodes
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.common import Context
from finetune_operator.reconcile.node_loss import CONDITION, check_lost_nodes, stuck_condition
from tests.manifests import minimal_job
from tests.operator.fake_kube import FakeKube, api_error

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STAMP = "2026-12-01T12:00:00Z"


def node(name: str, ready: str, reason: str = "KubeletReady") -> dict[str, Any]:
    condition = {"type": "Ready", "status": ready, "reason": reason, "lastTransitionTime": "2026-12-01T11:58:00Z"}
    if ready != "True":
        condition["message"] = "Kubelet stopped posting node status."
    return {"metadata": {"name": name}, "status": {"conditions": [condition]}}


def pod(name: str, child: str, node_name: str, terminating: bool = False, phase: str = "Running") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "ns", "labels": {names.TRAINING_OPERATOR_JOB_LABEL: child}}
    if terminating:
        metadata["deletionTimestamp"] = "2026-12-01T11:59:00Z"
    return {"metadata": metadata, "spec": {"nodeName": node_name}, "status": {"phase": phase}}


def table(*rows: tuple[str, str]) -> dict[str, Any]:
    columns = [{"name": "Name"}, {"name": "Status"}, {"name": "Roles"}]
    return {"columnDefinitions": columns, "rows": [{"cells": [name, text, "<none>"]} for name, text in rows]}


def test_unready_nodes_from_the_status_column() -> None:
    found = unready_nodes(
        table(
            ("a", "Ready"),
            ("b", "NotReady"),
            ("c", "Ready,SchedulingDisabled"),
            ("d", "NotReady,SchedulingDisabled"),
            ("e", "Unknown"),
        )
    )
    assert found == {"b", "d", "e"}
    assert unready_nodes({"columnDefinitions": [{"name": "Name"}], "rows": [{"cells": ["x"]}]}) == set()
    assert unready_nodes({}) == set()


def test_stuck_runs_pick_pods_of_runs_on_unready_nodes_only() -> None:
    pods = [
        pod("r-master-0", "r", "lost", terminating=True),
        pod("r-worker-0", "r", "lost"),
        pod("fine-master-0", "fine", "healthy"),
        pod("done-master-0", "done", "lost", phase="Succeeded"),
        {"metadata": {"name": "stray", "namespace": "ns", "labels": {}}, "spec": {"nodeName": "lost"}},
    ]
    stuck = stuck_runs(pods, {"lost"})
    assert set(stuck) == {("ns", "r")}
    assert (stuck[("ns", "r")].pod, stuck[("ns", "r")].terminating) == ("r-master-0", True)


def test_the_message_says_what_ends_the_wait() -> None:
    (stuck,) = stuck_runs([pod("r-master-0", "r", "gpu-7", terminating=True)], {"gpu-7"}).values()
    detail = node_detail(node("gpu-7", "Unknown", "NodeStatusUnknown"))
    message = stuck.message(detail)
    assert "pod r-master-0 is on node gpu-7" in message
    assert "NodeStatusUnknown since 2026-12-01T11:58:00Z: Kubelet stopped posting node status." in message
    assert "Terminating" in message
    assert f"kubectl taint nodes gpu-7 {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute" in message
    (waiting,) = stuck_runs([pod("r-master-0", "r", "gpu-7")], {"gpu-7"}).values()
    assert "toleration of node.kubernetes.io/unreachable" in waiting.message("")
    assert node_detail(None) == ""
    assert node_detail({"status": {}}) == ""


def test_condition_set_once_and_cleared() -> None:
    set_ = stuck_condition({}, "pod p is on node n", 1, STAMP)
    assert set_ is not None
    assert (set_["status"], set_["reason"]) == ("True", CONDITION)
    assert stuck_condition({"conditions": [set_]}, "pod p is on node n", 1, STAMP) is None
    assert stuck_condition({}, None, 1, STAMP) is None
    cleared = stuck_condition({"conditions": [set_]}, None, 1, STAMP)
    assert cleared is not None
    assert (cleared["status"], cleared["reason"]) == ("False", "NodeReady")


def context(fake: FakeKube) -> Context:
    return Context(kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics(), clock=lambda: NOW)


def running(fake: FakeKube, name: str, phase: str = "Running") -> None:
    fake.add_job(minimal_job(name), "ns")
    fake.jobs[("ns", name)]["status"] = {"phase": phase, "pytorchJobName": name}


def test_check_reports_the_stuck_run_posts_one_event_and_clears_when_the_node_is_back() -> None:
    fake = FakeKube()
    ctx = context(fake)
    running(fake, "stuck")
    running(fake, "fine")
    fake.nodes = {"lost": node("lost", "Unknown", "NodeStatusUnknown"), "ok": node("ok", "True")}
    fake.pods = {
        ("ns", "stuck"): [pod("stuck-master-0", "stuck", "lost", True)],
        ("ns", "fine"): [pod("f", "fine", "ok")],
    }
    assert check_lost_nodes(ctx, fake.list_jobs(()))
    assert check_lost_nodes(ctx, fake.list_jobs(()))
    conditions = {
        name: {c["type"]: c for c in job["status"].get("conditions", [])} for (_, name), job in fake.jobs.items()
    }
    assert conditions["stuck"][CONDITION]["status"] == "True"
    assert "node lost" in conditions["stuck"][CONDITION]["message"]
    assert CONDITION not in conditions["fine"]
    assert [(e[0], e[2]) for e in fake.events] == [("stuck", CONDITION)]
    assert [call for call in fake.calls if call.startswith("pods_on_node")] == ["pods_on_node lost"] * 2

    fake.nodes["lost"] = node("lost", "True")
    fake.jobs[("ns", "stuck")]["status"]["phase"] = "Succeeded"  # ended meanwhile: cleared all the same
    assert check_lost_nodes(ctx, fake.list_jobs(()))
    cleared = {c["type"]: c for c in fake.jobs[("ns", "stuck")]["status"]["conditions"]}[CONDITION]
    assert cleared["status"] == "False"


def test_no_running_job_no_request_and_a_forbidden_list_turns_the_check_off() -> None:
    fake = FakeKube()
    ctx = context(fake)
    running(fake, "queued", phase="Suspended")
    assert check_lost_nodes(ctx, fake.list_jobs(()))
    assert "node_table" not in fake.calls
    running(fake, "r")
    fake.refuse_nodes = api_error(403, 'nodes is forbidden: User "x" cannot list resource "nodes"')
    assert check_lost_nodes(ctx, fake.list_jobs(())) is False
