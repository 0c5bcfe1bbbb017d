"""Helpers for tests/cluster/test_helm.py: a Helm release of the chart on the test cluster, its ServiceAccount's
token as a kubeconfig, and the operator run out of cluster with the Deployment's own arguments."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import Cluster
from tests.cluster.operator_process import FINETUNE, OperatorProcess, no_pod_scraping
from tests.cluster.waiting import wait_for
from tests.manifests import REPO_ROOT

CHART = REPO_ROOT / "helm" / "finetune-operator"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
HOST_PORT_FLAGS = ("--health-port", "--metrics-port", "--health-host", "--metrics-host")


def version_probe_chart(folder: Path, kube_version: str | None = None) -> Path:
    """A one-ConfigMap chart whose data.kube is the Kubernetes version Helm believes it renders for (optionally
    constrained by `kubeVersion`): what Helm's version logic decides, seen from outside."""
    chart = folder / "probe"
    (chart / "templates").mkdir(parents=True)
    constraint = f'kubeVersion: "{kube_version}"\n' if kube_version else ""
    (chart / "Chart.yaml").write_text(f"apiVersion: v2\nname: probe\nversion: 0.1.0\n{constraint}")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n"
        '  kube: "{{ .Capabilities.KubeVersion.Version }}"\n'
    )
    return chart


def kube_version(cluster: Cluster) -> str:
    """The API server's version, for `helm template --kube-version` (the chart requires >= 1.30)."""
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    return str(version["serverVersion"]["gitVersion"])


def create_namespace(cluster: Cluster, name: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def _monitoring_crd(kind: str) -> dict[str, Any]:
    """A minimal prometheus-operator CRD (schema: preserve unknown fields): enough for the API server to accept
    ServiceMonitor/PodMonitor objects in a server-side dry run. The real CRDs come with kube-prometheus-stack."""
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def install_monitoring_crds(cluster: Cluster) -> None:
    for kind in ("ServiceMonitor", "PodMonitor"):
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(_monitoring_crd(kind)))
        cluster.wait_condition(f"crd/{kind.lower()}s.monitoring.coreos.com", "Established")
        plural = kind.lower() + "s"

        def served(plural: str = plural) -> bool:
            return cluster.kubectl("get", plural, "-A", check=False).returncode == 0

        wait_for(served, 60, f"{kind} lists to be served")


@dataclasses.dataclass
class Release:
    """One `helm install` of the chart into `namespace` (created by Helm)."""

    helm: str
    cluster: Cluster
    name: str
    namespace: str
    watched: tuple[str, ...] = ()
    unwatched: str = ""

    @property
    def fullname(self) -> str:
        return f"{self.name}-finetune-operator"

    @property
    def service_account(self) -> str:
        return self.fullname

    def _helm(self, *args: str) -> str:
        home = self.cluster.state_dir / "helm"
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        result = subprocess.run(
            [self.helm, f"--kubeconfig={self.cluster.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    def install(self, values: dict[str, Any]) -> None:
        values_file = self.cluster.state_dir / f"{self.name}-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        self._helm("install", self.name, str(CHART), "-n", self.namespace, "--create-namespace", "-f", str(values_file))

    def uninstall(self) -> None:
        self._helm("uninstall", self.name, "-n", self.namespace, "--wait")
        self.cluster.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)

    def objects(self) -> set[tuple[str, str]]:
        """(kind, name) of what the release made, found by its instance label."""
        selector = f"app.kubernetes.io/instance={self.name}"
        found = set()
        for kinds, scope in (("sa,deploy,svc", ["-n", self.namespace]), ("clusterrole,clusterrolebinding", [])):
            listing = json.loads(self.cluster.kubectl("get", kinds, *scope, "-l", selector, "-o", "json").stdout)
            found |= {(item["kind"], item["metadata"]["name"]) for item in listing["items"]}
        return found

    def deployment_args(self) -> list[str]:
        deployment = json.loads(
            self.cluster.kubectl("get", "deployment", self.fullname, "-n", self.namespace, "-o", "json").stdout
        )
        args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return args

    def can_i(self, verb: str, resource: str, namespace: str | None) -> bool:
        """`kubectl auth can-i` as the chart's ServiceAccount; namespace None = cluster-wide.

        `resource` may name a subresource as `plural.group/status`: kubectl reads `X/Y` as resource X, object NAME Y,
        so the subresource goes in --subresource (otherwise "patch finetunejobs/status" asks about patching a
        FineTuneJob named "status", and passes on a plain `patch finetunejobs` grant)."""
        scope = ["-n", namespace] if namespace else ["--all-namespaces"]
        subject = f"system:serviceaccount:{self.namespace}:{self.service_account}"
        resource, _, subresource = resource.partition("/")
        extra = [f"--subresource={subresource}"] if subresource else []
        result = self.cluster.kubectl("auth", "can-i", verb, resource, *extra, *scope, "--as", subject, check=False)
        assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
        return result.stdout.strip() == "yes"

    def token_cluster(self, state_dir: Path) -> Cluster:
        """The same cluster seen with the ServiceAccount's bearer token (TokenRequest API) and nothing else:
        a Cluster whose kubeconfig (and so its kubectl, and a process given it) authenticates as the chart's
        identity. Never start or stop it: it owns no processes."""
        token = self.cluster.kubectl(
            "create", "token", self.service_account, "-n", self.namespace, "--duration=1h"
        ).stdout.strip()
        admin = json.loads(self.cluster.kubeconfig.read_text())
        ca = admin["clusters"][0]["cluster"]["certificate-authority"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "chart-identity",
            "clusters": [{"name": "test", "cluster": {"server": self.cluster.server, "certificate-authority": ca}}],
            "users": [{"name": self.service_account, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "chart-identity",
                    "context": {"cluster": "test", "user": self.service_account, "namespace": self.namespace},
                }
            ],
        }
        state_dir.mkdir(parents=True, exist_ok=True)
        identity = dataclasses.replace(self.cluster, state_dir=state_dir, processes=[], written={})
        identity.kubeconfig.write_text(json.dumps(config, indent=2))
        identity.kubeconfig.chmod(0o600)
        return identity


class ChartOperator(OperatorProcess):
    """`finetune operator` with exactly the chart Deployment's arguments, except that health and metrics
    listen on free ports of 127.0.0.1 (out of cluster, beside other operators)."""

    def __init__(self, cluster: Cluster, log_dir: Path, deployment_args: list[str]) -> None:
        super().__init__(cluster, log_dir)
        self.deployment_args = deployment_args

    def argv(self) -> list[str]:
        args, skip = [], False
        for arg in self.deployment_args:
            if skip:
                skip = False
            elif arg in HOST_PORT_FLAGS:
                skip = True
            else:
                args.append(arg)
        ports = ["--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port)]
        loopback = ["--health-host", "127.0.0.1", "--metrics-host", "127.0.0.1", *no_pod_scraping()]
        return [str(FINETUNE), *args, *loopback, *ports]


@contextlib.contextmanager
def chart_operator(release: Release, log_dir: Path) -> Iterator[ChartOperator]:
    """Run the operator as the chart's ServiceAccount (its token is the only credential it gets)."""
    identity = release.token_cluster(log_dir / "identity")
    operator = ChartOperator(identity, log_dir, release.deployment_args())
    operator.start()
    try:
        yield operator
    finally:
        if operator.alive():
            operator.stop()
