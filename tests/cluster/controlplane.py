"""Start and stop a real Kubernetes control plane on 127.0.0.1 from the binaries build.sh made.

Our own launcher rather than kwokctl: every process is our child, in its own process group, bound to
127.0.0.1, with its log in the state folder, so teardown can prove that nothing is left behind.
Components: etcd, kube-apiserver, kube-controller-manager (garbage collection, namespace deletion,
service accounts), kube-scheduler, kwok (fake nodes and pod lifecycle Stages) and the Kubeflow
training-operator v1 (PyTorchJob only, out of cluster, its webhooks never registered with the API).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import components
from tests.cluster.components import FAKE_NODE_ANNOTATION, Ports
from tests.cluster.pki import Pki, make_pki
from tests.cluster.processes import Process, spawn, stop_all

HERE = Path(__file__).resolve().parent
STAGES_DIR = HERE / "stages"
CACHE = Path(os.environ.get("FINETUNE_CLUSTER_CACHE", Path.home() / ".cache/finetune-operator/cluster"))
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "training-operator",
    "helm",
)
PYTORCHJOB_CRD = "kubeflow.org_pytorchjobs.yaml"
OPERATOR_NAMESPACE = "kubeflow"
WEBHOOK_SECRET = "training-operator-webhook-cert"
# Hard-coded in training-operator's pkg/cert; in a pod the kubelet mounts the Secret there.
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
STARTUP_TIMEOUT_S = 120.0


def stage_files(cache: Path) -> list[Path]:
    """kwok's stock Stages (from the kwok module, placed in the cache by build.sh) and our own."""
    return sorted((cache / "stages").glob("*.yaml")) + sorted(STAGES_DIR.glob("*.yaml"))


class ClusterError(RuntimeError):
    """The control plane could not be started or did not become ready."""


def missing_artifacts(cache: Path = CACHE) -> list[str]:
    """Names of binaries or files that build.sh should have produced but did not."""
    missing = [name for name in BINARIES if not os.access(cache / "bin" / name, os.X_OK)]
    if not (cache / "crds" / PYTORCHJOB_CRD).is_file():
        missing.append(f"crds/{PYTORCHJOB_CRD}")
    if not list((cache / "stages").glob("*.yaml")):
        missing.append("stages/ (kwok's stock Stages)")
    return missing


