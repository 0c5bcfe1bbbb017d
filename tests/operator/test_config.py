"""The operator's configuration: flags over FINETUNE_OPERATOR_* over defaults."""

from __future__ import annotations

import argparse

import pytest

from finetune_operator.children.pytorchjob import DEFAULT_TRAINER_IMAGE
from finetune_operator.config import OperatorConfig, add_arguments, from_arguments


def parse(argv: list[str], env: dict[str, str]) -> OperatorConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_arguments(parser.parse_args(argv), env)


def test_defaults_are_cluster_wide() -> None:
    config = parse([], {})
    assert config.clusterwide
    assert config.trainer_image == DEFAULT_TRAINER_IMAGE
    assert config.prometheus_url is None
    assert config.liveness_endpoint == "http://0.0.0.0:8080/healthz"


def test_environment_is_read() -> None:
    env = {
        "FINETUNE_OPERATOR_NAMESPACES": "a, b",
        "FINETUNE_OPERATOR_PROMETHEUS_URL": "http://prom:9090",
        "FINETUNE_OPERATOR_HEALTH_PORT": "9000",
    }
    config = parse([], env)
    assert config.namespaces == ("a", "b")
    assert not config.clusterwide
    assert config.prometheus_url == "http://prom:9090"
    assert config.health_port == 9000


def test_backend_flag_environment_and_a_bad_value() -> None:
    assert parse([], {}).backend == "auto"
    assert parse([], {"FINETUNE_OPERATOR_BACKEND": "trainjob"}).backend == "trainjob"
    assert parse(["--backend", "pytorchjob"], {"FINETUNE_OPERATOR_BACKEND": "trainjob"}).backend == "pytorchjob"
    with pytest.raises(SystemExit) as raised:
        parse([], {"FINETUNE_OPERATOR_BACKEND": "mpijob"})
    assert str(raised.value) == "error: FINETUNE_OPERATOR_BACKEND: 'mpijob' is not one of auto, pytorchjob, trainjob"


def test_flags_win_over_environment() -> None:
    env = {"FINETUNE_OPERATOR_NAMESPACES": "a", "FINETUNE_OPERATOR_TRAINER_IMAGE": "env:1"}
    config = parse(["--namespace", "x", "--namespace", "y", "--trainer-image", "flag:2"], env)
    assert config.namespaces == ("x", "y")
    assert config.trainer_image == "flag:2"
    assert parse(["--all-namespaces"], env).clusterwide


def test_per_job_series_are_dropped_with_the_job() -> None:
    """Thresholds and stop marks are per job: they must not outlive it (unbounded label growth otherwise)."""
    from prometheus_client import generate_latest

    from finetune_operator.metrics.operator import OperatorMetrics

    metrics = OperatorMetrics()
    metrics.record_thresholds("ns", "a", {"maxGradNorm": 5.0, "minLoss": None})
    metrics.record_early_stop("ns", "a", "maxGradNorm")
    text = generate_latest(metrics.registry).decode()
    assert 'finetune_operator_job_threshold{finetunejob="a",namespace="ns",rule="maxGradNorm"} 5.0' in text
    assert 'rule="minLoss"' not in text
    assert 'finetune_operator_job_early_stopped{finetunejob="a",namespace="ns",rule="maxGradNorm"} 1.0' in text
    assert 'finetune_operator_early_stops_total{rule="maxGradNorm"} 1.0' in text
    metrics.record_phase("ns", "a", None)
    text = generate_latest(metrics.registry).decode()
    assert 'finetunejob="a"' not in text
    assert 'finetune_operator_early_stops_total{rule="maxGradNorm"} 1.0' in text


def test_jobs_by_phase_follow_transitions_and_deletions() -> None:
    from prometheus_client import generate_latest

    from finetune_operator.metrics.operator import OperatorMetrics

    metrics = OperatorMetrics()
    for name, phase in [("a", "Pending"), ("b", "Failed"), ("a", "Running"), ("c", "Running"), ("a", "Running")]:
        metrics.record_phase("ns", name, phase)
    metrics.record_phase("ns", "c", None)
    text = generate_latest(metrics.registry).decode()
    assert 'finetune_operator_jobs{phase="Running"} 1.0' in text
    assert 'finetune_operator_jobs{phase="Failed"} 1.0' in text
    assert 'finetune_operator_jobs{phase="Pending"} 0.0' in text
