"""Sweep savings: how much compute pruning a FineTuneSweep on its early dynamics saves, and whether it keeps the best
recipe, for each candidate early score (trainLoss, evalLoss, gradNorm, paper).

What runs: a grid of recipes (learning rate x effective batch) on the quickstart's tiny Llama (examples/quickstart.yaml,
built from its config), trained on real GSM8K chat data from ../shared/data with a held-out eval split, expanded into
trials by the product's own `plan` (calibration trials included). For each sweep seed (= training.seed of every trial:
init, data order and eval split change) the FULL sweep is trained: every trial to the end, one trainer process at a
time (`python -m finetune_trainer`, launched as `finetune local` launches it, 2 threads), each trial's curve (steps,
evals, when each was logged) and its wall-seconds from process start to exit recorded.

The PRUNED sweep for each score is then replayed from those curves, not retrained: `maxParallelTrials` slots, trials
start in index order as slots free, a simulated clock runs each trial on its own recorded timeline (startup, steps,
evals), and after every simulated step the product's `judge_sweep` judges every trial that has started, on what the
curves show at that moment. A pruned trial holds its slot until the simulated moment it is pruned, plus its recorded
teardown (exit after the last record), and that is the compute it used. The replay is exact because a trial's first k
steps do not depend on whether it later runs on (same seed, deterministic CPU training, a constant schedule): the
benchmark checks this once by really training one pruned trial with maxSteps = k and comparing its losses, gradient
norms and eval loss at k with the full run's (relative difference <= 1e-6).

Reported per score (mean over seeds; per seed in the JSON): compute used / the full sweep's (trainer-seconds, and
optimizer steps), whether the full sweep's best trial (objective: final eval loss) survived, the regret (objective of
the pruned sweep's best minus the true best) and Spearman rho between the first-rung score and the objective, over
all trials of the full sweep (what an unpruned sweep would measure) and over the trials the pruned sweep finished
(what the product can report). Target for the default score: <= 40% of the full sweep's trainer-seconds with the best
recipe kept in >= 90% of the seeds. Not modelled: the operator's reaction time (a Prometheus scrape and a reconcile,
seconds on a GPU run of hours) and pod start-up beyond the trainer's own.

    flock /tmp/finetune-bench.lock env HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sweep_savings.py
    .venv/bin/python benchmarks/sweep_savings.py --replay-only benchmarks/results/sweep_savings.json   # no training
"""

from __future__ import annotations

import argparse
import copy
import heapq
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS, SHARED_DATA, format_table, write_results  # noqa: E402
from finetune_contract.checkpoints import METRICS_FILE  # noqa: E402
from finetune_contract.records import KIND, KIND_EVAL, StepRecord, is_step  # noqa: E402
from finetune_operator.api import FineTuneJob  # noqa: E402
from finetune_operator.api.models import API_VERSION  # noqa: E402
from finetune_operator.api.sweep import (  # noqa: E402
    SWEEP_KIND,
    FineTuneSweep,
    PlannedTrial,
    PruningSpec,
    plan,
    trial_manifest,
)
from finetune_operator.api.validation import validate_any  # noqa: E402
from finetune_operator.cli import load_jobs  # noqa: E402
from finetune_operator.decisions.sweep import (  # noqa: E402
    Curve,
    best,
    correlation,
    judge_sweep,
    objective,
    score_direction,
    scores_by_rung,
)
from finetune_operator.local.launch import launch_for  # noqa: E402
from finetune_trainer.config import recipe_json  # noqa: E402

SCORES = ("trainLoss", "evalLoss", "gradNorm", "paper")
BASELINE = "none"
"""The reference row: pruning off, i.e. the full sweep replayed through the same simulation (compute 1.0 exactly)."""
TARGET_COMPUTE = 0.40
TARGET_KEPT = 0.90
DETERMINISM_RTOL = 1e-6
QUICKSTART = REPO / "examples" / "quickstart.yaml"
DATA = SHARED_DATA / "gsm8k" / "train-00000-of-00002.chat.jsonl"
EVAL_LOSS_KEY = "eval_loss"
"""The eval record's field in the trainer's metrics file (finetune_trainer.metrics.JsonlLogger.log_eval)."""


