"""`finetune local SWEEP.yaml`: run a FineTuneSweep on this machine, with the operator's pruning, no cluster.

Each trial is what `finetune local` makes of one FineTuneJob — the same trainer process, the same `metrics.jsonl`,
the same early-stopping policy (`run.follow`), the same clean stop (SIGTERM: the trainer checkpoints) — and the
sweep adds what the operator adds in the cluster: trials start in index order as slots free, and after every new
step of any trial the pure sweep rule (`decisions.sweep.judge_sweep`) re-judges everyone from the curves read
so far; a trial it prunes is stopped like an early stop. The trial list comes from `api.sweep.plan`, so this
command, `finetune render` and the operator agree on every trial's name and spec.

The module has two halves: pure state and wording (what a trial has shown, the table, the summary: tested
without a trainer) and the process loop at the end (start, follow, stop, wait).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TextIO

from finetune_contract.checkpoints import FINAL_DIR, METRICS_FILE, latest_checkpoint
from finetune_contract.records import KIND, KIND_EVAL, KIND_EVENT, KIND_STEP
from finetune_operator.api import API_VERSION, FineTuneJob, FineTuneJobSpec, Verdict
from finetune_operator.api.models import KIND as JOB_KIND
from finetune_operator.api.sweep import (
    FineTuneSweep,
    FineTuneSweepSpec,
    PlannedTrial,
    TrialPhase,
    plan,
    set_path,
)
from finetune_operator.api.validation import FieldError, InvalidInputError
from finetune_operator.decisions.pruning import Verdict as PruneVerdict
from finetune_operator.decisions.sweep import (
    Curve,
    best,
    correlation,
    judge_sweep,
    objective,
    predictive,
    projected_savings,
    rungs_of,
    score_direction,
    scores_by_rung,
)
from finetune_operator.local.launch import (
    Stopper,
    cuda_device_count,
    interrupts,
    launch_for,
    local_processes,
    missing_paths,
)
from finetune_operator.local.report import Outcome, RunState, decide
from finetune_operator.local.run import RUNS_DIR, Follower, follow, log_tail, read_records
from finetune_trainer.config import recipe_json

POLL_SECONDS = 0.2
SUMMARY_FILE = "sweep-summary.json"
PLOT_FILE = "sweep.png"
CACHE_DIR = Path(".cache") / "data"
LOCAL_SCORES = ("trainLoss", "evalLoss", "gradNorm", "paper")
"""Scores computed from the trainers' own records; promql needs the cluster's Prometheus."""
EXIT_SUCCEEDED, EXIT_NONE_SUCCEEDED, EXIT_INTERRUPTED = 0, 1, 130


# --- input: the sweep manifest and each trial's local job (pure) --------------------------------------------------


def local_problems(spec: FineTuneSweepSpec, source: str) -> list[FieldError]:
    """What the cluster could run but this command cannot judge: a score with nothing local to read.

    Without these errors the sweep would run with every score missing, and missing scores never prune: a whole
    sweep's compute spent while looking as if it worked.
    """
    problems = []
    metric = spec.pruning.score.metric
    if metric not in LOCAL_SCORES and spec.pruning.algorithm != "none":
        rule = f"finetune local computes scores from the trainers' records ({', '.join(LOCAL_SCORES)}), not {metric}"
        problems.append(FieldError("spec.pruning.score.metric", rule, repr(metric), source))
    return problems


def local_job(sweep: FineTuneSweep, trial: PlannedTrial, output: Path) -> FineTuneJob:
    """The trial as a FineTuneJob for this machine: its planned spec plus two local settings.

    An evalLoss score needs an eval at every rung, so a trial without evalIntervalSteps evaluates every
    firstRungStep steps (the rungs r·η^k are all multiples of r). Trials without a cacheDir share one tokenized
    data cache under the sweep's output directory: the data is tokenized once, not once per trial (the trainer
    writes it atomically, so trials starting together do not clash).
    """
    wire = trial.spec.to_wire()
    if sweep.spec.pruning.score.metric == "evalLoss" and trial.spec.training.eval_interval_steps is None:
        set_path(wire, "training.evalIntervalSteps", sweep.spec.pruning.first_rung_step)
    if trial.spec.data.cache_dir is None:
        set_path(wire, "data.cacheDir", str(output / CACHE_DIR))
    spec = FineTuneJobSpec.model_validate_json(json.dumps(wire), strict=True)
    return FineTuneJob.model_validate(
        {"apiVersion": API_VERSION, "kind": JOB_KIND, "metadata": {"name": trial.name}, "spec": spec}
    )


def sweep_missing_paths(jobs: Sequence[tuple[PlannedTrial, FineTuneJob]], source: str) -> list[FieldError]:
    """Data and model paths missing here, named where the sweep sets them: the template, or a trial's value."""
    out: dict[str, FieldError] = {}
    for trial, job in jobs:
        for problem in missing_paths(job, source):
            inner = problem.path.removeprefix("spec.")
            by_parameter = any(inner == path or inner.startswith(path + ".") for path in trial.parameters)
            where = f"{trial.name}: {problem.path}" if by_parameter else f"spec.template.{inner}"
            out.setdefault(where, FieldError(where, problem.rule, problem.value, source))
    return list(out.values())


