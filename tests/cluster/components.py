"""Command lines of the control-plane components: every listener on 127.0.0.1, no leader election.

Pure functions of paths and ports, kept apart from the process handling in controlplane.py so the
flags can be read (and reviewed against upstream docs) in one place.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.pki import Pki

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Ports:
    """Every port the cluster listens on, all on 127.0.0.1."""

    etcd_client: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)
    scheduler: int = field(default_factory=free_port)
    operator_health: int = field(default_factory=free_port)
    operator_webhook: int = field(default_factory=free_port)


@dataclass(frozen=True)
class Argv:
    """Builds each component's argv from the binaries folder, state folder, kubeconfig, ports and PKI."""

    bin_dir: Path
    state_dir: Path
    kubeconfig: Path
    ports: Ports
    pki: Pki

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def etcd(self) -> list[str]:
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        return [
            self._bin("etcd"),
            "--name=default",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",  # throwaway data: durability costs seconds per test run
            "--log-level=warn",
        ]

    def apiserver(self) -> list[str]:
        pki = self.pki
        return [
            self._bin("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports.apiserver}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # The `kubernetes` Endpoints may not point at loopback; nothing here needs them.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            f"--cert-dir={self.state_dir / 'apiserver'}",
        ]

    def _component(self, name: str, port: int) -> list[str]:
        kubeconfig = str(self.kubeconfig)
        return [
            self._bin(name),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.state_dir / name}",
            "--profiling=false",
        ]

    def controller_manager(self) -> list[str]:
        pki = self.pki
        return [
            *self._component("kube-controller-manager", self.ports.controller_manager),
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            "--use-service-account-credentials=false",
        ]

    def scheduler(self) -> list[str]:
        return self._component("kube-scheduler", self.ports.scheduler)

    def kwok(self, stage_files: Iterable[Path]) -> list[str]:
        """kwok manages only nodes annotated fake; Stages come from files (the stock defaults are
        replaced as soon as any Stage is given). No --server-address: kwok then opens no port."""
        return [
            self._bin("kwok"),
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.1/16",
            "--node-ip=10.96.0.1",
            *(f"--config={path}" for path in stage_files),
        ]

    def training_operator(self) -> list[str]:
        return [
            self._bin("training-operator"),
            "--enable-scheme=pytorchjob",
            "--metrics-bind-address=0",
            f"--health-probe-bind-address=127.0.0.1:{self.ports.operator_health}",
            f"--webhook-server-port={self.ports.operator_webhook}",
            "--zap-log-level=info",
            "--zap-devel=false",
        ]