@dataclass(frozen=True)
class Settings:
    seeds: int
    max_steps: int
    first_rung_step: int
    reduction_factor: int
    window_steps: int
    parallel: int
    learning_rates: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    eval_fraction: float
    threads: int
    data: str
    quick: bool


def default_settings(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    max_steps = args.max_steps or (18 if quick else 120)
    return Settings(
        seeds=args.seeds or (1 if quick else 3),
        max_steps=max_steps,
        first_rung_step=args.first_rung or max(1, round(max_steps / 10)),
        reduction_factor=args.reduction_factor or 3,
        window_steps=min(5, max(1, round(max_steps / 10))),
        parallel=args.parallel,
        learning_rates=(1e-3, 3e-3, 1e-2) if quick else (3e-4, 1e-3, 3e-3, 1e-2),
        batch_sizes=(4, 8) if quick else (8, 16, 32),
        eval_fraction=0.02,
        threads=args.threads,
        data=str(args.data),
        quick=quick,
    )


# ------------------------------------------------------------------------------------------------ the sweep itself
def sweep_manifest(settings: Settings, seed: int, cache_dir: Path) -> FineTuneSweep:
    """The sweep as a user would write it: the quickstart's job as the template, the grid, the pruning rule."""
    quickstart = load_jobs(str(QUICKSTART))[0]
    template = quickstart.spec.to_wire()
    template.pop("earlyStopping", None)  # the operator's per-job policy; the sweep's pruning is what is measured
    template["data"] = {
        "datasets": [{"path": settings.data, "format": "messages"}],
        "maxSeqLen": template["data"].get("maxSeqLen", 1024),
        "evalFraction": settings.eval_fraction,
        "cacheDir": str(cache_dir),
    }
    biggest = max(settings.batch_sizes)
    template["training"] = {
        **template["training"],
        "maxSteps": settings.max_steps,
        # maxSteps, not the data, ends every trial: enough epochs of the ~3,500 training samples for the biggest batch
        "epochs": max(1, math.ceil(settings.max_steps * biggest / 3000) + 1),
        "evalIntervalSteps": settings.first_rung_step,
        "seed": seed,
    }
    document = {
        "apiVersion": API_VERSION,
        "kind": SWEEP_KIND,
        "metadata": {"name": f"savings-seed{seed}", "namespace": "bench"},
        "spec": {
            "template": template,
            "parameters": [
                {"path": "training.learningRate", "values": list(settings.learning_rates)},
                {"path": "training.effectiveBatchSize", "values": list(settings.batch_sizes)},
            ],
            "maxParallelTrials": settings.parallel,
            "pruning": pruning_wire(settings, "trainLoss"),
        },
    }
    sweep = validate_any(document, "sweep_savings")
    assert isinstance(sweep, FineTuneSweep)
    return sweep


def pruning_wire(settings: Settings, metric: str) -> dict[str, Any]:
    algorithm = "none" if metric == BASELINE else "asha"
    return {
        "algorithm": algorithm,
        "firstRungStep": settings.first_rung_step,
        "reductionFactor": settings.reduction_factor,
        "windowSteps": settings.window_steps,
        "score": {"metric": "trainLoss" if metric == BASELINE else metric},
    }


def pruning_for(sweep: FineTuneSweep, metric: str, settings: Settings) -> PruningSpec:
    """The sweep's pruning rule with another score (or off): everything else as the sweep says."""
    wire = sweep.spec.pruning.to_wire() | pruning_wire(settings, metric)
    return PruningSpec.model_validate(wire)


# ------------------------------------------------------------------------------------------------ recorded trials
@dataclass(frozen=True)
class TrialRun:
    """One trial of the full sweep as it ran: its curve, when each step was done, and its wall time."""

    index: int
    name: str
    parameters: dict[str, Any]
    calibration: bool
    steps: tuple[StepRecord, ...]
    evals: dict[int, float]
    ready: tuple[float, ...]
    """ready[k - 1]: seconds from process start until step k (and its eval, if one was due) was logged."""
    wall_seconds: float
    returncode: int
    load: tuple[float, float] = (math.nan, math.nan)
    """1-minute load average of the machine before and after the trial: other work slows its wall time."""

    @property
    def completed(self) -> bool:
        return self.returncode == 0

    @property
    def startup(self) -> float:
        """Seconds from process start until the first step began (imports, model build, data): every trial pays
        it, pruned or not."""
        if not self.steps:
            return self.wall_seconds
        return max(0.0, self.ready[0] - self.steps[0].step_duration_seconds)

    @property
    def teardown(self) -> float:
        """Seconds from the last record to the process's exit (final eval/model save; a stopped trial's
        checkpoint): charged to pruned trials too."""
        return max(0.0, self.wall_seconds - (self.ready[-1] if self.ready else 0.0))

    def curve(self, upto: int | None = None) -> Curve:
        """What the sweep sees of this trial after `upto` steps (all of them by default)."""
        steps = self.steps if upto is None else self.steps[:upto]
        last = steps[-1].step if steps else 0
        evals = {step: loss for step, loss in self.evals.items() if step <= last}
        return Curve(self.name, steps, evals, self.calibration)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "parameters": self.parameters,
            "calibration": self.calibration,
            "wall_seconds": self.wall_seconds,
            "returncode": self.returncode,
            "load_average_before_after": list(self.load),
            "steps": {
                "step": [record.step for record in self.steps],
                "loss": [record.loss for record in self.steps],
                "grad_norm": [record.grad_norm for record in self.steps],
                "step_duration_seconds": [record.step_duration_seconds for record in self.steps],
                "ready_s": list(self.ready),
            },
            "evals": {str(step): loss for step, loss in sorted(self.evals.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialRun:
        columns = data["steps"]
        steps = tuple(
            StepRecord(step=step, loss=loss, grad_norm=grad, step_duration_seconds=duration)
            for step, loss, grad, duration in zip(
                columns["step"], columns["loss"], columns["grad_norm"], columns["step_duration_seconds"], strict=True
            )
        )
        return cls(
            index=data["index"],
            name=data["name"],
            parameters=data["parameters"],
            calibration=data["calibration"],
            steps=steps,
            evals={int(step): float(loss) for step, loss in data["evals"].items()},
            ready=tuple(columns["ready_s"]),
            wall_seconds=data["wall_seconds"],
            returncode=data["returncode"],
            load=tuple(data.get("load_average_before_after", (math.nan, math.nan))),
        )


def read_metrics(path: Path, started: float) -> tuple[list[StepRecord], dict[int, float], list[float]]:
    """Steps, evals by step, and for each step the seconds after `started` when it and its eval were logged."""
    steps: list[StepRecord] = []
    evals: dict[int, float] = {}
    logged: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            when = float(record.get("time") or started) - started
            if is_step(record):
                steps.append(StepRecord.from_json(record))
                logged[steps[-1].step] = max(logged.get(steps[-1].step, 0.0), when)
            elif record.get(KIND) == KIND_EVAL:
                step = int(record["step"])
                evals[step] = float(record[EVAL_LOSS_KEY])
                logged[step] = max(logged.get(step, 0.0), when)
    return steps, evals, [logged[record.step] for record in steps]


def run_trial(sweep: FineTuneSweep, trial: PlannedTrial, work: Path, threads: int) -> TrialRun:
    """Train one trial to the end in its own trainer process, as `finetune local` starts it."""
    job = FineTuneJob.model_validate(trial_manifest(sweep, trial))
    out = work / trial.name
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = out / "recipe.json"
    recipe_path.write_text(recipe_json(job.spec.recipe()) + "\n", encoding="utf-8")
    launch = launch_for(job, recipe_path, out, 0, 1)
    env = launch.env | {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()[0]
    with (out / "trainer.log").open("wb") as log:
        started = time.time()
        done = subprocess.run(launch.command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        ended = time.time()
    steps, evals, ready = read_metrics(out / METRICS_FILE, started)
    if done.returncode != 0:
        tail = (out / "trainer.log").read_text(errors="replace")[-1500:]
        print(f"  {trial.name}: trainer exited {done.returncode} after {len(steps)} steps\n{tail}", file=sys.stderr)
    return TrialRun(
        index=trial.index,
        name=trial.name,
        parameters=dict(trial.parameters),
        calibration=trial.calibration,
        steps=tuple(steps),
        evals=evals,
        ready=tuple(ready),
        wall_seconds=ended - started,
        returncode=done.returncode,
        load=(load_before, os.getloadavg()[0]),
    )


def with_max_steps(trial: PlannedTrial, steps: int) -> PlannedTrial:
    """The same trial stopped by its recipe after `steps` steps (the determinism check's short run)."""
    wire = copy.deepcopy(trial.spec.to_wire())
    wire["training"]["maxSteps"] = steps
    spec = type(trial.spec).model_validate(wire)
    return PlannedTrial(trial.index, trial.name + "-short", trial.parameters, spec, trial.calibration)


# ------------------------------------------------------------------------------------------------ the replay
@dataclass
class Outcome:
    """A trial in the replayed sweep: when it ran, how far, why it ended, what it used."""

    name: str
    start: float
    end: float = math.nan
    steps: int = 0
    pruned: bool = False
    seconds: float = 0.0
    reason: str = ""


@dataclass
class Replay:
    outcomes: dict[str, Outcome]
    curves: dict[str, Curve]
    """What the sweep saw of each trial when it ended (pruned trials: up to the pruning)."""
    judgements: int = 0

    @property
    def makespan(self) -> float:
        return max((outcome.end for outcome in self.outcomes.values()), default=0.0)

    def finished(self) -> list[str]:
        return [name for name, outcome in self.outcomes.items() if not outcome.pruned]


STEP, FREE = 0, 1


def replay(runs: Sequence[TrialRun], pruning: PruningSpec, parallel: int) -> Replay:
    """The asynchronous pruned sweep, replayed from the full sweep's recorded runs (see the module docstring)."""
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1 (got {parallel})")
    events: list[tuple[float, int, int, int]] = []  # (time, order, kind, run index)
    order = 0
    queue = deque(range(len(runs)))
    free = parallel
    reached = [0] * len(runs)
    running: set[int] = set()
    outcomes: dict[str, Outcome] = {}
    judgements = 0

    def push(when: float, kind: int, index: int) -> None:
        nonlocal order
        heapq.heappush(events, (when, order, kind, index))
        order += 1

    def start(now: float) -> None:
        nonlocal free
        while free and queue:
            index = queue.popleft()
            free -= 1
            run = runs[index]
            outcomes[run.name] = Outcome(run.name, start=now)
            if run.steps:
                running.add(index)
                push(now + run.ready[0], STEP, index)
            else:  # failed before its first step
                end(index, now + run.wall_seconds, pruned=False, reason="NoSteps")

    def end(index: int, when: float, pruned: bool, reason: str) -> None:
        outcome = outcomes[runs[index].name]
        running.discard(index)
        outcome.end, outcome.steps, outcome.pruned, outcome.reason = when, reached[index], pruned, reason
        outcome.seconds = when - outcome.start
        push(when, FREE, index)

    start(0.0)
    while events:
        now, _, kind, index = heapq.heappop(events)
        if kind == FREE:
            free += 1
            start(now)
            continue
        if index not in running:
            continue
        run = runs[index]
        reached[index] += 1
        if reached[index] < len(run.steps):
            push(outcomes[run.name].start + run.ready[reached[index]], STEP, index)
        else:
            done_at = outcomes[run.name].start + run.wall_seconds
            end(index, done_at, pruned=False, reason="Succeeded" if run.completed else "Failed")
        started = [i for i in range(len(runs)) if runs[i].name in outcomes]
        verdicts = judge_sweep([runs[i].curve(reached[i]) for i in started], pruning)
        judgements += 1
        for other in sorted(running):
            verdict = verdicts.get(runs[other].name)
            if verdict is not None and verdict.prune:
                end(other, now + runs[other].teardown, pruned=True, reason=verdict.reason)
    curves = {run.name: run.curve(reached[i]) for i, run in enumerate(runs)}
    return Replay(outcomes, curves, judgements)


def max_overlap(outcomes: Iterable[Outcome]) -> int:
    """Most trials holding a slot at the same moment (an end at t frees the slot before a start at t)."""
    marks = sorted([(o.start, 1) for o in outcomes] + [(o.end, -1) for o in outcomes], key=lambda m: (m[0], m[1]))
    most = current = 0
    for _, change in marks:
        current += change
        most = max(most, current)
    return most


# ------------------------------------------------------------------------------------------------ the figures
def objectives(runs: Sequence[TrialRun], metric: str, window: int) -> dict[str, float | None]:
    """Final objective of every trial that completed (a failed trial has none)."""
    return {run.name: objective(run.curve(), metric, window) if run.completed else None for run in runs}


def evaluate_score(
    runs: Sequence[TrialRun], pruning: PruningSpec, parallel: int, metric: str, window: int
) -> dict[str, Any]:
    """One seed, one score: the replayed pruned sweep against the full one."""
    truth = objectives(runs, metric, window)
    true_best = best(truth, "minimize")
    result = replay(runs, pruning, parallel)
    finished = set(result.finished())
    chosen = best({name: value for name, value in truth.items() if name in finished}, "minimize")
    full_seconds = sum(run.wall_seconds for run in runs)
    overhead = {run.name: run.startup + run.teardown for run in runs}
    full_training = sum(run.wall_seconds - overhead[run.name] for run in runs)
    used_training = sum(max(0.0, o.seconds - overhead[name]) for name, o in result.outcomes.items())
    full_steps = sum(len(run.steps) for run in runs)
    used_seconds = sum(outcome.seconds for outcome in result.outcomes.values())
    used_steps = sum(outcome.steps for outcome in result.outcomes.values())
    first = pruning.first_rung_step
    direction = score_direction(pruning.score)
    all_scores = scores_by_rung([run.curve() for run in runs], pruning)
    seen_scores = scores_by_rung(list(result.curves.values()), pruning)
    rho_all = correlation({n: s.get(first) for n, s in all_scores.items()}, truth, direction, "minimize", first)
    finished_truth = {name: value for name, value in truth.items() if name in finished}
    rho_finished = correlation(
        {n: s.get(first) for n, s in seen_scores.items()}, finished_truth, direction, "minimize", first
    )
    regret = None if chosen is None or true_best is None else chosen[1] - true_best[1]
    return {
        "compute_seconds_ratio": used_seconds / full_seconds if full_seconds else math.nan,
        "compute_training_seconds_ratio": used_training / full_training if full_training else math.nan,
        "compute_steps_ratio": used_steps / full_steps if full_steps else math.nan,
        "used_trainer_seconds": used_seconds,
        "full_trainer_seconds": full_seconds,
        "used_steps": used_steps,
        "full_steps": full_steps,
        "makespan_s": result.makespan,
        "true_best": true_best[0] if true_best else None,
        "true_best_objective": true_best[1] if true_best else None,
        "chosen_best": chosen[0] if chosen else None,
        "chosen_best_objective": chosen[1] if chosen else None,
        "best_kept": true_best is not None and true_best[0] in finished,
        "regret": regret,
        "rho_all": rho_all.rho,
        "rho_all_n": rho_all.n,
        "rho_finished": rho_finished.rho,
        "rho_finished_n": rho_finished.n,
        "pruned": sum(1 for outcome in result.outcomes.values() if outcome.pruned),
        "max_overlap": max_overlap(result.outcomes.values()),
        "judgements": result.judgements,
        "trials": {name: asdict(outcome) for name, outcome in result.outcomes.items()},
    }


def aggregate(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Over seeds: mean and range of the compute ratios, kept count, mean regret, mean rho."""

    def values(key: str) -> list[float]:
        return [float(row[key]) for row in per_seed if row[key] is not None and math.isfinite(float(row[key]))]

    def mean(key: str) -> float | None:
        found = values(key)
        return statistics.fmean(found) if found else None

    seconds = values("compute_seconds_ratio")
    kept = sum(1 for row in per_seed if row["best_kept"])
    return {
        "seeds": len(per_seed),
        "compute_seconds_ratio": mean("compute_seconds_ratio"),
        "compute_seconds_ratio_max": max(seconds, default=None),
        "compute_steps_ratio": mean("compute_steps_ratio"),
        "compute_training_seconds_ratio": mean("compute_training_seconds_ratio"),
        "makespan_s": mean("makespan_s"),
        "best_kept": kept,
        "best_kept_fraction": kept / len(per_seed) if per_seed else 0.0,
        "regret_mean": mean("regret"),
        "regret_max": max(values("regret"), default=None),
        "rho_all": mean("rho_all"),
        "rho_finished": mean("rho_finished"),
        "rho_finished_n": mean("rho_finished_n"),
    }


def target_met(row: Mapping[str, Any]) -> bool:
    ratio = row["compute_seconds_ratio"]
    return ratio is not None and ratio <= TARGET_COMPUTE and row["best_kept_fraction"] >= TARGET_KEPT


def recommend(table: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, str | None, str]:
    """(the score that meets the target at the lowest compute or None, the closest score, why), said plainly.

    Closest: the most seeds that kept the best recipe, then the least compute."""
    candidates = [score for score in SCORES if score in table]
    if not candidates:
        return None, None, "no score was measured"
    closest = min(candidates, key=lambda s: (-table[s]["best_kept"], table[s]["compute_seconds_ratio"] or math.inf))
    meeting = [score for score in candidates if target_met(table[score])]
    if meeting:
        pick = min(meeting, key=lambda s: (table[s]["compute_seconds_ratio"], -(table[s]["rho_all"] or -1.0)))
        return pick, closest, f"{pick} meets the target at the lowest compute"
    return (
        None,
        closest,
        f"no score meets the target; closest: {closest} (most seeds kept the best, then least compute)",
    )


def analyse(
    seeds: Mapping[int, Sequence[TrialRun]], sweeps: Mapping[int, FineTuneSweep], settings: Settings
) -> dict[str, Any]:
    per_seed: dict[str, dict[str, Any]] = {}
    for seed, runs in seeds.items():
        sweep = sweeps[seed]
        metric = sweep.spec.objective_metric()
        window = sweep.spec.pruning.window_steps
        per_seed[str(seed)] = {
            score: evaluate_score(runs, pruning_for(sweep, score, settings), settings.parallel, metric, window)
            for score in (BASELINE, *SCORES)
        }
    table = {
        score: aggregate([per_seed[seed][score] for seed in per_seed]) | {"target_met": False}
        for score in (BASELINE, *SCORES)
    }
    for score in SCORES:
        table[score]["target_met"] = target_met(table[score])
    pick, closest, why = recommend(table)
    return {"per_seed": per_seed, "table": table, "recommended": pick, "closest": closest, "recommendation": why}


def print_table(analysis: Mapping[str, Any]) -> None:
    rows = []
    for score in (BASELINE, *SCORES):
        row = analysis["table"][score]
        rows.append(
            [
                score,
                _percent(row["compute_seconds_ratio"]),
                _percent(row["compute_seconds_ratio_max"]),
                _percent(row["compute_training_seconds_ratio"]),
                _percent(row["compute_steps_ratio"]),
                f"{row['best_kept']}/{row['seeds']}",
                _number(row["regret_mean"]),
                _number(row["rho_all"]),
                f"{_number(row['rho_finished'])} (n {_count(row['rho_finished_n'])})",
                "-" if score == BASELINE else ("yes" if row["target_met"] else "no"),
            ]
        )
    headers = [
        "score",
        "compute % (s)",
        "max %",
        "w/o startup %",
        "steps %",
        "best kept",
        "mean regret",
        "rho all",
        "rho finished",
        f"target (<= {TARGET_COMPUTE:.0%}, >= {TARGET_KEPT:.0%} kept)",
    ]
    print(format_table(headers, rows))


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


# ------------------------------------------------------------------------------------------------ main
def determinism_check(
    sweep: FineTuneSweep,
    trials: Sequence[PlannedTrial],
    runs: Sequence[TrialRun],
    analysis: Mapping[str, Any],
    work: Path,
    threads: int,
) -> dict[str, Any]:
    """Train one trial the replay pruned for only the k steps it ran, and compare with the full run's first k."""
    outcomes = next(iter(analysis["per_seed"].values()))
    step, index = 0, 0
    for score in SCORES:  # the first pruned trial of the first score that pruned one, at the step it stopped
        pruned = [o for o in outcomes[score]["trials"].values() if o["pruned"] and o["steps"] > 0]
        if pruned:
            first = min(pruned, key=lambda o: o["start"])
            index = next(run.index for run in runs if run.name == first["name"])
            step = first["steps"]
            break
    full = next(run for run in runs if run.index == index)
    step = step or min(sweep.spec.pruning.first_rung_step, len(full.steps))
    short = run_trial(sweep, with_max_steps(trials[index], step), work, threads)
    pairs = [(a.loss, b.loss) for a, b in zip(full.steps[:step], short.steps, strict=False)]
    pairs += [(a.grad_norm, b.grad_norm) for a, b in zip(full.steps[:step], short.steps, strict=False)]
    last_eval = max((s for s in full.evals if s <= step), default=None)
    if last_eval is not None and last_eval in short.evals:
        pairs.append((full.evals[last_eval], short.evals[last_eval]))
    diff = max((_relative(a, b) for a, b in pairs), default=math.inf)
    ok = len(short.steps) == step and diff <= DETERMINISM_RTOL
    return {
        "trial": full.name,
        "steps": step,
        "short_run_steps": len(short.steps),
        "values_compared": len(pairs),
        "max_relative_difference": diff,
        "rtol": DETERMINISM_RTOL,
        "equal": ok,
    }


def _relative(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return math.inf
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="sweep seeds (default 3; --quick 1)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps per trial (default 120)")
    parser.add_argument("--first-rung", type=int, default=None, help="first rung step (default maxSteps/10)")
    parser.add_argument("--parallel", type=int, default=4, help="maxParallelTrials of the replayed sweep")
    parser.add_argument("--reduction-factor", type=int, default=None, help="pruning.reductionFactor (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each trainer process")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=None, help="result JSON (default results/sweep_savings.json)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 6 trials, 18 steps, 1 seed (JSON to the temp dir)"
    )
    parser.add_argument(
        "--replay-only",
        type=Path,
        default=None,
        help="re-analyse the recorded runs of an earlier result (no training); --parallel, --first-rung and "
        "--reduction-factor may differ from the recorded run's (evalLoss needs rungs at recorded eval steps)",
    )
    args = parser.parse_args()
    began = time.monotonic()
    if args.replay_only is not None:
        previous = json.loads(args.replay_only.read_text())
        overrides = {
            "parallel": args.parallel,
            "first_rung_step": args.first_rung or previous["settings"]["first_rung_step"],
            "reduction_factor": args.reduction_factor or previous["settings"]["reduction_factor"],
        }
        settings = Settings(**{**previous["settings"], **overrides})
        output = args.output or args.replay_only
    else:
        settings = default_settings(args)
        quick_output = Path(tempfile.gettempdir()) / "sweep_savings_quick.json"  # a smoke run is no result
        output = args.output or (quick_output if settings.quick else RESULTS / "sweep_savings.json")
    seed_values = [1 + offset for offset in range(settings.seeds)]
    print(
        f"grid: learningRate {list(settings.learning_rates)} x effectiveBatchSize {list(settings.batch_sizes)}, "
        f"{settings.seeds} seed(s), maxSteps {settings.max_steps}, rungs at {settings.first_rung_step} x "
        f"{settings.reduction_factor}^k, window {settings.window_steps}, {settings.parallel} parallel trials"
    )
    seeds: dict[int, list[TrialRun]] = {}
    sweeps: dict[int, FineTuneSweep] = {}
    check: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="sweep-savings-") as tmp:
        work = Path(tmp)
        for seed in seed_values:
            sweeps[seed] = sweep_manifest(settings, seed, work / "cache")
        if args.replay_only is not None:
            for seed in seed_values:
                seeds[seed] = [TrialRun.from_json(row) for row in previous["seeds"][str(seed)]["trials"]]
            check = previous.get("determinism_check")
        else:
            warm = plan(sweeps[seed_values[0]].metadata.name, sweeps[seed_values[0]].spec)[0][0]
            run_trial(sweeps[seed_values[0]], with_max_steps(warm, 1), work / "warm-up", settings.threads)
            for seed in seed_values:
                trials, problems = plan(sweeps[seed].metadata.name, sweeps[seed].spec)
                if problems:
                    raise SystemExit(f"the sweep is invalid: {problems}")
                runs = []
                for trial in trials:
                    run = run_trial(sweeps[seed], trial, work / f"seed{seed}", settings.threads)
                    final = run.evals[max(run.evals)] if run.evals and run.completed else math.nan
                    print(
                        f"seed {seed} {trial.name} {json.dumps(trial.parameters)}: {run.wall_seconds:.1f} s, "
                        f"{len(run.steps)} steps, final eval loss {final:.4f}"
                        + (" (calibration)" if trial.calibration else "")
                    )
                    runs.append(run)
                seeds[seed] = runs
        analysis = analyse(seeds, sweeps, settings)
        if args.replay_only is None:
            first = seed_values[0]
            trials = plan(sweeps[first].metadata.name, sweeps[first].spec)[0]
            check = determinism_check(sweeps[first], trials, seeds[first], analysis, work / "check", settings.threads)
    wall = time.monotonic() - began
    print()
    print_table(analysis)
    print(f"\n{analysis['recommendation']}")
    if check is not None:
        verdict = "equal" if check["equal"] else "NOT EQUAL"
        print(
            f"determinism: {check['trial']} retrained with maxSteps={check['steps']}: {check['values_compared']} "
            f"losses/grad norms/eval compared, max relative difference {check['max_relative_difference']:.2e} "
            f"({verdict} at rtol {check['rtol']:g})"
        )
    command = " ".join(sys.argv)
    provenance: dict[str, Any] = {"command": command, "wall_seconds": wall}
    if args.replay_only is not None:  # the figures of record are the training run's; this only re-analysed it
        provenance = {"command": previous["command"], "wall_seconds": previous["wall_seconds"]}
        provenance["analysis_command"] = command
        print(f"re-analysed in {wall:.0f} s; the training run took {previous['wall_seconds']:.0f} s")
    else:
        print(f"wall time {wall:.0f} s")
    result = {
        "settings": asdict(settings),
        **provenance,
        "targets": {"compute_seconds_ratio_max": TARGET_COMPUTE, "best_kept_fraction_min": TARGET_KEPT},
        "determinism_check": check,
        "recommended": analysis["recommended"],
        "closest": analysis["closest"],
        "recommendation": analysis["recommendation"],
        "table": analysis["table"],
        "seeds": {
            str(seed): {
                "sweep": sweeps[seed].metadata.name,
                "calibration": [run.name for run in seeds[seed] if run.calibration],
                "trials": [run.to_json() for run in seeds[seed]],
                "scores": analysis["per_seed"][str(seed)],
            }
            for seed in seed_values
        },
    }
    write_results(output, result)
    return 0 if check is None or check["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
