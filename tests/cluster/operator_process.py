"""The operator under test as a real process: `finetune operator` against the test cluster's API server.

Started exactly as a user would start it (the console script of this virtualenv, KUBECONFIG in the
environment), in its own session with PR_SET_PDEATHSIG (a killed pytest takes it along), stdout and stderr in
separate files so the JSON-lines contract of stderr can be checked. Nothing about it is mocked: tests talk to
it only through the cluster, its liveness endpoint and its /metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from finetune_operator.children.backends import Backend
from tests.cluster.components import free_port
from tests.cluster.controlplane import Cluster
from tests.cluster.processes import _die_with_parent
from tests.cluster.waiting import WaitTimeoutError, wait_for
from tests.manifests import REPO_ROOT

T = TypeVar("T")

FINETUNE = Path(sys.executable).with_name("finetune")  # the console script next to the interpreter running pytest
TRAINER_IMAGE = "test/trainer:1"
CRD_FILE = REPO_ROOT / "crds" / "finetunejob.yaml"
CRD_NAME = "finetunejobs.finetune.dev"
SWEEP_CRD_FILE = REPO_ROOT / "crds" / "finetunesweep.yaml"
SWEEP_CRD_NAME = "finetunesweeps.finetune.dev"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def apply_crd(cluster: Cluster) -> None:
    """Install the FineTuneJob and FineTuneSweep CRDs the way the docs say (server-side apply); the operator never
    installs them."""
    for path, name in ((CRD_FILE, CRD_NAME), (SWEEP_CRD_FILE, SWEEP_CRD_NAME)):
        cluster.kubectl("apply", "--server-side", "--field-manager=finetune-tests", "-f", str(path))
        cluster.wait_condition(f"crd/{name}", "Established")
        # Established comes a moment before the storage serves lists (429 "storage is (re)initializing"): an
        # operator started in between logs ERRORs for a state no real cluster is in for long.
        wait_for(
            lambda name=name: cluster.kubectl("get", name, "--all-namespaces", check=False).returncode == 0,
            60,
            f"{name} lists to be served",
        )


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> (sample name, labels, value) for every sample line."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def no_pod_scraping() -> list[str]:
    """Point early stopping at a closed loopback port. Without a Prometheus URL the operator scrapes Master pods
    directly, and kwok's fake pods have cluster IPs (10.244.x) that must never be contacted from a test: traffic
    may only go to 127.0.0.0/8. Metrics are then unavailable (a condition), which is all these tests need."""
    return ["--prometheus-url", f"http://127.0.0.1:{free_port()}"]


class OperatorProcess:
    """One `finetune operator` process at a time; start/stop/kill it as often as a test needs."""

    def __init__(self, cluster: Cluster, log_dir: Path, namespaces: Sequence[str] = ()) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.namespaces = tuple(namespaces)
        self.health_port = 0
        self.metrics_port = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        """The operator's command line; early stopping reads a dead loopback Prometheus (see no_pod_scraping)."""
        scope = [arg for ns in self.namespaces for arg in ("--namespace", ns)] or ["--all-namespaces"]
        return [
            str(FINETUNE),
            "operator",
            *scope,
            "--health-host",
            "127.0.0.1",
            "--metrics-host",
            "127.0.0.1",
            "--health-port",
            str(self.health_port),
            "--metrics-port",
            str(self.metrics_port),
            "--trainer-image",
            TRAINER_IMAGE,
            "--pod-check-interval",
            "1",
            # Explicit: once a test has started Trainer v2 (a session fixture), its CRDs stay installed and the
            # default `auto` would make every later operator run TrainJobs. Tests of the trainjob backend (and of
            # `auto`) pass their own --backend, which argparse takes over this one (the last wins).
            "--backend",
            "pytorchjob",
            *no_pod_scraping(),
        ]

    @property
    def stderr_log(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.stderr.log"

    @property
    def stdout_log(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.stdout.log"

    def start(self, timeout: float = START_TIMEOUT_S) -> OperatorProcess:
        """Spawn on fresh ports and wait for /healthz 200; fail with the log tail if it exits first."""
        assert not self.alive(), "operator already running"
        self.starts += 1
        self.health_port, self.metrics_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        with self.stdout_log.open("wb") as out, self.stderr_log.open("wb") as err:
            self.popen = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=self.log_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.wait_for(lambda: self.healthz() == 200, timeout, "the operator's /healthz to answer 200")
        return self

    def alive(self) -> bool:
        """Running and not a zombie (never reaps: see `_reap`)."""
        return self.popen is not None and self.popen.returncode is None and not self._exited(0)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait; return the exit code (None if it was never started). SIGKILL if it hangs."""
        if self.popen is None:
            return None
        if self.popen.returncode is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            if not self._exited(timeout):
                self._reap()
                raise AssertionError(
                    f"operator ignored SIGTERM for {timeout:.0f}s (killed); stderr tail:\n{self.log_tail()}"
                )
            self._reap()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, no chance to clean up (a node crash, an OOM kill)."""
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGKILL)
        self._exited(STOP_TIMEOUT_S)
        self._reap()

    def _exited(self, timeout: float) -> bool:
        """Wait until the process is a zombie or gone, without reaping it (its group id stays ours)."""
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                return True
            if state == "Z":
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _reap(self) -> None:
        """SIGKILL whatever is left in its process group (it, or anything it forked), then reap it."""
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT_S)

    # -- observing it -------------------------------------------------------------------------------

    def _get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), ""
        except OSError:
            return 0, ""

    def healthz(self) -> int:
        """HTTP status of GET /healthz; 0 when nothing answers."""
        return self._get(self.health_port, "/healthz")[0]

    def metrics(self) -> str:
        status, body = self._get(self.metrics_port, "/metrics")
        assert status == 200, f"GET /metrics on port {self.metrics_port} answered {status}"
        return body

    def metric_sum(self, name: str, **labels: str) -> float:
        """Sum of every sample called `name` whose labels include `labels`."""
        return sum(
            value
            for sample, have, value in parse_metrics(self.metrics())
            if sample == name and labels.items() <= have.items()
        )

    def metric_by_label(self, name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for sample, have, value in parse_metrics(self.metrics()):
            if sample == name and label in have:
                found[have[label]] = found.get(have[label], 0.0) + value
        return found

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.stderr_log.read_text(errors="replace")
        except OSError:
            return "(no stderr log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        """Every stderr line of the current process, parsed as JSON (raises on a line that is not)."""
        records = []
        for number, line in enumerate(self.stderr_log.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise AssertionError(f"stderr line {number} is not JSON ({error}): {line[:300]!r}") from None
        return records

    def wait_for(self, probe: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
        """`waiting.wait_for`, failing at once if the operator died, with its log tail on any failure."""

        def checked() -> T:
            if not self.alive():
                if self.popen is not None:
                    self._reap()
                code = self.popen.returncode if self.popen else None
                raise AssertionError(
                    f"operator exited (code {code}) while waiting for {what}; stderr tail:\n{self.log_tail()}"
                )
            return probe()

        try:
            return wait_for(checked, timeout, what, interval)
        except WaitTimeoutError as error:
            raise WaitTimeoutError(f"{error}\noperator stderr tail:\n{self.log_tail(15)}") from None


def wait_stable(probe: Callable[[], T], window: float, timeout: float, what: str) -> T:
    """Wait until `probe` returns the same value for `window` seconds in a row; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    value, since = probe(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = probe()
        if current != value:
            value, since = current, time.monotonic()
        elif time.monotonic() - since >= window:
            return value
    raise WaitTimeoutError(f"{what} kept changing for {timeout:.0f}s (last: {value!r})")


class ConfiguredOperator(OperatorProcess):
    """OperatorProcess with both listeners on loopback and extra flags (e.g. its own --prometheus-url)."""

    def __init__(self, cluster: Cluster, log_dir: Path, extra: Sequence[str] = ()) -> None:
        super().__init__(cluster, log_dir)
        self.extra = list(extra)

    def argv(self) -> list[str]:
        base = super().argv()
        cut = base.index("--prometheus-url")  # the base's dead loopback URL: these tests choose their own source
        return [*base[:cut], *base[cut + 2 :], "--health-host=127.0.0.1", "--metrics-host=127.0.0.1", *self.extra]


@dataclass
class BackendOperator:
    """An operator started with `--backend <kind>`, and that kind (the `backend_operator` fixture)."""

    operator: ConfiguredOperator
    backend: Backend


def stop_cleanly(operator: OperatorProcess) -> None:
    """Stop it with SIGTERM and require that it was alive and exited 0."""
    was_alive = operator.alive()
    code = operator.stop()
    assert was_alive, f"the operator had died (code {code}):\n{operator.log_tail()}"
    assert code == 0, f"the operator exited {code} on SIGTERM, not 0:\n{operator.log_tail()}"
