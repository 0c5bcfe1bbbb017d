"""The operator's one typed configuration, read once at startup from flags, then environment, then defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from finetune_operator.children.pytorchjob import DEFAULT_TRAINER_IMAGE


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator needs to know about its environment; nothing else reads env vars."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means cluster-wide."""
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image for trainer pods when a FineTuneJob sets none."""
    prometheus_url: str | None = None
    """Prometheus HTTP API for early stopping; unset means scraping the trainer pods directly."""
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    peering: str | None = None
    """Kopf peering name for HA (one active instance); None runs standalone."""
    pod_check_interval_seconds: float = 30.0
    """How often Pending jobs are checked for pods their child cannot create (one Event LIST per check)."""
    log_format: str = "json"
    backend: str = "auto"
    """The child kind for new jobs: pytorchjob, trainjob, or auto (TrainJob when its CRD is installed, else
    PyTorchJob; decided at start). A job keeps the kind its first child was made with."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def liveness_endpoint(self) -> str:
        return f"http://{self.health_host}:{self.health_port}/healthz"


ENV_PREFIX = "FINETUNE_OPERATOR_"
BACKEND_CHOICES = ("auto", "pytorchjob", "trainjob")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `finetune operator` flags; each defaults to FINETUNE_OPERATOR_<NAME> from the environment."""
    parser.add_argument("--namespace", action="append", dest="namespaces", metavar="NS", help="watch NS (repeatable)")
    parser.add_argument("--all-namespaces", action="store_true", help="watch the whole cluster (the default)")
    parser.add_argument("--trainer-image", help=f"default trainer image (default {DEFAULT_TRAINER_IMAGE})")
    parser.add_argument("--prometheus-url", help="Prometheus base URL for early stopping")
    parser.add_argument("--health-host", help="liveness endpoint address (default 0.0.0.0)")
    parser.add_argument("--health-port", type=int, help="liveness endpoint port (default 8080): GET /healthz")
    parser.add_argument("--metrics-host", help="operator metrics address (default 0.0.0.0)")
    parser.add_argument("--metrics-port", type=int, help="operator metrics port (default 9090): GET /metrics")
    parser.add_argument("--peering", help="Kopf peering name: run as one of several replicas, one active")
    parser.add_argument(
        "--pod-check-interval", type=float, help="seconds between checks for pods a child cannot create (default 30)"
    )
    parser.add_argument("--log-format", choices=["json", "text"], help="log line format (default json)")
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        help="child kind for new jobs: PyTorchJob (training-operator v1), TrainJob (Kubeflow Trainer v2), or auto: "
        "TrainJob when its CRD is installed (default auto)",
    )


def from_arguments(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Flags win over FINETUNE_OPERATOR_* variables, which win over the defaults."""
    source = os.environ if env is None else env

    def pick(flag: object, name: str) -> str | None:
        return str(flag) if flag is not None else source.get(ENV_PREFIX + name)

    namespaces: Sequence[str] = args.namespaces or _split(source.get(ENV_PREFIX + "NAMESPACES", ""))
    if args.all_namespaces:
        namespaces = ()
    defaults = OperatorConfig()
    return OperatorConfig(
        namespaces=tuple(namespaces),
        trainer_image=pick(args.trainer_image, "TRAINER_IMAGE") or defaults.trainer_image,
        prometheus_url=pick(args.prometheus_url, "PROMETHEUS_URL") or None,
        health_host=pick(args.health_host, "HEALTH_HOST") or defaults.health_host,
        health_port=int(pick(args.health_port, "HEALTH_PORT") or defaults.health_port),
        metrics_host=pick(args.metrics_host, "METRICS_HOST") or defaults.metrics_host,
        metrics_port=int(pick(args.metrics_port, "METRICS_PORT") or defaults.metrics_port),
        peering=pick(args.peering, "PEERING") or None,
        pod_check_interval_seconds=float(
            pick(args.pod_check_interval, "POD_CHECK_INTERVAL") or defaults.pod_check_interval_seconds
        ),
        log_format=pick(args.log_format, "LOG_FORMAT") or defaults.log_format,
        backend=_backend(pick(args.backend, "BACKEND") or defaults.backend),
    )


def _backend(value: str) -> str:
    """A clear exit, not a traceback, for a bad FINETUNE_OPERATOR_BACKEND (argparse checks the flag itself)."""
    if value not in BACKEND_CHOICES:
        raise SystemExit(f"error: {ENV_PREFIX}BACKEND: {value!r} is not one of {', '.join(BACKEND_CHOICES)}")
    return value


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