# --- what each trial has shown (pure) ------------------------------------------------------------------------------


@dataclass
class TrialRun:
    """One trial as this command sees it: its plan, what its metrics file has shown, how it ended."""

    trial: PlannedTrial
    job: FineTuneJob
    output: Path
    state: RunState = field(default_factory=RunState)
    evals: dict[int, float] = field(default_factory=dict)
    phase: TrialPhase = TrialPhase.Pending
    reason: str = ""
    message: str = ""
    prune: PruneVerdict | None = None
    pruned_at: int | None = None
    """The trial's last step when the sweep pruned it (it may train one more step before it checkpoints)."""
    stop: Verdict | None = None
    started_at: float | None = None
    ended_at: float | None = None
    seconds: float = 0.0
    """Trainer wall-seconds (start to exit, setup included): what the trial cost."""
    returncode: int | None = None
    checkpoint: str | None = None

    @property
    def name(self) -> str:
        return self.trial.name

    def curve(self) -> Curve:
        return Curve(self.name, self.state.ordered(), dict(self.evals), self.trial.calibration)

    def last_step(self) -> int:
        latest = self.state.latest()
        return latest.step if latest else 0

    def total_steps(self) -> int | None:
        latest = self.state.latest()
        if latest is not None and latest.total_steps:
            return latest.total_steps
        return self.job.spec.training.max_steps


def take(run: TrialRun, record: Mapping[str, Any], history: list[dict[str, Any]]) -> tuple[bool, Verdict | None]:
    """One metrics record into the trial's state: (whether the sweep must re-judge, the early-stopping verdict).

    Steps go through `run.follow` one at a time, so the trial's own policy judges it exactly as `finetune local`
    judges a single job; eval losses are kept by step, since an evalLoss score at a rung arrives after the step.
    """
    kind = record.get(KIND)
    if kind == KIND_EVAL and record.get("eval_loss") is not None:
        run.evals[int(record["step"])] = float(record["eval_loss"])
        return True, None
    if kind == KIND_EVENT and record.get("event") == "resumed":
        up_to = int(record.get("step", 0))
        for old in history:
            if old.get(KIND) == KIND_EVAL and old.get("eval_loss") is not None and int(old["step"]) <= up_to:
                run.evals[int(old["step"])] = float(old["eval_loss"])
    verdict = follow([dict(record)], run.state, history, run.job)
    return kind == KIND_STEP, verdict


def prune_message(verdict: PruneVerdict, metric: str, keep_factor: int) -> str:
    """The evidence in words, as the operator writes it in the trial's status."""
    if verdict.reason == "NonFiniteScore":
        return f"{metric} score {verdict.score} at rung step {verdict.rung} is not finite"
    return (
        f"{metric} score {_g(verdict.score)} at rung step {verdict.rung} is worse than the rung's cutoff "
        f"{_g(verdict.cutoff)} among {verdict.peers} trials (keeping the best 1/{keep_factor})"
    )


def prunable(run: TrialRun, verdict: PruneVerdict | None) -> bool:
    """The rule says prune and there is something left to save: a trial whose last step is in has only its
    final eval and model to write, and a SIGTERM then would cost the model and save nothing."""
    total = run.total_steps()
    return verdict is not None and verdict.prune and (total is None or run.last_step() < total)


