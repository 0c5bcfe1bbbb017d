"""The pod's launcher keeps the workers' exit code (torchrun alone exits 1 for everything): the operator's restart
decision reads it. Real launches: a bad recipe, and a worker SIGKILLed mid-run as a host OOM killer would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from finetune_trainer.launch import pod_exit_code
from tests.trainer.test_trainer import recipe, run_env, wait_for


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([-9], 137),
        ([1, -9], 137),  # a peer's NCCL error after the kill: the kill explains it
        ([-15, 1], 143),
        ([2, 1], 2),
        ([1, 3], 3),
        ([1], 1),
        ([0, 1], 1),
        ([], 1),
    ],
)
def test_the_most_telling_worker_code_is_the_pods(codes: list[int], expected: int) -> None:
    assert pod_exit_code(codes) == expected


def launcher(recipe_file: Path, out: Path, nproc: int = 1) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "finetune_trainer.launch", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["--module", "finetune_trainer", "--recipe", str(recipe_file)]
    return subprocess.Popen(command, env=run_env(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_bad_recipe_exits_2_through_the_launcher(tmp_path: Path) -> None:
    bad = tmp_path / "recipe.json"
    bad.write_text(json.dumps({"model": {"name": "x"}}))
    process = launcher(bad, tmp_path / "out")
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 2, output
    assert "invalid recipe" in output


def test_a_worker_killed_by_sigkill_exits_137(tmp_path: Path) -> None:
    spec = tmp_path / "recipe.json"
    spec.write_text(json.dumps(recipe(maxSteps=100_000)))
    out = tmp_path / "out"
    process = launcher(spec, out, nproc=2)
    try:
        wait_for(lambda: (out / "metrics.jsonl").is_file() and "step" in (out / "metrics.jsonl").read_text(), 180)
        workers = psutil.Process(process.pid).children()
        assert len(workers) == 2, workers
        workers[-1].send_signal(signal.SIGKILL)  # one rank, as the OOM killer does; the launcher survives
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            time.sleep(0.5)
    assert process.returncode == 137, output


def test_a_stopped_pod_exits_143_after_the_trainer_checkpointed(tmp_path: Path) -> None:
    """SIGTERM to the launcher (what the kubelet sends PID 1 when the pod is deleted or drained): torchrun passes it
    to the trainer, which checkpoints; the pod exits 143 — never 0, which would read as a finished run."""
    spec = tmp_path / "recipe.json"
    spec.write_text(json.dumps(recipe(maxSteps=100_000)))
    out = tmp_path / "out"
    process = launcher(spec, out)
    try:
        wait_for(lambda: (out / "metrics.jsonl").is_file() and "step" in (out / "metrics.jsonl").read_text(), 180)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, output
    assert "stopped by SIGTERM" in output
    assert any(path.name.startswith("checkpoint-") for path in out.iterdir()), output
