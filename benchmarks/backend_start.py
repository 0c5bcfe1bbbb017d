"""Time from a FineTuneJob created to its trainer's first exported optimizer step, with each backend, in one run.

Real parts: the local control plane (tests/cluster), the training-operator (PyTorchJob) and Kubeflow Trainer v2 +
JobSet (TrainJob) built from Go modules, the operator as a subprocess (`--backend pytorchjob`, then
`--backend trainjob`), the node agent running the pod as a real trainer process (tiny model, real data). Trials
alternate between the backends so drift on the machine (page cache, CPU) falls on both alike. Milestones per
trial: child created, pod bound to the node, trainer process started (pod Running), first step in metrics.jsonl.

    .venv/bin/python benchmarks/backend_start.py --trials 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client, config  # noqa: E402

from benchmarks.common import RESULTS, format_table, summary, write_results  # noqa: E402
from finetune_contract.checkpoints import METRICS_FILE  # noqa: E402
from finetune_contract.records import KIND, KIND_STEP  # noqa: E402
from finetune_operator.children.backends import BACKENDS, Backend  # noqa: E402
from tests.cluster.components import free_port  # noqa: E402
from tests.cluster.controlplane import start_gpu_cluster  # noqa: E402
from tests.cluster.nodeagent_handle import start_node_agent  # noqa: E402
from tests.cluster.operator_process import ConfiguredOperator, apply_crd  # noqa: E402
from tests.cluster.trainer_jobs import create_ftj, get_ftj, trainer_job  # noqa: E402
from tests.cluster.trainer_v2 import start_trainer_v2  # noqa: E402

T = TypeVar("T")
MILESTONES = ("child_created", "pod_bound", "pod_running", "first_step")


def wait(probe: Callable[[], T | None], timeout: float = 300, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError("milestone not reached")


def first_step_time(output: Path) -> float | None:
    path = output / METRICS_FILE
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get(KIND) == KIND_STEP:
            return float(record["time"])
    return None


def trial(api: client.ApiClient, backend: Backend, name: str, output: Path) -> dict[str, float]:
    """Seconds from create to each milestone (wall clock; the trainer stamps its records with time.time())."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    manifest = trainer_job(name, output, free_port(), training={"maxSteps": 5}, early_stopping={"enabled": False})
    created = time.time()
    create_ftj(api, "default", manifest)
    child = backend.child_name(name)

    def child_exists() -> float | None:
        try:
            custom.get_namespaced_custom_object(backend.group, backend.version, "default", backend.plural, child)
        except client.ApiException:
            return None
        return time.time()

    def pod_state(running: bool) -> float | None:
        pods = core.list_namespaced_pod("default", label_selector=f"{backend.pod_label}={child}").items
        for pod in pods:
            if pod.spec.node_name and (not running or pod.status.phase == "Running"):
                return time.time()
        return None

    out = {"child_created": wait(child_exists) - created}
    out["pod_bound"] = wait(lambda: pod_state(False)) - created
    out["pod_running"] = wait(lambda: pod_state(True)) - created
    out["first_step"] = wait(lambda: first_step_time(output), interval=0.2) - created
    wait(lambda: (get_ftj(api, "default", name).get("status") or {}).get("phase") == "Succeeded", 300, 0.5)
    custom.delete_namespaced_custom_object("finetune.dev", "v1alpha1", "default", "finetunejobs", name)
    wait(lambda: not core.list_namespaced_pod("default", label_selector=f"{backend.pod_label}={child}").items, 120)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3, help="trials per backend")
    parser.add_argument("--out", type=Path, default=RESULTS / "backend_start.json")
    args = parser.parse_args()
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in BACKENDS}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cluster = start_gpu_cluster(tmp / "cluster")
        agent = trainer = None
        try:
            agent = start_node_agent(cluster.kubeconfig, tmp / "agent", "agent-node", gpus=1)
            cluster.wait_condition("node/agent-node", "Ready", timeout=60)
            trainer = start_trainer_v2(cluster, tmp / "trainer-v2")
            apply_crd(cluster)
            config.load_kube_config(str(cluster.kubeconfig))
            api = client.ApiClient()
            for index in range(args.trials):
                for name, backend in BACKENDS.items():
                    log_dir = tmp / f"op-{name}-{index}"
                    log_dir.mkdir()
                    operator = ConfiguredOperator(cluster, log_dir, ["--backend", name]).start()
                    try:
                        job = f"start-{name}-{index}"
                        timings[name].append(trial(api, backend, job, tmp / job))
                    finally:
                        operator.stop()
                    print(f"{name} trial {index}: {timings[name][-1]}", flush=True)
        finally:
            if trainer is not None:
                trainer.stop()
            if agent is not None:
                agent.stop()
            cluster.stop()
    rows: list[list[Any]] = []
    result: dict[str, Any] = {"settings": {"trials": args.trials}, "timings_s": timings, "summary_s": {}}
    for milestone in MILESTONES:
        per = {name: summary([t[milestone] for t in timings[name]]) for name in BACKENDS}
        result["summary_s"][milestone] = per
        ratio = per["trainjob"]["p50"] / per["pytorchjob"]["p50"] if per["pytorchjob"]["p50"] else float("nan")
        rows.append([milestone, per["pytorchjob"]["p50"], per["trainjob"]["p50"], f"{ratio:.2f}x"])
    print(format_table(["created -> ", "PyTorchJob p50 s", "TrainJob p50 s", "TrainJob/PyTorchJob"], rows))
    write_results(args.out, result)


if __name__ == "__main__":
    main()
