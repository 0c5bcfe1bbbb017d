"""The operator's metrics sources against real parts: the trainer's Prometheus exporter, a real Prometheus server.

Prometheus is the Debian package (/usr/bin/prometheus), started here on 127.0.0.1 with a generated config that
scrapes the exporter every second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_contract.records import StepRecord
from finetune_operator.metrics.source import MetricsUnavailableError, PrometheusSource, ScrapeSource, join_points
from finetune_trainer.metrics import Identity, PrometheusLogger
from tests.trainer.test_metrics import free_port
from tests.trainer.test_metrics import record as trainer_record

IDENTITY = Identity("sft-a", "team-a")


def record(step: int) -> StepRecord:
    return trainer_record(step, loss=3.0 - 0.1 * step, grad_norm=1.0 + step, total_steps=100, samples=8)


@pytest.fixture
def exporter() -> Iterator[PrometheusLogger]:
    logger = PrometheusLogger(IDENTITY, free_port(), addr="127.0.0.1", total_steps=100)
    yield logger
    logger.close()


def start_prometheus(
    tmp: Path, target_port: int, port: int, scrape_interval: int = 1, file_sd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Prometheus on 127.0.0.1:port scraping one static target, or the targets in a file_sd JSON file."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: install the Debian package prometheus (scripts/test.sh does)"
    config = tmp / "prometheus.yml"
    targets = (
        f"file_sd_configs: [{{files: ['{file_sd}'], refresh_interval: 1s}}]"
        if file_sd
        else f"static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]"
    )
    config.write_text(
        f"global: {{scrape_interval: {scrape_interval}s}}\nscrape_configs:\n  - job_name: trainer\n    {targets}\n"
    )
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("prometheus did not become ready")


@pytest.fixture
def prometheus(tmp_path: Path, exporter: PrometheusLogger) -> Iterator[str]:
    port = free_port()
    process = start_prometheus(tmp_path, exporter.port, port)
    yield f"http://127.0.0.1:{port}"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_for_steps(source: PrometheusSource, steps: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        points = source.fetch("team-a", "sft-a").points
        if points and points[-1].step >= steps:
            return points
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never showed step {steps}")


def test_prometheus_series_join_into_step_indexed_points(exporter: PrometheusLogger, prometheus: str) -> None:
    source = PrometheusSource(prometheus)
    for step in (1, 2, 3):
        exporter.log_step(record(step))
        time.sleep(1.6)  # about one scrape per step; the source must not care
    points = wait_for_steps(source, 3)
    by_step = {point.step: point for point in points}
    assert set(by_step) <= {1, 2, 3}
    assert 3 in by_step
    assert by_step[3].loss == pytest.approx(record(3).loss)
    assert by_step[3].grad_norm == pytest.approx(record(3).grad_norm)
    metrics = source.fetch("team-a", "sft-a")
    assert metrics.total_steps == 100
    assert metrics.learning_rate == pytest.approx(1e-4)


def test_other_jobs_series_are_not_mixed_in(exporter: PrometheusLogger, prometheus: str) -> None:
    exporter.log_step(record(1))
    wait_for_steps(PrometheusSource(prometheus), 1)
    assert PrometheusSource(prometheus).fetch("team-a", "another-job").points == []


def test_prometheus_down_is_unavailable_not_empty() -> None:
    with pytest.raises(MetricsUnavailableError, match=r"Prometheus at http://127\.0\.0\.1"):
        PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout_seconds=1).fetch("team-a", "sft-a")


def test_direct_scrape_keeps_a_window_of_steps(exporter: PrometheusLogger) -> None:
    source = ScrapeSource()
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    for now, step in enumerate((1, 2, 2, 3)):  # step 2 scraped twice: one point
        exporter.log_step(record(step))
        metrics = source.fetch("team-a", "sft-a", url, now=float(now))
    assert [point.step for point in metrics.points] == [1, 2, 3]
    assert metrics.points[-1].loss == pytest.approx(record(3).loss)
    assert metrics.tokens_per_second is not None
    assert metrics.tokens_per_second > 0


def test_direct_scrape_of_a_dead_endpoint_is_unavailable() -> None:
    with pytest.raises(MetricsUnavailableError, match="scraping"):
        ScrapeSource(timeout_seconds=1).fetch("team-a", "sft-a", f"http://127.0.0.1:{free_port()}/metrics")


def test_join_keeps_the_latest_observation_of_a_step() -> None:
    samples = {"step": [(1.0, 1), (2.0, 1), (3.0, 2)], "loss": [(1.0, 5.0), (2.0, 4.0), (3.0, 3.0)]}
    points = join_points(samples)
    assert [(point.step, point.loss, point.time) for point in points] == [(1, 4.0, 2.0), (2, 3.0, 3.0)]
