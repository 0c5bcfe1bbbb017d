"""Early-stop decision latency: from the first step over the threshold to the PyTorchJob's deletion.

Real parts: the local control plane (tests/cluster), the operator as a subprocess with --prometheus-url, a real
Prometheus scraping the trainer's own metrics exporter (finetune_trainer.metrics.PrometheusLogger, fed step
records at a fixed rate instead of running a model, so the timing is not blurred by training speed).
windowSteps is 1, so the first bad step is the crossing. Target: <= scrape interval + evaluation interval + 5 s.

    .venv/bin/python benchmarks/early_stop_latency.py --trials 3 --scrape-interval 1 --evaluation-interval 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS, format_table, summary, write_results  # noqa: E402
from finetune_operator.kube import Kube  # noqa: E402
from finetune_trainer.metrics import Identity, PrometheusLogger  # noqa: E402
from tests.cluster.controlplane import start_gpu_cluster  # noqa: E402
from tests.operator.metrics.test_source import start_prometheus  # noqa: E402
from tests.trainer.test_metrics import free_port, record  # noqa: E402


def job_manifest(name: str, interval: int) -> str:
    return f"""apiVersion: finetune.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: {name}, namespace: default}}
spec:
  model: {{name: org/model}}
  data: {{datasets: [{{path: /data.jsonl}}]}}
  resources: {{nodes: 1, gpusPerNode: 1}}
  earlyStopping: {{checkAfterSteps: 2, windowSteps: 1, maxGradNorm: 5, evaluationIntervalSeconds: {interval}}}
"""


def feed(exporter: PrometheusLogger, crossed: threading.Event, stop: threading.Event, good_steps: int) -> dict:
    """Export one step every 0.5 s: good grad norms, then bad ones; returns when the first bad step was exported."""
    out: dict[str, float] = {}
    step = 0
    while not stop.is_set():
        step += 1
        bad = step > good_steps
        exporter.log_step(record(step, grad_norm=50.0 if bad else 1.0, total_steps=1000, samples=8))
        if bad and "crossed" not in out:
            out["crossed"] = time.time()
            crossed.set()
        stop.wait(0.5)
    return out


def trial(kube: Kube, kubectl: list[str], prometheus_targets: Path, name: str, args: argparse.Namespace) -> float:
    exporter = PrometheusLogger(Identity(name, "default"), free_port(), addr="127.0.0.1", total_steps=1000)
    prometheus_targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{exporter.port}"]}]))
    subprocess.run(
        [*kubectl, "apply", "-f", "-"],
        input=job_manifest(name, args.evaluation_interval).encode(),
        check=True,
        capture_output=True,
    )
    while (kube.get_job("default", name) or {}).get("status", {}).get("phase") != "Running":
        time.sleep(0.2)
    crossed, stop = threading.Event(), threading.Event()
    result: dict = {}
    feeder = threading.Thread(target=lambda: result.update(feed(exporter, crossed, stop, args.good_steps)))
    feeder.start()
    crossed.wait()
    while kube.get_child("default", name) is not None:
        time.sleep(0.05)
    deleted = time.time()
    stop.set()
    feeder.join()
    exporter.close()
    return deleted - result["crossed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--scrape-interval", type=int, default=1)
    parser.add_argument("--evaluation-interval", type=int, default=5)
    parser.add_argument("--good-steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS / "early_stop_latency.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cluster = start_gpu_cluster(tmp / "cluster")
        prometheus = operator = None
        try:
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
            kubectl = [cluster.bin("kubectl"), "--kubeconfig", str(cluster.kubeconfig)]
            subprocess.run([*kubectl, "apply", "--server-side", "-f", str(REPO / "crds/finetunejob.yaml")], check=True)
            targets = tmp / "targets.json"
            targets.write_text("[]")
            prom_port = free_port()
            prometheus = start_prometheus(tmp, 0, prom_port, scrape_interval=args.scrape_interval, file_sd=targets)
            operator = subprocess.Popen(
                [
                    str(REPO / ".venv/bin/finetune"),
                    "operator",
                    "--all-namespaces",
                    "--health-port",
                    str(free_port()),
                    "--metrics-port",
                    str(free_port()),
                    "--prometheus-url",
                    f"http://127.0.0.1:{prom_port}",
                ],
                env=env,
                stderr=subprocess.DEVNULL,
            )
            from kubernetes import client, config

            config.load_kube_config(str(cluster.kubeconfig))
            kube = Kube(client.ApiClient())
            latencies = [trial(kube, kubectl, targets, f"latency-{index}", args) for index in range(args.trials)]
        finally:
            if operator is not None:
                operator.send_signal(signal.SIGTERM)
                operator.wait(timeout=30)
            if prometheus is not None:
                os.killpg(prometheus.pid, signal.SIGKILL)
            cluster.stop()
    budget = args.scrape_interval + args.evaluation_interval + 5
    figures = summary(latencies)
    print(f"scrape interval {args.scrape_interval} s, evaluation interval {args.evaluation_interval} s, windowSteps 1")
    rows = [[f"{args.trials} trials", figures["p50"], figures["max"], float(budget), f"{figures['max'] / budget:.2f}x"]]
    print(format_table(["decision latency", "p50 s", "max s", "target s", "max/target"], rows))
    result = {
        "settings": vars(args) | {"out": str(args.out)},
        "scrape_interval_s": args.scrape_interval,
        "evaluation_interval_s": args.evaluation_interval,
        "latencies_s": latencies,
        "summary_s": figures,
        "target_s": budget,
        "max_over_target": figures["max"] / budget,
        "target_met": figures["max"] <= budget,
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
