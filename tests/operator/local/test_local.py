"""`finetune local` as a person runs it: real `finetune` and trainer processes on the shared data, nothing mocked.

The examples are run as shipped except for their sizes (fewer steps, smaller batches, an early-stopping window
that fits the shorter run) and the data path, made absolute so the copies run from a temporary directory. The
pure parts (outcome rules, summary wording, launch command lines, the JSONL follower) are checked directly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_contract.checkpoints import latest_checkpoint
from finetune_operator.cli import load_jobs
from finetune_operator.decisions.policy import evaluate
from finetune_operator.local.launch import launch_for, local_processes
from finetune_operator.local.report import Outcome, RunState, Summary, decide, progress_line, summary_text
from finetune_operator.local.run import Follower, follow
from tests.manifests import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_TIMEOUT = 240


def small_copy(example: str, tmp_path: Path, **training: Any) -> tuple[Path, dict[str, Any]]:
    """The example with an absolute data path and the given training overrides, written to tmp_path."""
    manifest = yaml.safe_load((EXAMPLES / example).read_text())
    for dataset in manifest["spec"]["data"]["datasets"]:
        dataset["path"] = str((REPO_ROOT / dataset["path"]).resolve())
    manifest["spec"]["training"].update(training)
    path = tmp_path / example
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path, manifest


def finetune_command(*args: str) -> list[str]:
    exe = shutil.which("finetune", path=str(Path(sys.executable).parent))
    return [*([exe] if exe else [sys.executable, "-m", "finetune_operator.cli"]), *args]


def environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def finetune_local(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = finetune_command("local", *args)
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment(), timeout=RUN_TIMEOUT)


def summary_rows(stdout: str) -> dict[str, str]:
    """`  key  value` lines of the summary block."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("  "):
            key, _, value = line.strip().partition("  ")
            rows[key] = value.strip()
    return rows


def trainer_pid(stderr: str) -> int:
    marker = "trainer pid "
    return int(stderr[stderr.index(marker) + len(marker) :].split()[0])


