"""`finetune local FILE`: run one FineTuneJob on this machine, with the operator's early stopping, no cluster.

The same pieces as in the cluster, wired by a process instead of Kubernetes: the validated spec's recipe goes to
the same trainer (`python -m finetune_trainer`, or torchrun with one process per GPU), which serves the same
`/metrics` (on 127.0.0.1) and writes the same `metrics.jsonl`; this command follows that file and judges every new
step with the same pure policy (`finetune_operator.policy.evaluate`) and the job's `earlyStopping` spec. A "stop"
verdict is carried out as the operator's deletion of the PyTorchJob is in a pod: SIGTERM to the trainer, which
checkpoints and exits. Ctrl-C does the same (a second Ctrl-C kills it without a checkpoint).

The trainer runs in its own session, so the terminal's Ctrl-C reaches only this command, which then stops the
trainer the one clean way (SIGTERM) instead of a KeyboardInterrupt in the middle of a step or a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from finetune_contract.checkpoints import FINAL_DIR, METRICS_FILE, latest_checkpoint
from finetune_operator.api import FineTuneJob, Verdict
from finetune_operator.api.validation import InvalidInputError
from finetune_operator.decisions.policy import evaluate
from finetune_operator.local.launch import (
    METRICS_ADDR,
    Stopper,
    cuda_device_count,
    interrupts,
    launch_for,
    local_processes,
    missing_paths,
    port_problem,
)
from finetune_operator.local.report import EXIT_CODES, Outcome, RunState, Summary, decide, progress_line, summary_text
from finetune_trainer.config import recipe_json

RUNS_DIR = Path("runs")
POLL_SECONDS = 0.2


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a metrics file (a torn last line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


@dataclass
class Follower:
    """New complete lines of a growing JSONL file from a byte offset on; a line still being written waits."""

    path: Path
    offset: int
    partial: bytes = b""

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        records = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                records.append(json.loads(line))
        return records


class Display:
    """The live progress line: redrawn in place on a terminal, one plain line per step otherwise (logs, CI)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self.drawn = False

    def show(self, text: str) -> None:
        if self.interactive:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\033[K" + text[:width])
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self.end()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


def run_local(
    job: FineTuneJob,
    *,
    source: str,
    output: Path | None = None,
    port: int | None = None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Train `job` here, judge it with its early-stopping spec, print the summary; returns the exit code."""
    metrics_port = job.spec.metrics.port if port is None else port
    problems = missing_paths(job, source)
    if (busy := port_problem(metrics_port, "spec.metrics.port" if port is None else "--port", source)) is not None:
        problems.append(busy)
    if problems:
        raise InvalidInputError(problems)
    out_dir = (output or RUNS_DIR / job.metadata.name).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = out_dir / "recipe.json"
    recipe_path.write_text(recipe_json(job.spec.recipe()) + "\n", encoding="utf-8")
    metrics_path, log_path = out_dir / METRICS_FILE, out_dir / "trainer.log"
    history = read_records(metrics_path)
    follower = Follower(metrics_path, metrics_path.stat().st_size if metrics_path.is_file() else 0)

    gpus = job.spec.resources.gpus_per_node
    launch = launch_for(job, recipe_path, out_dir, metrics_port, local_processes(gpus, cuda_device_count(gpus)))
    display = Display(stderr)
    where = f"http://{METRICS_ADDR}:{metrics_port}/metrics" if metrics_port else "no metrics endpoint"
    how = "1 process" if launch.processes == 1 else f"torchrun, {launch.processes} processes"

    state, stop_verdict, started = RunState(), None, time.monotonic()
    received: list[int] = []
    resume_noted = False
    with interrupts(received), log_path.open("ab") as log:
        process = subprocess.Popen(
            launch.command, env=launch.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        stopper = Stopper(process)
        display.note(
            f"finetune local: {job.metadata.name}: trainer pid {process.pid} ({how}), output {out_dir}, {where}"
        )
        display.show(progress_line(state, None))
        try:
            while True:
                exited = process.poll() is not None  # read after exiting too: the last lines come before the exit
                while received:
                    received.pop(0)
                    stopper.request("user")
                verdict = follow(follower.read(), state, history, job)
                if (resumed := state.event("resumed")) is not None and not resume_noted:
                    resume_noted = True
                    display.note(f"resumed from {resumed.get('checkpoint')}; earlier steps come from the metrics file")
                if verdict is not None:
                    display.show(progress_line(state, verdict))
                    if verdict.decision == "stop" and stop_verdict is None and stopper.stopped_by is None:
                        stop_verdict = verdict
                        display.note(f"early stop: {verdict.reason}: {verdict.message}; the trainer checkpoints")
                        stopper.request("policy")
                if exited:
                    break
                time.sleep(POLL_SECONDS)
        finally:  # a bug here must not leave a trainer running on its own: stop it the clean way and wait
            if process.poll() is None:
                stopper.request("user")
                process.wait()
    display.end()
    for note in stopper.notes:
        display.note(note)
    outcome = decide(process.returncode, stopper.stopped_by, state)
    if outcome is Outcome.Failed:
        display.note(log_tail(log_path))
    resume = latest_checkpoint(out_dir)
    checkpoint = out_dir / FINAL_DIR if outcome is Outcome.Succeeded else (resume.path if resume else None)
    summary = Summary(
        name=job.metadata.name,
        outcome=outcome,
        returncode=process.returncode,
        wall_seconds=time.monotonic() - started,
        checkpoint=str(checkpoint) if checkpoint and checkpoint.exists() else None,
        metrics_file=str(metrics_path),
        plot=draw(state, job, stop_verdict, out_dir / "training.png", display),
        log_file=str(log_path),
        stop_verdict=stop_verdict,
    )
    stdout.write(summary_text(summary, state) + "\n")
    stdout.flush()
    return EXIT_CODES[outcome]


def follow(
    records: list[dict[str, Any]], state: RunState, history: list[dict[str, Any]], job: FineTuneJob
) -> Verdict | None:
    """Take new records, judging the run after each new step as it stood then (None: no new step).

    Returns the first stop verdict among them, else the verdict after the newest step. Judging only the newest
    of several steps read at once would make the step a run is stopped at depend on how fast this loop polls.
    """
    verdict: Verdict | None = None
    for record in records:
        if record.get("kind") == "event" and record.get("event") == "resumed":
            state.seed(history, int(record.get("step", 0)))
        if state.add(record) is not None and (verdict is None or verdict.decision != "stop"):
            verdict = evaluate(list(state.steps.values()), job.spec.early_stopping)
    return verdict


def draw(state: RunState, job: FineTuneJob, stop: Verdict | None, path: Path, display: Display) -> str | None:
    """The PNG plot, or None when there is nothing to plot or no matplotlib (the run's result stands anyway)."""
    steps = state.ordered()
    if not steps:
        return None
    title = f"{job.metadata.name}: loss, gradient norm and learning rate per optimizer step"
    try:
        from finetune_operator.local.plot import marks_for, write_plot

        return str(write_plot(steps, marks_for(steps, job.spec.early_stopping, stop), path, title))
    except Exception as error:  # matplotlib missing or failing: the run and its summary stand without a plot
        display.note(f"no plot: {type(error).__name__}: {error}")
        return None


def log_tail(path: Path, lines: int = 20) -> str:
    """The end of the trainer's log: where its error line and traceback are when it failed."""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    return "\n".join(["--- trainer log (last lines) ---", *text[-lines:], "---"])
