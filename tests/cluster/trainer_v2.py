"""TEST INFRASTRUCTURE: Kubeflow Trainer v2 (trainer-controller-manager v2.3.0) and JobSet (v0.12.0) on the local
control plane, started only for the tests that need them (the `trainer_v2` fixture), built from Go modules by
tests/cluster/build_trainer.sh.

Both run out of cluster as our children, like the training-operator: the admin kubeconfig, no leader election,
metrics off, health probes and webhook servers on 127.0.0.1. Their webhooks ARE registered with the API server
(defaulting and validation of TrainJobs, runtimes and JobSets are part of what the tests prove our manifests
pass): the configurations shipped in each module, with the Service reference replaced by
https://127.0.0.1:<port><path> and the cluster CA as caBundle; each server serves the API server's own certificate
(valid for 127.0.0.1, signed by that CA), found in its controller-runtime cert dir under its own TMPDIR — so the
two never share the fixed /tmp path the training-operator uses. Their own certificate management is off.
"""

from __future__ import annotations

import base64
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune_operator.children.trainjob import runtime_manifest
from tests.cluster.components import free_port
from tests.cluster.controlplane import CACHE, Cluster, _http_ok
from tests.cluster.processes import Process, spawn, stop_all

TRAINER_DIR = CACHE / "trainer"
BINARIES = ("trainer-controller-manager", "jobset", "kueue")
STARTUP_TIMEOUT_S = 120.0
TRAINER_IMAGE = "test/trainer:1"
"""The image our ClusterTrainingRuntime names in the tests (the node agent ignores images)."""
CRDS = ("jobsets.jobset.x-k8s.io", "trainjobs.trainer.kubeflow.org", "clustertrainingruntimes.trainer.kubeflow.org")
KUEUE_CRDS = ("clusterqueues.kueue.x-k8s.io", "localqueues.kueue.x-k8s.io", "workloads.kueue.x-k8s.io")
KUEUE_NAMESPACE = "kueue-system"
KUEUE_METRICS_CERTS = Path("/etc/kueue/metrics/certs")
KUEUE_FRAMEWORKS = ("kubeflow.org/pytorchjob", "trainer.kubeflow.org/trainjob")


def missing_artifacts(cache: Path = CACHE) -> list[str]:
    """What build_trainer.sh has not produced yet (empty: ready)."""
    missing = [name for name in BINARIES if not (cache / "bin" / name).is_file()]
    for path in (
        "trainer/crds",
        "trainer/kueue-crds",
        *(f"trainer/webhooks/{n}.yaml" for n in ("trainer", "jobset", "kueue")),
    ):
        if not (cache / path).exists():
            missing.append(path)
    return missing


@dataclass
class Controller:
    """One controller: its ports and the folder it runs in."""

    name: str
    workdir: Path
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    extra_port: int = field(default_factory=free_port)

    @property
    def cert_dir(self) -> Path:
        """controller-runtime's default webhook cert dir, under this controller's TMPDIR."""
        return self.workdir / "tmp" / "k8s-webhook-server" / "serving-certs"

    def config(self) -> dict[str, Any]:
        common: dict[str, Any] = {
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"port": self.webhook_port, "host": "127.0.0.1"},
            "leaderElection": {"leaderElect": False},
        }
        if self.name == "kueue":
            return {
                "apiVersion": "config.kueue.x-k8s.io/v1beta2",
                "kind": "Configuration",
                "namespace": KUEUE_NAMESPACE,
                **common,
                "webhook": {**common["webhook"], "certDir": str(self.cert_dir)},
                "internalCertManagement": {"enable": False},
                "manageJobsWithoutQueueName": False,
                "integrations": {"frameworks": list(KUEUE_FRAMEWORKS)},
            }
        if self.name == "jobset":
            return {
                "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
                "kind": "Configuration",
                **common,
                "internalCertManagement": {"enable": False},
            }
        return {
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
            "kind": "Configuration",
            **common,
            "certManagement": {"enable": False},
            "statusServer": {"port": self.extra_port},
        }


