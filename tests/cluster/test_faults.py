"""Fault injection on the real control plane: the operator SIGKILLed again and again while FineTuneJobs are being
applied, changed and deleted. It must end as if nothing had happened: exactly one PyTorchJob per live job (owned by
it, under its recorded name), none for deleted jobs, every mutable change carried to the child, every job Running.

Sizes: FAULT_JOBS (default 24) jobs, FAULT_KILLS (default 6) kills in CI; raise them for a nightly run.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from finetune_contract import names
from finetune_operator.kube import owned_by
from tests.cluster.controlplane import Cluster
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.pytorchjobs import job_pods
from tests.cluster.test_operator import GROUP, PLURAL, VERSION, children, patch_spec, small_job
from tests.cluster.trainer_jobs import create_ftj
from tests.cluster.waiting import stays, wait_for

pytestmark = pytest.mark.cluster
JOBS = int(os.environ.get("FAULT_JOBS", 24))  # the kwok nodes hold 32 one-GPU pods
KILLS = int(os.environ.get("FAULT_KILLS", 6))
CONVERGE_S = 120


@pytest.fixture(autouse=True)
def cleared(api: client.ApiClient, namespace: str, pytorchjob_garbage_collection: None) -> Iterator[None]:
    """After each test: its jobs deleted and their pods gone (the kwok nodes' GPUs are the next tests')."""
    yield
    custom = client.CustomObjectsApi(api)
    for job in list_ftjs(api, namespace):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job["metadata"]["name"])
    pods = client.CoreV1Api(api)
    wait_for(lambda: not pods.list_namespaced_pod(namespace).items, 120, f"the pods of {namespace} to go")


def list_ftjs(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return list(listed["items"])


def workload(api: client.ApiClient, namespace: str, done: threading.Event, errors: list[BaseException]) -> None:
    """Create every job, then change a third (queue, then suspend and resume), then delete a sixth."""
    try:
        for index in range(JOBS):
            create_ftj(api, namespace, small_job(f"storm-{index}", nodes=1, gpus=1))
        for index in range(0, JOBS, 3):
            patch_spec(api, namespace, f"storm-{index}", {"queueName": "team-b"})
        for index in range(1, JOBS, 6):
            patch_spec(api, namespace, f"storm-{index}", {"suspend": True})
        for index in range(1, JOBS, 6):
            patch_spec(api, namespace, f"storm-{index}", {"suspend": False})
        for index in range(2, JOBS, 6):
            client.CustomObjectsApi(api).delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, f"storm-{index}"
            )
    except BaseException as error:  # reported by the test, not lost in the thread
        errors.append(error)
    finally:
        done.set()


def converged(api: client.ApiClient, namespace: str) -> str:
    """'' when every invariant holds, else what does not (for the timeout message)."""
    jobs = {job["metadata"]["name"]: job for job in list_ftjs(api, namespace)}
    kids = children(api, namespace)
    problems = []
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for child in kids:
        owner = next(iter(child["metadata"].get("ownerReferences") or []), {})
        by_owner.setdefault(owner.get("name", "?"), []).append(child)
    for name, job in jobs.items():
        mine = [child for child in by_owner.get(name, []) if owned_by(child, job)]
        if len(mine) != 1:
            problems.append(f"{name}: {len(mine)} children")
            continue
        child = mine[0]
        status = job.get("status") or {}
        if status.get("pytorchJobName") != child["metadata"]["name"]:
            problems.append(f"{name}: status names {status.get('pytorchJobName')}")
        if status.get("phase") != "Running":
            problems.append(f"{name}: phase {status.get('phase')}")
        labels = child["metadata"].get("labels") or {}
        if labels.get(names.QUEUE_LABEL) != job["spec"].get("queueName"):
            problems.append(f"{name}: queue label {labels.get(names.QUEUE_LABEL)}")
        if bool(child["spec"].get("runPolicy", {}).get("suspend", False)) != bool(job["spec"].get("suspend")):
            problems.append(f"{name}: child suspend differs")
    orphans = [owner for owner in by_owner if owner not in jobs]
    if orphans:
        problems.append(f"children of deleted jobs: {sorted(orphans)}")
    return "; ".join(problems)


def test_operator_sigkilled_repeatedly_under_load_converges(
    operator_process: OperatorProcess,
    api: client.ApiClient,
    namespace: str,
    pytorchjob_garbage_collection: None,
) -> None:
    done, errors = threading.Event(), list[BaseException]()
    thread = threading.Thread(target=workload, args=(api, namespace, done, errors), daemon=True)
    chooser = random.Random(0)
    kills = 0
    thread.start()
    try:
        while kills < KILLS:
            time.sleep(chooser.uniform(0.3, 1.5))  # killed mid-create, mid-status-write, mid-relist
            operator_process.kill()
            kills += 1
            operator_process.start()
    finally:
        if not operator_process.alive():
            operator_process.start()
    thread.join(timeout=300)
    assert not errors, errors
    assert done.is_set()
    deleted = len(range(2, JOBS, 6))

    def settled() -> bool:
        return not converged(api, namespace)

    try:
        operator_process.wait_for(settled, CONVERGE_S, "every invariant after the storm", interval=1)
    except Exception as error:
        raise AssertionError(f"{error}\nnot converged: {converged(api, namespace)}") from None
    assert len(list_ftjs(api, namespace)) == JOBS - deleted
    assert len(children(api, namespace)) == JOBS - deleted
    stays(lambda: not converged(api, namespace), 3, "the converged state to hold")
    gone = [f"storm-{index}" for index in range(2, JOBS, 6)]
    operator_process.wait_for(
        lambda: not any(job_pods(api, namespace, name) for name in gone), 60, "the deleted jobs' pods to go"
    )
    assert kills == KILLS


def test_apiserver_restart_with_compacted_history_the_operator_relists_and_carries_on(
    operator_process: OperatorProcess,
    api: client.ApiClient,
    namespace: str,
    cluster: Cluster,
    pytorchjob_garbage_collection: None,
) -> None:
    """kube-apiserver stopped (etcd kept) and etcd compacted while it is down: the operator's watches come back to
    a resourceVersion that no longer exists (410 Gone) and must relist. Then it must still act on new jobs, on
    changes and on deletions — in the same process, never restarted."""
    for name in ("before-a", "before-b"):
        create_ftj(api, namespace, small_job(name, nodes=1, gpus=1))
    operator_process.wait_for(lambda: not converged(api, namespace) and len(children(api, namespace)) == 2, 60, "2")
    pid = operator_process.pid
    compacted: list[int] = []

    def while_down() -> None:
        time.sleep(3)  # the operator's watches and requests fail meanwhile; leases keep etcd's revision moving
        compacted.append(cluster.compact_etcd())

    downtime = cluster.restart_apiserver(while_down)
    create_ftj(api, namespace, small_job("after-c", nodes=1, gpus=1))
    patch_spec(api, namespace, "before-a", {"queueName": "team-c"})
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "before-b")
    try:
        operator_process.wait_for(
            lambda: not converged(api, namespace) and len(children(api, namespace)) == 2, CONVERGE_S, "converged"
        )
    except Exception as error:
        raise AssertionError(f"{error}\nnot converged: {converged(api, namespace)}") from None
    assert {job["metadata"]["name"] for job in list_ftjs(api, namespace)} == {"before-a", "after-c"}
    assert operator_process.alive()
    assert operator_process.pid == pid, "the operator was restarted instead of carrying on"
    assert compacted
    assert downtime >= 3
