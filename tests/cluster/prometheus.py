"""A real Prometheus server (Debian package `prometheus`) for the early-stopping tests, on 127.0.0.1.

Targets: Debian builds Prometheus without Kubernetes service discovery, so `PodDiscovery` plays that part — a
thread that lists the node agent's pods through the API server (what kubernetes_sd role `pod` does) and writes a
file_sd file with `<podIP>:<port>` for every Running pod's container port named `metrics`, labelled `pod` and
`pod_namespace`. A trainer pod is scraped as soon as the node agent reports its IP, and dropped when it goes.
`honor_labels: true` keeps the trainer's own `namespace` label (without it Prometheus renames a clashing target
label, and the operator's selector `{finetunejob=..., namespace=...}` would match nothing — a real PodMonitor
needs `honorLabels: true` for the same reason).

One server per test module; `kill()` (SIGKILL, mid-run) and `start()` again on the same port and TSDB, as a
crashed and restarted Prometheus would be.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.cluster.components import free_port
from tests.cluster.processes import Process, spawn, stop_all

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_INTERVAL = "1s"
JOB = "finetune-trainers"
START_TIMEOUT_S = 60.0
DISCOVERY_INTERVAL_S = 0.5


def config(targets_file: Path) -> dict[str, Any]:
    """Scrape what `targets_file` lists, every second; the trainer's labels win over the target's."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": JOB,
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
            }
        ],
    }


def pod_targets(pods: list[client.V1Pod]) -> list[dict[str, Any]]:
    """file_sd groups: one per Running pod with an IP and a container port named `metrics` (or, without one, the
    prometheus.io/scrape + prometheus.io/port annotations)."""
    groups = []
    for pod in sorted(pods, key=lambda pod: (pod.metadata.namespace, pod.metadata.name)):
        if pod.status.phase != "Running" or not pod.status.pod_ip or pod.metadata.deletion_timestamp:
            continue
        ports = [port.container_port for c in pod.spec.containers for port in c.ports or [] if port.name == "metrics"]
        annotations = pod.metadata.annotations or {}
        if not ports and annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port"):
            # The common annotation-based scrape config: what finds a TrainJob's pods, whose container ports
            # Trainer v2.3's runtime patch cannot declare.
            ports = [int(annotations["prometheus.io/port"])]
        if ports:
            groups.append(
                {
                    "targets": [f"{pod.status.pod_ip}:{port}" for port in ports],
                    "labels": {"pod": pod.metadata.name, "pod_namespace": pod.metadata.namespace},
                }
            )
    return groups


class PodDiscovery:
    """Keeps a file_sd file in step with the metrics ports of the pods bound to one node."""

    def __init__(self, api: client.ApiClient, node: str, targets_file: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self.targets_file = targets_file
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="pod-discovery", daemon=True)
        self.errors = 0
        self._write([])

    def start(self) -> PodDiscovery:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        written: list[dict[str, Any]] = []
        while not self.stopping.wait(DISCOVERY_INTERVAL_S):
            try:
                pods = self.core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={self.node}", _request_timeout=10
                ).items
            except Exception:  # the API server briefly unavailable: keep the last targets
                self.errors += 1
                continue
            targets = pod_targets(pods)
            if targets != written:
                self._write(targets)
                written = targets

    def _write(self, targets: list[dict[str, Any]]) -> None:
        partial = self.targets_file.with_suffix(".tmp")
        partial.write_text(json.dumps(targets, indent=1))
        partial.rename(self.targets_file)  # atomic: Prometheus never reads half a file


class PrometheusServer:
    """/usr/bin/prometheus on 127.0.0.1:<port>, TSDB in `workdir`, targets from a file_sd file; start, kill, start."""

    def __init__(self, workdir: Path, targets_file: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config(targets_file), sort_keys=False))
        self.process: Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            PROMETHEUS,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]

    def check_config(self) -> None:
        """promtool's verdict on the generated file (fails loudly on a typo rather than at scrape time)."""
        promtool = shutil.which("promtool") or "/usr/bin/promtool"
        result = subprocess.run(
            [promtool, "check", "config", str(self.config_file)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"promtool rejected {self.config_file}:\n{result.stdout}{result.stderr}"

    def start(self, timeout: float = START_TIMEOUT_S) -> PrometheusServer:
        assert not self.alive(), "prometheus already running"
        self.starts += 1
        self.process = spawn("prometheus", self.argv(), self.workdir / "prometheus.log")
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.alive():
                raise AssertionError(f"prometheus exited at start:\n{self.process.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready after {timeout:.0f}s:\n{self.process.log_tail()}")
            time.sleep(0.2)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush — a crash, or an OOM kill."""
        assert self.process is not None
        assert self.process.popen is not None
        self.process.popen.kill()
        self.process.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            stop_all([self.process])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (empty when Prometheus is down or the query fails)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                payload: dict[str, Any] = json.load(response)
        except (OSError, ValueError):
            return []
        return list(payload.get("data", {}).get("result", []))

    def targets(self) -> list[dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=5) as response:
                payload: dict[str, Any] = json.load(response)
        except (OSError, ValueError):
            return []
        return list(payload.get("data", {}).get("activeTargets", []))

    def log_tail(self, lines: int = 30) -> str:
        return self.process.log_tail(lines) if self.process is not None else "(never started)"