def registered_webhooks(
    manifests: str, controller: Controller, ca_bundle: str, served: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The module's webhook configurations, renamed per controller and pointed at 127.0.0.1 (pure). `served`:
    keep only hooks whose path contains one of these (Kueue ships hooks for every integration, pods included;
    registering one its server does not serve would refuse every such object cluster-wide)."""
    out = []
    for document in yaml.safe_load_all(manifests):
        if not document:
            continue
        document["metadata"] = {"name": f"{controller.name}-{document['metadata']['name']}"}
        hooks = []
        for hook in document.get("webhooks") or []:
            path = hook["clientConfig"]["service"].get("path", "/")
            if served and not any(part in path for part in served):
                continue
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{controller.webhook_port}{path}", "caBundle": ca_bundle}
            if controller.name == "jobset" and path.endswith("-v1-pod"):
                # JobSet's kustomize patch (config/components/webhook/patches): its pod hooks see JobSet pods
                # only. Without it every pod in the cluster would need JobSet's server to be created.
                hook["objectSelector"] = {
                    "matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]
                }
            hooks.append(hook)
        document["webhooks"] = hooks
        out.append(document)
    return out


@dataclass
class TrainerV2:
    """The running controllers; `stop` ends them and removes their webhook registrations."""

    cluster: Cluster
    processes: list[Process]
    webhooks: list[tuple[str, str]]  # (kind, name)
    files: list[Path] = field(default_factory=list)  # written outside the test's folders, removed at stop

    def stop(self) -> None:
        for kind, name in self.webhooks:
            self.cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        stop_all(self.processes)
        for path in self.files:
            path.unlink(missing_ok=True)


def start_trainer_v2(cluster: Cluster, workdir: Path) -> TrainerV2:
    """CRDs, webhooks, JobSet and Trainer, then our ClusterTrainingRuntime (`runtime_manifest`) as a user applies
    it."""
    started = _start_controllers(cluster, workdir)
    try:
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(runtime_manifest(trainer_image=TRAINER_IMAGE)))
    except BaseException:
        started.stop()
        raise
    return started


def _start_controllers(cluster: Cluster, workdir: Path) -> TrainerV2:
    """CRDs, webhooks, then JobSet and Trainer; returns once both report ready and their webhooks answer."""
    _apply_crds(cluster, sorted((TRAINER_DIR / "crds").glob("*.yaml")), CRDS)
    started = TrainerV2(cluster, [], [])
    try:
        for name, binary in (("jobset", "jobset"), ("trainer", "trainer-controller-manager")):
            _start_one(cluster, started, Controller(name, workdir / name), binary)
    except BaseException:
        started.stop()
        raise
    return started


def start_kueue(cluster: Cluster, workdir: Path) -> TrainerV2:
    """Kueue v0.17 with the PyTorchJob and TrainJob integrations only, its webhooks for those and its own kinds."""
    _apply_crds(cluster, sorted((TRAINER_DIR / "kueue-crds").glob("*.yaml")), KUEUE_CRDS)
    cluster.kubectl("create", "namespace", KUEUE_NAMESPACE, check=False)
    started = TrainerV2(cluster, [], [])
    try:
        controller = Controller("kueue", workdir / "kueue")
        # With its own certificate management off, Kueue loads a metrics certificate from this fixed path (even
        # with metrics off); the API server's serving certificate stands in. Removed again at stop.
        KUEUE_METRICS_CERTS.mkdir(parents=True, exist_ok=True)
        assert cluster.pki is not None
        for source, target in ((cluster.pki.serving_cert, "tls.crt"), (cluster.pki.serving_key, "tls.key")):
            shutil.copyfile(source, KUEUE_METRICS_CERTS / target)
            started.files.append(KUEUE_METRICS_CERTS / target)
        served = ("kueue-x-k8s-io", "pytorchjob", "trainjob")
        # The on-demand visibility API server wants certificates from /visibility; nothing here uses it.
        _start_one(cluster, started, controller, "kueue", served, ["--feature-gates=VisibilityOnDemand=false"])
    except BaseException:
        started.stop()
        raise
    return started


def _apply_crds(cluster: Cluster, files: list[Path], names: tuple[str, ...]) -> None:
    for crd in files:
        cluster.kubectl("apply", "--server-side", "--field-manager=finetune-tests", "--force-conflicts", "-f", str(crd))
    for name in names:
        cluster.wait_condition(f"crd/{name}", "Established")


def _start_one(
    cluster: Cluster,
    started: TrainerV2,
    controller: Controller,
    binary: str,
    served: tuple[str, ...] = (),
    extra: list[str] | None = None,
) -> None:
    assert cluster.pki is not None
    ca_bundle = base64.b64encode(cluster.pki.ca_cert.read_bytes()).decode()
    controller.cert_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cluster.pki.serving_cert, controller.cert_dir / "tls.crt")
    shutil.copyfile(cluster.pki.serving_key, controller.cert_dir / "tls.key")
    config = controller.workdir / "config.yaml"
    config.write_text(yaml.safe_dump(controller.config()))
    manifests = (TRAINER_DIR / "webhooks" / f"{controller.name}.yaml").read_text()
    hooks = registered_webhooks(manifests, controller, ca_bundle, served)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(hooks))
    started.webhooks += [(hook["kind"], hook["metadata"]["name"]) for hook in hooks]
    env = {"KUBECONFIG": str(cluster.kubeconfig), "TMPDIR": str(controller.workdir / "tmp")}
    argv = [str(CACHE / "bin" / binary), f"--config={config}", *(extra or [])]
    process = spawn(controller.name, argv, controller.workdir / f"{controller.name}.log", env=env)
    started.processes.append(process)
    _wait_ready(process, f"http://127.0.0.1:{controller.health_port}/readyz")


def _wait_ready(process: Process, url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not process.alive():
            raise AssertionError(f"{process.name} exited while starting:\n{process.log_tail()}")
        if _http_ok(url):
            return
        time.sleep(0.25)
    raise AssertionError(f"{process.name} not ready after {STARTUP_TIMEOUT_S:.0f}s:\n{process.log_tail()}")