@dataclass
class Cluster:
    """A running control plane; `kubeconfig` is what tests and kubectl use."""

    state_dir: Path
    cache: Path = CACHE
    ports: Ports = field(default_factory=Ports)
    processes: list[Process] = field(default_factory=list)
    written: dict[Path, bytes] = field(default_factory=dict)  # files outside state_dir we own
    die_with_parent: bool = True
    pki: Pki | None = field(default=None, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def bin(self, name: str) -> str:
        return str(self.cache / "bin" / name)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bring every component up in dependency order; on any failure stop what started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process (reverse start order), SIGTERM then SIGKILL per process group."""
        stop_all(self.processes)
        self.processes.clear()
        self._write_state()
        remove_if_unchanged({path: hashlib.sha256(content).hexdigest() for path, content in self.written.items()})
        self.written.clear()

    def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        pki = self.pki = make_pki(self.state_dir / "pki")
        self._write_kubeconfig(pki)
        argv = components.Argv(self.cache / "bin", self.state_dir, self.kubeconfig, self.ports, pki)
        self._run("etcd", argv.etcd())
        self._wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{self.ports.etcd_client}/health"))
        self._run("kube-apiserver", argv.apiserver())
        self._wait("kube-apiserver", lambda: self._api_ok(pki, "/readyz"))
        self._run("kube-controller-manager", argv.controller_manager())
        self._run("kube-scheduler", argv.scheduler())
        self._run("kwok", argv.kwok(stage_files(self.cache)), env={"HOME": str(self.state_dir / "kwok-home")})
        self._install_training_operator_prerequisites()
        operator_env = {"KUBECONFIG": str(self.kubeconfig), "MY_POD_NAMESPACE": OPERATOR_NAMESPACE}
        self._run("training-operator", argv.training_operator(), env=operator_env)
        self._wait("webhook certificates", self._mirror_webhook_secret)
        self._write_state()
        self._wait("training-operator", lambda: _http_ok(f"http://127.0.0.1:{self.ports.operator_health}/readyz"))
        self._wait(
            "default service account",
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
        )

    def _install_training_operator_prerequisites(self) -> None:
        """The PyTorchJob CRD (server-side: it is too big for the last-applied annotation), plus
        the namespace and empty Secret the operator's certificate rotator insists on."""
        crd = self.cache / "crds" / PYTORCHJOB_CRD
        self.kubectl("apply", "--server-side", "--field-manager=finetune-tests", "-f", str(crd))
        self.wait_condition("crd/pytorchjobs.kubeflow.org", "Established")
        self.kubectl("create", "namespace", OPERATOR_NAMESPACE)
        self.kubectl("create", "secret", "generic", WEBHOOK_SECRET, "-n", OPERATOR_NAMESPACE)

    def _mirror_webhook_secret(self) -> bool:
        """Do the kubelet's job for the out-of-cluster operator: copy the Secret its certificate
        rotator filled into the directory it waits on (it reports ready only once the files exist)."""
        result = self.kubectl("get", "secret", WEBHOOK_SECRET, "-n", OPERATOR_NAMESPACE, "-o", "json", check=False)
        data = json.loads(result.stdout).get("data", {}) if result.returncode == 0 else {}
        if not {"tls.crt", "tls.key"} <= data.keys():
            return False
        WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            target = WEBHOOK_CERT_DIR / name
            content = base64.b64decode(data[name])
            target.write_bytes(content)
            target.chmod(0o600)
            self.written[target] = content
        return True

    # -- helpers --------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; raise with its stderr when `check`."""
        result = subprocess.run(
            [
                self.bin("kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.state_dir / 'kube-cache'}",
                *args,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def wait_condition(self, resource: str, condition: str, timeout: float = 60) -> None:
        """Poll until `resource` has condition=True. (`kubectl wait` errors out, instead of waiting,
        while an object has no status.conditions yet, as right after a CRD or Node is created.)"""
        jsonpath = f'jsonpath={{.status.conditions[?(@.type=="{condition}")].status}}'
        self._wait(
            f"{resource} {condition}",
            lambda: self.kubectl("get", resource, "-o", jsonpath, check=False).stdout.strip() == "True",
            timeout,
        )

    def add_gpu_node(self, name: str, gpus: int = 8, product: str = GPU_PRODUCT) -> None:
        """Register a kwok-managed fake node with `gpus` nvidia.com/gpu and wait until Ready."""
        self.kubectl("apply", "-f", "-", stdin=json.dumps(gpu_node_manifest(name, gpus, product)))
        self.wait_condition(f"node/{name}", "Ready")

    def restart_apiserver(self, while_down: Callable[[], None] | None = None) -> float:
        """FAULT INJECTION: stop kube-apiserver (etcd and every other component keep running), call `while_down`,
        start it again with the same flags and wait until it is ready. Returns the seconds it was down."""
        assert self.pki is not None, "the cluster was not started by this process"
        index, old = next((i, p) for i, p in enumerate(self.processes) if p.name == "kube-apiserver")
        stop_all([old])
        stopped = time.monotonic()
        if while_down is not None:
            while_down()
        argv = components.Argv(self.cache / "bin", self.state_dir, self.kubeconfig, self.ports, self.pki)
        log = self.state_dir / "logs" / "kube-apiserver.log"
        self.processes[index] = spawn("kube-apiserver", argv.apiserver(), log, die_with_parent=self.die_with_parent)
        self._write_state()
        pki = self.pki
        self._wait("kube-apiserver after a restart", lambda: self._api_ok(pki, "/readyz"))
        return time.monotonic() - stopped

    def compact_etcd(self) -> int:
        """FAULT INJECTION: compact etcd's history up to its current revision (etcd's JSON gateway), so a watch
        resuming from an older resourceVersion gets 410 Gone. Returns the revision."""
        base = f"http://127.0.0.1:{self.ports.etcd_client}/v3/kv"
        key = base64.b64encode(b"/").decode()
        header = _post_json(f"{base}/range", {"key": key, "limit": 1})["header"]
        revision = int(header["revision"])
        _post_json(f"{base}/compaction", {"revision": revision, "physical": True})
        return revision

    def _run(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        log = self.state_dir / "logs" / f"{name}.log"
        self.processes.append(spawn(name, argv, log, env=env, die_with_parent=self.die_with_parent))
        self._write_state()

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Poll `ready` until true; fail early, with the log tail, if a component exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.processes:
                if not proc.alive():
                    raise ClusterError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
            if ready():
                return
            time.sleep(0.25)
        raise ClusterError(f"{what} not ready after {timeout:.0f}s; logs in {self.state_dir / 'logs'}")

    def _api_ok(self, pki: Pki, path: str) -> bool:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        return _http_ok(self.server + path, context)

    def _write_kubeconfig(self, pki: Pki) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "finetune-test",
            "clusters": [
                {"name": "finetune-test", "cluster": {"server": self.server, "certificate-authority": str(pki.ca_cert)}}
            ],
            "users": [
                {"name": "admin", "user": {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)}}
            ],
            "contexts": [
                {
                    "name": "finetune-test",
                    "context": {"cluster": "finetune-test", "user": "admin", "namespace": "default"},
                }
            ],
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def _write_state(self) -> None:
        """Record pids so `devcluster.py down` (another process) can stop a detached cluster."""
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "processes": [proc.to_json() for proc in self.processes],
            "written": {str(path): hashlib.sha256(content).hexdigest() for path, content in self.written.items()},
        }
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=2))


def gpu_node_manifest(name: str, gpus: int, product: str = GPU_PRODUCT) -> dict[str, object]:
    """A Node that kwok manages (annotation), advertising `gpus` GPUs and the GPU product label."""
    resources = {"cpu": "96", "memory": "1536Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                GPU_PRODUCT_LABEL: product,
                "nvidia.com/gpu.count": str(gpus),
            },
        },
        "spec": {},
        "status": {"capacity": resources, "allocatable": resources},
    }


def _post_json(url: str, body: dict[str, object]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False


GPU_NODES = 4
GPUS_PER_NODE = 8


def start_gpu_cluster(state_dir: Path, die_with_parent: bool = True, cache: Path = CACHE) -> Cluster:
    """Start the control plane and register GPU_NODES fake nodes with GPUS_PER_NODE GPUs each."""
    cluster = Cluster(state_dir=state_dir, cache=cache, die_with_parent=die_with_parent)
    cluster.start()
    try:
        for index in range(GPU_NODES):
            cluster.add_gpu_node(f"gpu-node-{index}", GPUS_PER_NODE)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def remove_if_unchanged(files: dict[Path, str]) -> None:
    """Delete files we wrote outside the state folder, unless another cluster has rewritten them
    since (the training-operator's webhook cert dir is one fixed path shared by all clusters)."""
    for path, digest in files.items():
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            path.unlink()
