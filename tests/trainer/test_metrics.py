"""Metric backends: a live Prometheus endpoint scraped over HTTP and checked by promtool; JSONL; console."""

from __future__ import annotations

import io
import json
import math
import shutil
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from finetune_contract.records import StepRecord
from finetune_trainer.metrics import ConsoleLogger, Identity, JsonlLogger, PrometheusLogger

SERIES = (
    "finetune_train_loss",
    "finetune_grad_norm",
    "finetune_learning_rate",
    "finetune_optimizer_step",
    "finetune_total_steps",
    "finetune_samples_total",
    "finetune_tokens_total",
    "finetune_step_duration_seconds",
    "finetune_eval_loss",
)
IDENTITY = Identity("sft-a", "team-a")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def record(
    step: int,
    loss: float = 2.0,
    grad_norm: float = 1.5,
    total_steps: int = 10,
    phase: str = "stacked",
    samples: int = 32,
) -> StepRecord:
    """A trainer step record as rank 0 logs it (shared by the metrics tests and benchmarks)."""
    return StepRecord(
        step=step,
        total_steps=total_steps,
        loss=loss,
        grad_norm=grad_norm,
        learning_rate=1e-4,
        samples=samples,
        tokens=1000,
        step_duration_seconds=0.5,
        epoch=0,
        phase=phase,
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


@pytest.fixture
def prometheus():
    logger = PrometheusLogger(IDENTITY, free_port(), addr="127.0.0.1", total_steps=10)
    yield logger
    logger.close()


def samples_by_name(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_every_series_is_served_with_the_identity_labels(prometheus) -> None:
    prometheus.log_step(record(1))
    prometheus.log_step(record(2, loss=1.5))
    prometheus.log_eval(2, 1.7)
    found = samples_by_name(scrape(prometheus.port))
    for name in SERIES:
        assert name in found, name
        assert found[name][0].labels["finetunejob"] == "sft-a"
        assert found[name][0].labels["namespace"] == "team-a"
    assert found["finetune_train_loss"][0].value == 1.5
    assert found["finetune_optimizer_step"][0].value == 2
    assert found["finetune_tokens_total"][0].value == 2000
    assert found["finetune_samples_total"][0].value == 64
    assert found["finetune_eval_loss"][0].value == 1.7


def test_phase_gauge_marks_only_the_current_phase(prometheus) -> None:
    prometheus.log_step(record(1, phase="knowledge"))
    prometheus.log_step(record(2, phase="skills"))
    phases = {s.labels["phase"]: s.value for s in samples_by_name(scrape(prometheus.port))["finetune_phase"]}
    assert phases == {"knowledge": 0.0, "skills": 1.0}


def test_non_finite_values_are_exported_not_hidden(prometheus) -> None:
    prometheus.log_step(record(1, loss=math.nan, grad_norm=math.inf))
    found = samples_by_name(scrape(prometheus.port))
    assert math.isnan(found["finetune_train_loss"][0].value)
    assert math.isinf(found["finetune_grad_norm"][0].value)
    assert found["finetune_nonfinite_steps_total"][0].value == 1


def test_promtool_finds_nothing_on_a_live_scrape(prometheus) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (scripts/test.sh does)"
    prometheus.log_step(record(1))
    result = subprocess.run(
        [promtool, "check", "metrics"], input=scrape(prometheus.port), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr


def test_jsonl_holds_the_same_records(tmp_path) -> None:
    logger = JsonlLogger(tmp_path / "out" / "metrics.jsonl", IDENTITY)
    logger.log_step(record(1))
    logger.log_eval(1, 1.9)
    logger.log_event("checkpoint", step=1)
    logger.close()
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["step", "eval", "event"]
    assert (lines[0]["loss"], lines[0]["grad_norm"], lines[0]["finetunejob"]) == (2.0, 1.5, "sft-a")
    assert lines[1]["eval_loss"] == 1.9


def test_console_progress_line_has_what_a_person_needs() -> None:
    stream = io.StringIO()
    ConsoleLogger(stream, interactive=False).log_step(record(3))
    line = stream.getvalue()
    for part in ("step 3/10", "loss 2.0000", "grad_norm 1.5000", "lr 0.0001", "tok/s 2,000", "eta"):
        assert part in line, line