def assert_gone(pid: int) -> None:
    """No process with that pid (it was our child: reaped, so not even a zombie)."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def step_records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.is_file() else []
    return [record for record in map(json.loads, lines) if record["kind"] == "step"]


@pytest.fixture(scope="module", autouse=True)
def shared_data() -> None:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.fail(f"shared data not found at {SHARED_DATA}; check out the shared data next to the repository")


# ------------------------------------------------------------------------------------------------ real runs
def test_quickstart_succeeds_with_summary_plot_and_metrics(tmp_path: Path) -> None:
    job, _ = small_copy("quickstart.yaml", tmp_path, maxSteps=4, effectiveBatchSize=8)
    result = finetune_local(str(job), "--port", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = summary_rows(result.stdout)
    assert rows["outcome"] == "Succeeded"
    assert rows["steps"] == "4/4"
    output = tmp_path / "runs" / "quickstart"  # the default output directory, relative to where it runs
    assert Path(rows["checkpoint"]) == output / "final"
    assert (output / "final" / "model.safetensors").is_file()
    assert Path(rows["metrics"]) == output / "metrics.jsonl"
    assert [r["step"] for r in step_records(output / "metrics.jsonl")] == [1, 2, 3, 4]
    plot = Path(rows["plot"])
    assert plot == output / "training.png"
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    assert plot.stat().st_size > 20_000, "a real three-panel figure, not an empty canvas"
    assert "step 4/4" in result.stderr
    assert "Traceback" not in result.stderr
    assert_gone(trainer_pid(result.stderr))


def test_bad_learning_rate_is_stopped_early_with_evidence(tmp_path: Path) -> None:
    job, manifest = small_copy("quickstart-bad-lr.yaml", tmp_path, maxSteps=30, effectiveBatchSize=16)
    manifest["spec"]["earlyStopping"].update(checkAfterSteps=4, windowSteps=3, divergenceFactor=None)
    job.write_text(yaml.safe_dump(manifest, sort_keys=False))
    result = finetune_local(str(job), "--port", "0", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr  # stopping a bad run is the product working
    rows = summary_rows(result.stdout)
    assert rows["outcome"].startswith("EarlyStopped")
    assert rows["reason"].startswith("GradNormAboveMax: median gradNorm ")
    assert "is above maxGradNorm = 5.0" in rows["reason"]
    assert "rule maxGradNorm" in rows["evidence"]
    assert "steps 2-4" in rows["evidence"]
    assert "threshold 5" in rows["evidence"]
    stopped_at = int(rows["steps"].split("/")[0])
    assert 4 <= stopped_at < 30, "stopped at the first judged step (plus the one in flight), far before the end"
    checkpoint = Path(rows["checkpoint"])
    assert checkpoint.name == f"checkpoint-{stopped_at}"
    assert (checkpoint / "COMPLETE").is_file()
    assert not (tmp_path / "out" / "final").exists()
    assert Path(rows["plot"]).read_bytes()[:8] == PNG_SIGNATURE
    assert_gone(trainer_pid(result.stderr))


def test_unknown_field_exits_2_without_running(tmp_path: Path) -> None:
    job, manifest = small_copy("quickstart.yaml", tmp_path)
    manifest["spec"]["training"]["learningRat"] = 0.1
    job.write_text(yaml.safe_dump(manifest, sort_keys=False))
    result = finetune_local(str(job), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{job}: spec.training.learningRat: unknown field (got 0.1)" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_missing_data_path_exits_2_before_starting_a_trainer(tmp_path: Path) -> None:
    """The examples' data path is relative to the repository root: from elsewhere it is an input error."""
    result = finetune_local(str(EXAMPLES / "quickstart.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "spec.data.datasets[0].path: no such file or directory on this machine" in result.stderr
    assert "trainer pid" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_checkpoints_and_exits_130(tmp_path: Path) -> None:
    job, _ = small_copy("quickstart.yaml", tmp_path, maxSteps=500, effectiveBatchSize=8)
    output, port = tmp_path / "out", free_port()
    command = finetune_command("local", str(job), "--output", str(output), "--port", str(port))
    process = subprocess.Popen(command, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(step_records(output / "metrics.jsonl")) < 2:
            assert process.poll() is None, "finetune local ended before two steps"
            assert time.monotonic() < deadline, "no training steps"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            scraped = response.read().decode()
        assert 'finetune_train_loss{finetunejob="quickstart",namespace="local"}' in scraped
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stdout, stderr = (stream.decode() for stream in process.communicate(timeout=120))
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stdout + stderr
    rows = summary_rows(stdout)
    assert rows["outcome"].startswith("Interrupted")
    checkpoint = Path(rows["checkpoint"])
    newest = latest_checkpoint(output)
    assert newest is not None
    assert checkpoint == newest.path
    assert (checkpoint / "COMPLETE").is_file()
    assert (checkpoint / "model.safetensors").is_file()
    steps = int(rows["steps"].split("/")[0])
    assert checkpoint.name == f"checkpoint-{steps}"
    assert steps < 500
    assert "Traceback" not in stderr + (output / "trainer.log").read_text()
    assert_gone(trainer_pid(stderr))


# ------------------------------------------------------------------------------------------------ pure parts
def record(step: int, loss: float, grad_norm: float, when: float, total: int = 10) -> dict[str, Any]:
    return {
        "kind": "step",
        "step": step,
        "total_steps": total,
        "loss": loss,
        "grad_norm": grad_norm,
        "learning_rate": 1e-3,
        "tokens": 1000,
        "step_duration_seconds": 0.5,
        "time": when,
    }


def test_outcome_rules() -> None:
    state = RunState()
    assert decide(0, None, state) is Outcome.Succeeded
    assert decide(1, "policy", state) is Outcome.EarlyStopped  # torchrun reports the SIGTERM it forwarded
    assert decide(-15, "user", state) is Outcome.Interrupted
    assert decide(3, None, state) is Outcome.Failed
    state.add({"kind": "event", "event": "interrupted", "step": 2})
    assert decide(0, None, state) is Outcome.Interrupted  # someone else's SIGTERM: checkpointed, not done


def test_progress_and_summary_text() -> None:
    state = RunState()
    assert progress_line(state, None).startswith("waiting for the first step")
    for step in range(1, 4):
        state.add(record(step, 5.0 - step, 2.0, 100.0 + step))
    verdict = evaluate(list(state.steps.values()), load_jobs(str(EXAMPLES / "quickstart.yaml"))[0].spec.early_stopping)
    line = progress_line(state, verdict)
    assert line.startswith("step 3/10  loss 2.0000  grad norm 2  lr 0.001  tok/s 2,000  eta 0m07s")
    assert line.endswith("policy unknown (NotYetCheckable)")
    summary = Summary("job", Outcome.Failed, -9, 61.0, None, "m.jsonl", None, "t.log")
    text = summary_text(summary, state)
    assert "Failed (trainer killed by SIGKILL; see the log)" in text
    assert "wall time    1m01s" in text
    assert "checkpoint   none" in text


def test_resumed_run_seeds_earlier_steps_for_the_policy() -> None:
    history = [record(1, 9.0, 1.0, 1.0), record(2, 8.0, 1.0, 2.0), record(2, 7.5, 1.0, 3.0), record(3, 1.0, 1.0, 4.0)]
    state = RunState()
    state.seed(history, up_to=2)
    assert {step: s.loss for step, s in state.steps.items()} == {1: 9.0, 2: 7.5}
    assert state.session == []


def test_steps_read_together_are_judged_one_by_one() -> None:
    """A stop is found at the first step it applies to, however many steps one poll of the file brings."""
    job = load_jobs(str(EXAMPLES / "quickstart.yaml"))[0]  # checkAfterSteps 10, windowSteps 5, maxGradNorm 5
    state = RunState()
    verdict = follow([record(step, 5.0, 10.0, float(step), total=40) for step in range(1, 14)], state, [], job)
    assert verdict is not None
    assert verdict.decision == "stop"
    assert verdict.evidence is not None
    assert (verdict.evidence.from_step, verdict.evidence.to_step) == (6, 10)
    assert max(state.steps) == 13


def test_follower_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "step"}\n{"kind": "ev')
    follower = Follower(path, 0)
    assert follower.read() == [{"kind": "step"}]
    with path.open("a") as handle:
        handle.write('ent"}\n')
    assert follower.read() == [{"kind": "event"}]
    assert follower.read() == []


def test_launch_commands() -> None:
    job = load_jobs(str(EXAMPLES / "quickstart.yaml"))[0]
    assert local_processes(0, 0) == 1
    assert local_processes(8, 0) == 1
    assert local_processes(8, 2) == 2
    plain = launch_for(job, Path("/r.json"), Path("/o"), 8000, 1)
    assert plain.command == [sys.executable, "-m", "finetune_trainer", "--recipe", "/r.json"]
    expected_env = {
        "FINETUNE_OUTPUT_DIR": "/o",
        "FINETUNE_METRICS_PORT": "8000",
        "FINETUNE_METRICS_ADDR": "127.0.0.1",
        "FINETUNE_JOB_NAME": "quickstart",
        "FINETUNE_JOB_NAMESPACE": "local",
    }
    assert expected_env.items() <= plain.env.items()
    torchrun = launch_for(job, Path("/r.json"), Path("/o"), 8000, 4).command
    assert torchrun[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "4",
        "--module",
        "finetune_trainer",
        "--recipe",
        "/r.json",
    ]