def thread_env(env: Mapping[str, str], parallel: int, cpus: int) -> dict[str, str]:
    """The trainer's environment with its share of the CPU cores as torch's thread count.

    torch starts one compute thread per core in every process: `parallel` trainers would run parallel x cores
    threads on the cores and each would crawl (measured: two quickstart trainers at once on 2 cores took 1.9 s
    per step each with torch's default threads, 0.2 s with one thread each). An OMP_NUM_THREADS the user or the
    spec set is kept.
    """
    if "OMP_NUM_THREADS" in env:
        return dict(env)
    return {**env, "OMP_NUM_THREADS": str(max(1, cpus // max(1, parallel)))}


def final_phase(returncode: int | None, stopped_by: str | None, state: RunState) -> TrialPhase:
    """The trial's phase from who stopped its trainer and how it ended (see report.decide).

    A trial the sweep pruned but whose trainer had already finished (the verdict came with its last step) trained
    in full: it is Succeeded, and nothing was saved by pruning it.
    """
    if stopped_by == "sweep":
        return TrialPhase.Succeeded if returncode == 0 and state.event("done") else TrialPhase.Pruned
    return {
        Outcome.Succeeded: TrialPhase.Succeeded,
        Outcome.EarlyStopped: TrialPhase.EarlyStopped,
        Outcome.Failed: TrialPhase.Failed,
        Outcome.Interrupted: TrialPhase.Suspended,
    }[decide(returncode, stopped_by, state)]


def rest_seconds(run: TrialRun) -> float:
    """What a pruned trial would still have cost: `projected_savings` at its per-step rate while training.

    The rate comes from its step records' times, not from wall time since its start: a trial that goes on pays
    no second setup, and a short trial's setup would otherwise inflate every projected step.
    """
    session = run.state.session
    total = run.total_steps() or 0
    step = run.last_step()
    if run.phase is not TrialPhase.Pruned or not session or step >= total:
        return 0.0
    first, last = session[0], session[-1]
    if last.step > first.step and first.time is not None and last.time is not None:
        per_step = (last.time - first.time) / (last.step - first.step)
    else:
        per_step = last.step_duration_seconds
    return projected_savings(step, total, per_step * step)


# --- the live table (pure) -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One trial's line in the live table."""

    name: str
    parameters: str
    calibration: bool
    phase: str
    step: int
    total: int | None
    loss: float | None
    rung: int | None
    score: float | None


def parameters_text(parameters: Mapping[str, Any]) -> str:
    """`learningRate=0.001 effectiveBatchSize=16`: the leaf names carry the meaning, the paths only length."""
    return " ".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in parameters.items())


def rows(runs: Sequence[TrialRun], scores: Mapping[str, Mapping[int, float | None]]) -> list[Row]:
    out = []
    for run in runs:
        latest = run.state.latest()
        reached = {step: value for step, value in scores.get(run.name, {}).items() if value is not None}
        rung = max(reached) if reached else None
        out.append(
            Row(
                name=run.name,
                parameters=parameters_text(run.trial.parameters),
                calibration=run.trial.calibration,
                phase=run.phase.value,
                step=latest.step if latest else 0,
                total=run.total_steps(),
                loss=latest.loss if latest else None,
                rung=rung,
                score=reached[rung] if rung is not None else None,
            )
        )
    return out


def table_lines(table: Sequence[Row]) -> list[str]:
    """The trial table, columns aligned; `*` marks calibration trials (never pruned)."""
    cells = [("trial", "parameters", "phase", "step", "loss", "rung score")]
    for row in table:
        cells.append(
            (
                row.name + ("*" if row.calibration else ""),
                row.parameters,
                row.phase,
                f"{row.step}/{row.total if row.total is not None else '?'}",
                _g(row.loss),
                f"{_g(row.score)} @{row.rung}" if row.rung is not None else "-",
            )
        )
    widths = [max(len(line[column]) for line in cells) for column in range(len(cells[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]


def fit_rows(table: Sequence[Row], limit: int) -> list[Row]:
    """At most `limit` rows, running trials first when they do not all fit: a table taller than the terminal
    cannot be redrawn in place (the cursor cannot go above the screen's top)."""
    if len(table) <= limit:
        return list(table)
    running = [row for row in table if row.phase == TrialPhase.Running.value]
    others = [row for row in table if row.phase != TrialPhase.Running.value]
    return (running + others)[: max(1, limit)]


def fit_lines(lines: Sequence[str], width: int) -> list[str]:
    return [line[: max(1, width)] for line in lines]


def change_key(row: Row) -> tuple[str, int | None, int]:
    """What makes a line worth printing on a pipe: a new phase, a new rung, or another quarter of the steps."""
    quarter = 4 * row.step // row.total if row.total else 0
    return row.phase, row.rung, quarter


def compact_line(row: Row) -> str:
    score = f" score {_g(row.score)} @{row.rung}" if row.rung is not None else ""
    total = row.total if row.total is not None else "?"
    return f"{row.name} [{row.parameters}] {row.phase} step {row.step}/{total} loss {_g(row.loss)}{score}"


# --- the summary (pure) --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialResult:
    """One trial in the summary."""

    index: int
    name: str
    parameters: dict[str, Any]
    calibration: bool
    phase: str
    reason: str
    message: str
    steps: int
    total_steps: int | None
    scores: dict[int, float | None]
    objective: float | None
    trainer_seconds: float
    rest_seconds: float
    """Projected trainer-seconds the trial would still have used (pruned trials only)."""
    rest_steps: int
    started_at: float | None
    ended_at: float | None
    returncode: int | None
    checkpoint: str | None
    output: str


@dataclass(frozen=True)
class SweepSummary:
    """The whole sweep's result: for the closing text and `sweep-summary.json`."""

    name: str
    output: str
    interrupted: bool
    exit_code: int
    objective_metric: str
    objective_direction: str
    score_metric: str
    rungs: list[int]
    best_trial: str | None
    best_objective: float | None
    best_checkpoint: str | None
    trainer_seconds: float
    trainer_seconds_full: float
    steps: int
    steps_full: int
    gpu_seconds: float
    rho: float | None
    rho_n: int
    rho_rung: int | None
    rho_verdict: str
    trials: list[TrialResult]
    not_started: list[str]
    wall_seconds: float
    plot: str | None = None

    @property
    def saved_percent(self) -> float | None:
        if self.trainer_seconds_full <= 0:
            return None
        return 100.0 * (self.trainer_seconds_full - self.trainer_seconds) / self.trainer_seconds_full


def gpu_seconds(run: TrialRun) -> float:
    """Trainer wall-seconds times GPUs (at least 1: a CPU trial counts as one device, so a budget still binds)."""
    return run.seconds * max(1, run.job.spec.resources.gpus_per_node)


def summarize(
    sweep: FineTuneSweep, runs: Sequence[TrialRun], output: Path, interrupted: bool, wall_seconds: float
) -> SweepSummary:
    """Best trial, compute used against the full sweep's, and whether the first-rung score predicted the
    objective (Spearman rho over the trials that trained to the end)."""
    spec = sweep.spec
    started = [run for run in runs if run.started_at is not None]
    curves = [run.curve() for run in started]
    scores = scores_by_rung(curves, spec.pruning)
    metric, window = spec.objective_metric(), spec.pruning.window_steps
    # only trials that trained to the end have an objective: a pruned trial's loss at its last step is not one
    finished = {
        run.name: objective(run.curve(), metric, window) for run in started if run.phase is TrialPhase.Succeeded
    }
    top = best(finished, spec.objective.direction)
    first = spec.pruning.first_rung_step
    rho = correlation(
        {name: values.get(first) for name, values in scores.items()},
        finished,
        score_direction(spec.pruning.score),
        spec.objective.direction,
        first,
    )
    results = [_result(run, scores.get(run.name, {}), finished.get(run.name)) for run in runs]
    checkpoint = next((r.checkpoint for r in results if top is not None and r.name == top[0]), None)
    used = sum(r.trainer_seconds for r in results)
    steps = sum(r.steps for r in results)
    succeeded = any(r.phase == TrialPhase.Succeeded for r in results)
    code = EXIT_INTERRUPTED if interrupted else EXIT_SUCCEEDED if succeeded else EXIT_NONE_SUCCEEDED
    last = max((run.last_step() for run in started), default=0)
    return SweepSummary(
        name=sweep.metadata.name,
        output=str(output),
        interrupted=interrupted,
        exit_code=code,
        objective_metric=metric,
        objective_direction=spec.objective.direction,
        score_metric=spec.pruning.score.metric,
        rungs=rungs_of(spec.pruning).steps(max(last, first)),
        best_trial=top[0] if top else None,
        best_objective=top[1] if top else None,
        best_checkpoint=checkpoint,
        trainer_seconds=used,
        trainer_seconds_full=used + sum(r.rest_seconds for r in results),
        steps=steps,
        steps_full=steps + sum(r.rest_steps for r in results),
        gpu_seconds=sum(gpu_seconds(run) for run in runs),
        rho=rho.rho,
        rho_n=rho.n,
        rho_rung=rho.rung,
        rho_verdict=rho_verdict(predictive(rho)),
        trials=results,
        not_started=[run.name for run in runs if run.started_at is None],
        wall_seconds=wall_seconds,
    )


def _result(run: TrialRun, scores: Mapping[int, float | None], value: float | None) -> TrialResult:
    total = run.total_steps()
    pruned = run.phase is TrialPhase.Pruned and total is not None
    return TrialResult(
        index=run.trial.index,
        name=run.name,
        parameters=dict(run.trial.parameters),
        calibration=run.trial.calibration,
        phase=run.phase.value,
        reason=run.reason,
        message=run.message,
        steps=run.last_step(),
        total_steps=total,
        scores=dict(scores),
        objective=value,
        trainer_seconds=run.seconds,
        rest_seconds=rest_seconds(run),
        rest_steps=max(0, (total or 0) - run.last_step()) if pruned else 0,
        started_at=run.started_at,
        ended_at=run.ended_at,
        returncode=run.returncode,
        checkpoint=run.checkpoint,
        output=str(run.output),
    )


def rho_verdict(value: bool | None) -> str:
    return {True: "predictive", False: "not predictive", None: "too few trials"}[value]


def summary_text(summary: SweepSummary) -> str:
    """The closing block: best trial, phases, compute used against the full sweep, rho, files, the trial table."""
    counts: dict[str, int] = {}
    for trial in summary.trials:
        counts[trial.phase] = counts.get(trial.phase, 0) + 1
    head = (
        "Interrupted (Ctrl-C): running trials checkpointed; a re-run starts the sweep again, trials with a "
        "checkpoint resuming from it"
        if summary.interrupted
        else ""
    )
    best_text = "none (no trial trained to the end)"
    if summary.best_trial is not None:
        best_text = (
            f"{summary.best_trial}  {summary.objective_metric} {_g(summary.best_objective)}  "
            f"{summary.best_checkpoint or 'no model'}"
        )
    saved = summary.saved_percent
    compute = (
        f"{summary.trainer_seconds:,.0f} trainer-s of ~{summary.trainer_seconds_full:,.0f} for the full sweep"
        f" ({'?' if saved is None else f'{saved:.0f}'}% saved by pruning); "
        f"{summary.steps} of {summary.steps_full} optimizer steps"
    )
    rho = "-" if summary.rho is None else f"{summary.rho:+.2f}"
    rho_text = (
        f"{rho} over {summary.rho_n} finished trials (score at step {summary.rho_rung} vs objective): "
        f"{summary.rho_verdict}"
    )
    rows_ = [("outcome", head)] if head else []
    rows_ += [
        ("best", best_text),
        ("trials", ", ".join(f"{count} {phase}" for phase, count in counts.items())),
        ("compute", compute),
        ("rho", rho_text),
        ("wall time", _duration(summary.wall_seconds)),
        ("summary", str(Path(summary.output) / SUMMARY_FILE)),
        ("plot", summary.plot or "none (no steps, or matplotlib is missing)"),
    ]
    if summary.not_started:
        why = next((t.message for t in summary.trials if t.name in summary.not_started and t.message), "")
        rows_.append(("not started", ", ".join(summary.not_started) + (f" ({why})" if why else "")))
    width = max(len(key) for key, _ in rows_)
    lines = [f"finetune local: sweep {summary.name}"]
    lines += [f"  {key:<{width}}  {value}" for key, value in rows_]
    lines += ["", *("  " + line for line in result_lines(summary))]
    reasons = [
        f"  {t.name}: {t.reason}: {t.message}"
        for t in summary.trials
        if t.message and t.name not in summary.not_started
    ]
    return "\n".join(lines + reasons)


def result_lines(summary: SweepSummary) -> list[str]:
    first = summary.rungs[0] if summary.rungs else None
    cells = [("trial", "parameters", "phase", "steps", f"score@{first}", summary.objective_metric, "trainer-s")]
    for trial in summary.trials:
        cells.append(
            (
                trial.name
                + ("*" if trial.calibration else "")
                + (" (best)" if trial.name == summary.best_trial else ""),
                parameters_text(trial.parameters),
                trial.phase,
                f"{trial.steps}/{trial.total_steps if trial.total_steps is not None else '?'}",
                _g(trial.scores.get(first)) if first is not None else "-",
                _g(trial.objective),
                f"{trial.trainer_seconds:.0f}",
            )
        )
    widths = [max(len(line[column]) for line in cells) for column in range(len(cells[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]


def summary_json(summary: SweepSummary) -> dict[str, Any]:
    """`sweep-summary.json`: numbers as numbers, NaN/Inf as strings (JSON has no such numbers)."""
    return {
        "sweep": summary.name,
        "output": summary.output,
        "exitCode": summary.exit_code,
        "interrupted": summary.interrupted,
        "wallSeconds": summary.wall_seconds,
        "objective": {"metric": summary.objective_metric, "direction": summary.objective_direction},
        "score": {"metric": summary.score_metric, "rungs": summary.rungs},
        "best": {
            "trial": summary.best_trial,
            "objective": _number(summary.best_objective),
            "checkpoint": summary.best_checkpoint,
        },
        "compute": {
            "trainerSeconds": summary.trainer_seconds,
            "trainerSecondsFullSweep": summary.trainer_seconds_full,
            "optimizerSteps": summary.steps,
            "optimizerStepsFullSweep": summary.steps_full,
            "savedPercent": summary.saved_percent,
            "gpuSeconds": summary.gpu_seconds,
        },
        "correlation": {
            "rho": summary.rho,
            "n": summary.rho_n,
            "rung": summary.rho_rung,
            "verdict": summary.rho_verdict,
        },
        "notStarted": summary.not_started,
        "plot": summary.plot,
        "trials": [
            {
                "index": t.index,
                "name": t.name,
                "parameters": t.parameters,
                "calibration": t.calibration,
                "phase": t.phase,
                "reason": t.reason,
                "message": t.message,
                "steps": t.steps,
                "totalSteps": t.total_steps,
                "scores": {str(step): _number(value) for step, value in sorted(t.scores.items())},
                "objective": _number(t.objective),
                "trainerSeconds": t.trainer_seconds,
                "projectedRestSeconds": t.rest_seconds,
                "projectedRestSteps": t.rest_steps,
                "startedAt": t.started_at,
                "endedAt": t.ended_at,
                "returncode": t.returncode,
                "checkpoint": t.checkpoint,
                "output": t.output,
            }
            for t in summary.trials
        ],
    }


def _number(value: float | None) -> float | str | None:
    return value if value is None or math.isfinite(value) else str(value)


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


# --- the process loop ----------------------------------------------------------------------------------------------


class Board:
    """The live table: redrawn in place on a terminal; on a pipe (logs, CI), a line when a trial changes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self.height = 0
        self.drawn: list[str] = []
        self.seen: dict[str, tuple[str, int | None, int]] = {}

    def show(self, table: Sequence[Row]) -> None:
        if self.interactive:
            size = shutil.get_terminal_size()
            shown = fit_rows(table, size.lines - 3)
            hidden = (
                [f"... {len(table) - len(shown)} more trials (all in the summary)"] if len(shown) < len(table) else []
            )
            lines = fit_lines(table_lines(shown) + hidden, size.columns - 1)
            if lines == self.drawn and self.height:
                return  # unchanged: a redraw every poll would flood a terminal recording (script, tmux logs)
            self.drawn = lines
            text = f"\033[{self.height}F" if self.height else ""
            text += "".join("\033[K" + line + "\n" for line in lines) + "\033[J"
            self.stream.write(text)
            self.height = len(lines)
        else:
            for row in table:
                if self.seen.get(row.name) != (key := change_key(row)):
                    self.seen[row.name] = key
                    self.stream.write(compact_line(row) + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line above the table (the table is drawn again below it on the next show)."""
        if self.interactive and self.height:
            self.stream.write(f"\033[{self.height}F\033[J")
            self.height = 0
        self.stream.write(text + "\n")
        self.stream.flush()


@dataclass
class Trainer:
    """A running trial's process and what follows it."""

    process: subprocess.Popen[bytes]
    stopper: Stopper
    follower: Follower
    history: list[dict[str, Any]]
    log: IO[bytes]
    started: float


def start(run: TrialRun, parallel: int) -> Trainer:
    """Start the trial's trainer in its own directory, without a metrics endpoint (port 0): several trainers run
    at once, and each writes its metrics.jsonl, which is what this command reads."""
    run.output.mkdir(parents=True, exist_ok=True)
    recipe_path = run.output / "recipe.json"
    recipe_path.write_text(recipe_json(run.job.spec.recipe()) + "\n", encoding="utf-8")
    metrics_path = run.output / METRICS_FILE
    history = read_records(metrics_path)
    follower = Follower(metrics_path, metrics_path.stat().st_size if metrics_path.is_file() else 0)
    gpus = run.job.spec.resources.gpus_per_node
    launch = launch_for(run.job, recipe_path, run.output, 0, local_processes(gpus, cuda_device_count(gpus)))
    log = (run.output / "trainer.log").open("ab")
    env = thread_env(launch.env, parallel, len(os.sched_getaffinity(0)))
    process = subprocess.Popen(launch.command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    run.phase, run.started_at = TrialPhase.Running, time.time()
    return Trainer(process, Stopper(process), follower, history, log, time.monotonic())


def finish(run: TrialRun, trainer: Trainer, board: Board) -> None:
    trainer.log.close()
    run.returncode = trainer.process.returncode
    run.seconds = time.monotonic() - trainer.started
    run.ended_at = time.time()
    run.phase = final_phase(run.returncode, trainer.stopper.stopped_by, run.state)
    resume = latest_checkpoint(run.output)
    final = run.output / FINAL_DIR
    checkpoint = final if run.phase is TrialPhase.Succeeded else (resume.path if resume else None)
    run.checkpoint = str(checkpoint) if checkpoint is not None and checkpoint.exists() else None
    run.reason, run.message = ending(run, resume.step if resume else None)
    if run.phase is TrialPhase.Failed:
        board.note(f"{run.name} failed:\n{log_tail(run.output / 'trainer.log')}")


def ending(run: TrialRun, checkpoint_step: int | None) -> tuple[str, str]:
    """Reason and message of a trial that ended; a pruned or early-stopped one keeps its verdict's evidence."""
    if run.phase is TrialPhase.Succeeded:
        return ("TrainedToTheEnd", "") if run.prune is None else ("FinishedBeforePruned", "")
    if run.phase is TrialPhase.Suspended:
        where = f"checkpointed at step {checkpoint_step}" if checkpoint_step else "stopped before any checkpoint"
        return "Interrupted", f"Ctrl-C: {where}"
    if run.phase is TrialPhase.Failed:
        return "TrainerFailed", f"trainer exit code {run.returncode}; see {run.output / 'trainer.log'}"
    return run.reason, run.message


def judge(sweep: FineTuneSweep, runs: Sequence[TrialRun], live: Mapping[str, Trainer], board: Board) -> None:
    """Re-judge every trial from every started trial's curve; stop the running ones the rule prunes."""
    pruning = sweep.spec.pruning
    verdicts = judge_sweep([run.curve() for run in runs if run.started_at is not None], pruning)
    for run in runs:
        trainer = live.get(run.name)
        verdict = verdicts.get(run.name)
        if trainer is None or trainer.stopper.stopped_by is not None or not prunable(run, verdict):
            continue
        assert verdict is not None
        trainer.stopper.request("sweep")
        run.phase, run.prune, run.pruned_at = TrialPhase.Pruned, verdict, run.last_step()
        run.reason = "PrunedBySweep"
        run.message = prune_message(verdict, pruning.score.metric, pruning.keep_fraction_factor())
        board.note(f"pruned {run.name} at step {run.pruned_at}: {run.message}; the trainer checkpoints")


def read_new(
    sweep: FineTuneSweep, run: TrialRun, runs: Sequence[TrialRun], live: Mapping[str, Trainer], b: Board
) -> bool:
    """Take the trial's new records one by one: its own policy and the sweep judge after each (False: none)."""
    trainer = live[run.name]
    records = trainer.follower.read()
    for record in records:
        rejudge, verdict = take(run, record, trainer.history)
        if verdict is not None and verdict.decision == "stop" and trainer.stopper.stopped_by is None:
            trainer.stopper.request("policy")
            run.phase, run.stop = TrialPhase.EarlyStopped, verdict
            run.reason, run.message = verdict.reason, verdict.message
            b.note(f"early stop {run.name}: {verdict.reason}: {verdict.message}; the trainer checkpoints")
        if rejudge:
            judge(sweep, runs, live, b)
    return bool(records)


def run_sweep(
    sweep: FineTuneSweep,
    *,
    source: str,
    output: Path | None = None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Plan, run and judge every trial here; print and write the summary, draw the plot; returns the exit code."""
    trials, problems = plan(sweep.metadata.name, sweep.spec)
    errors = [FieldError(p.path, p.rule, p.value, source) for p in problems]
    errors += local_problems(sweep.spec, source)
    if errors:
        raise InvalidInputError(errors)
    out_dir = (output or RUNS_DIR / sweep.metadata.name).absolute()
    jobs = [(trial, local_job(sweep, trial, out_dir)) for trial in trials]
    if missing := sweep_missing_paths(jobs, source):
        raise InvalidInputError(missing)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [TrialRun(trial, job, out_dir / trial.name) for trial, job in jobs]
    board = Board(stderr)
    spec = sweep.spec
    board.note(
        f"finetune local: sweep {sweep.metadata.name}: {len(runs)} trials, {spec.max_parallel_trials} at a time, "
        f"rungs at step {spec.pruning.first_rung_step} x{spec.pruning.reduction_factor}^k, "
        f"score {spec.pruning.score.metric}, output {out_dir}"
    )
    started, interrupted = time.monotonic(), loop(sweep, runs, board)
    summary = summarize(sweep, runs, out_dir, interrupted, time.monotonic() - started)
    summary = _with_plot(summary, runs, out_dir / PLOT_FILE, board)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary_json(summary), indent=2) + "\n", encoding="utf-8")
    stdout.write(summary_text(summary) + "\n")
    stdout.flush()
    return summary.exit_code


def loop(sweep: FineTuneSweep, runs: list[TrialRun], board: Board) -> bool:
    """Start trials in index order as slots free, follow and judge them until all are done; True if interrupted.

    A bug in here must not leave trainers running on their own: whatever happens, every live trainer is asked
    to stop the clean way (SIGTERM) and waited for.
    """
    pending = list(runs)
    live: dict[str, Trainer] = {}
    received: list[int] = []
    interrupted = False
    with interrupts(received):
        try:
            while True:
                if received:
                    received.clear()
                    interrupted = True
                    for run in pending:
                        run.reason, run.message = "Interrupted", "the sweep was interrupted"
                    pending.clear()
                    for trainer in live.values():
                        trainer.stopper.request("user")  # the second Ctrl-C: SIGKILL
                start_due(sweep, runs, pending, live, board)
                for run in [run for run in runs if run.name in live]:
                    exited = live[run.name].process.poll() is not None  # read after too: the last lines come first
                    read_new(sweep, run, runs, live, board)
                    if exited:
                        finish(run, live.pop(run.name), board)
                started = [run.curve() for run in runs if run.started_at is not None]
                board.show(rows(runs, scores_by_rung(started, sweep.spec.pruning)))
                if not live and not pending:
                    return interrupted
                time.sleep(POLL_SECONDS)
        finally:
            for run in [run for run in runs if run.name in live]:
                trainer = live.pop(run.name)
                if trainer.process.poll() is None:
                    trainer.stopper.request("user")
                    trainer.process.wait()
                finish(run, trainer, board)


def start_due(
    sweep: FineTuneSweep, runs: Sequence[TrialRun], pending: list[TrialRun], live: dict[str, Trainer], board: Board
) -> None:
    """Fill the free slots from the front of the queue, unless the GPU-hours budget is spent (then clear it)."""
    spec = sweep.spec
    while pending and len(live) < spec.max_parallel_trials:
        if spec.gpu_hours_budget is not None and (used := used_gpu_seconds(runs, live)) >= spec.gpu_hours_budget * 3600:
            board.note(f"gpuHoursBudget {spec.gpu_hours_budget} spent ({used / 3600:.3g} GPU-h): no new trial starts")
            for run in pending:
                run.reason, run.message = "GpuHoursBudgetSpent", "the sweep's gpuHoursBudget was spent"
            pending.clear()
            return
        run = pending.pop(0)
        live[run.name] = start(run, spec.max_parallel_trials)
        board.note(f"started {run.name} [{parameters_text(run.trial.parameters)}] pid {live[run.name].process.pid}")


def used_gpu_seconds(runs: Sequence[TrialRun], live: Mapping[str, Trainer]) -> float:
    """GPU-seconds so far: finished trials' totals plus running trials' time since they started."""
    now = time.monotonic()
    total = 0.0
    for run in runs:
        trainer = live.get(run.name)
        seconds = now - trainer.started if trainer is not None else run.seconds
        total += seconds * max(1, run.job.spec.resources.gpus_per_node)
    return total


def _with_plot(summary: SweepSummary, runs: Sequence[TrialRun], path: Path, board: Board) -> SweepSummary:
    """The summary with the plot's path, or without one when there is nothing to draw or no matplotlib."""
    if not any(run.state.steps for run in runs):
        return summary
    try:
        from finetune_operator.local.sweep_plot import TrialLine, write_sweep_plot

        lines = [
            TrialLine(
                run.name,
                parameters_text(run.trial.parameters),
                run.state.ordered(),
                run.pruned_at,
                run.name == summary.best_trial,
                "" if run.phase is TrialPhase.Succeeded else run.phase.value,
            )
            for run in runs
            if run.state.steps
        ]
        title = f"sweep {summary.name}: {len(runs)} trials, pruned on {summary.score_metric}"
        written = write_sweep_plot(lines, summary.rungs, path, title)
    except Exception as error:  # matplotlib missing or failing: the sweep and its summary stand without a plot
        board.note(f"no plot: {type(error).__name__}: {error}")
        return summary
    return replace(summary, plot=str(written))
