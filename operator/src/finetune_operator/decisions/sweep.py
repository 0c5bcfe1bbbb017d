"""The sweep's decisions from its trials' curves: the score at each rung, keep or prune, the best trial, and
whether the score predicts the objective (Spearman rho). Pure: the operator (curves from Prometheus), `finetune
local` (curves from metrics.jsonl) and the savings benchmark (recorded curves) call the same functions.

A rung's statistic is the median over the `windowSteps` optimizer steps ending at the rung, so one noisy step
neither prunes nor saves a trial. Where the steps were observed sparsely (Prometheus scrapes a fast trainer every
few steps) and none falls in the window, the first step observed within a window after the rung stands in. The
paper's score is relative by nature — ranks among the trials that reached the rung — so it is recomputed as peers
arrive, like every verdict (see pruning.judge).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from finetune_contract.records import StepRecord
from finetune_operator.api.sweep import Correlation, Direction, PruningSpec, ScoreSpec
from finetune_operator.decisions.pruning import Rungs, Trial, Verdict, judge, spearman


@dataclass(frozen=True)
class Curve:
    """What is known so far of one trial's run."""

    name: str
    steps: Sequence[StepRecord]
    evals: Mapping[int, float] = field(default_factory=dict)
    """Eval loss by optimizer step."""
    calibration: bool = False

    def last_step(self) -> int:
        return max((record.step for record in self.steps), default=0)


@dataclass(frozen=True)
class RungStats:
    """A trial's window statistics at one rung (None: not observed there)."""

    loss: float | None
    grad_norm: float | None
    eval_loss: float | None


def window_median(values: Sequence[float | None]) -> float | None:
    """Median of the observed values; NaN when any observed value is non-finite (a failing run, not noise)."""
    seen = [value for value in values if value is not None]
    if not seen:
        return None
    if any(not math.isfinite(value) for value in seen):
        return math.nan
    return float(statistics.median(seen))


def rung_stats(curve: Curve, rung: int, window: int) -> RungStats | None:
    """The statistics at `rung`, or None when the trial has not reached it."""
    if curve.last_step() < rung:
        return None
    in_window = [record for record in curve.steps if rung - window < record.step <= rung]
    if not in_window:  # sparse points (a scrape every few steps): the first one observed after the rung, if close
        after = sorted((r for r in curve.steps if rung < r.step <= rung + window), key=lambda r: r.step)
        in_window = after[:1]
    evals = [curve.evals[step] for step in sorted(curve.evals) if rung - window < step <= rung]
    if not evals:
        evals = [curve.evals[step] for step in sorted(curve.evals) if rung < step <= rung + window][:1]
    return RungStats(
        loss=window_median([record.loss for record in in_window]),
        grad_norm=window_median([record.grad_norm for record in in_window]),
        eval_loss=evals[-1] if evals else None,
    )


def rung_scores(stats: Mapping[str, RungStats], score: ScoreSpec) -> dict[str, float | None]:
    """Each trial's score at one rung. promql scores are read by the caller, not computed here."""
    if score.metric == "paper":
        return paper_scores(stats, score.grad_norm_weight, score.loss_weight)
    pick: dict[str, Callable[[RungStats], float | None]] = {
        "trainLoss": lambda s: s.loss,
        "evalLoss": lambda s: s.eval_loss,
        "gradNorm": lambda s: s.grad_norm,
    }
    if score.metric not in pick:
        raise ValueError(f"score {score.metric} is read from Prometheus, not computed from curves")
    return {name: pick[score.metric](value) for name, value in stats.items()}


def paper_scores(
    stats: Mapping[str, RungStats], grad_norm_weight: float, loss_weight: float
) -> dict[str, float | None]:
    """The study's early signal as one number: the weighted mean of the trial's rank by gradient norm (lowest
    first) and by loss (highest first) among the trials at the rung; lower is better. A non-finite value is NaN
    (the trial is failing), a missing one None (no score, never a reason to prune)."""
    out: dict[str, float | None] = {}
    complete: dict[str, tuple[float, float]] = {}
    for name, value in stats.items():
        if value.loss is None or value.grad_norm is None:
            out[name] = None
        elif not (math.isfinite(value.loss) and math.isfinite(value.grad_norm)):
            out[name] = math.nan
        else:
            complete[name] = (value.grad_norm, value.loss)
    grad_rank = _ranks({name: pair[0] for name, pair in complete.items()})
    loss_rank = _ranks({name: -pair[1] for name, pair in complete.items()})
    total = grad_norm_weight + loss_weight or 1.0
    for name in complete:
        out[name] = (grad_norm_weight * grad_rank[name] + loss_weight * loss_rank[name]) / total
    return out


def _ranks(values: Mapping[str, float]) -> dict[str, float]:
    """1 = smallest; ties share their mean rank (so names never decide a score)."""
    ordered = sorted(values.items(), key=lambda item: item[1])
    ranks: dict[str, float] = {}
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1][1] == ordered[start][1]:
            end += 1
        for position in range(start, end + 1):
            ranks[ordered[position][0]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def score_direction(score: ScoreSpec) -> Direction:
    return "minimize" if score.metric == "paper" else score.better()


def rungs_of(pruning: PruningSpec) -> Rungs:
    return Rungs(pruning.first_rung_step, pruning.reduction_factor)


def scores_by_rung(
    curves: Sequence[Curve],
    pruning: PruningSpec,
    external: Mapping[str, Mapping[int, float | None]] | None = None,
) -> dict[str, dict[int, float | None]]:
    """Every trial's score at every rung it has reached (external: promql values by trial and rung)."""
    rungs = rungs_of(pruning)
    last = max((curve.last_step() for curve in curves), default=0)
    out: dict[str, dict[int, float | None]] = {curve.name: {} for curve in curves}
    for rung in rungs.steps(last):
        if pruning.score.metric == "promql":
            for curve in curves:
                if curve.last_step() >= rung:
                    out[curve.name][rung] = (external or {}).get(curve.name, {}).get(rung)
            continue
        stats = {
            curve.name: value
            for curve in curves
            if (value := rung_stats(curve, rung, pruning.window_steps)) is not None
        }
        for name, score in rung_scores(stats, pruning.score).items():
            out[name][rung] = score
    return out


def judge_sweep(
    curves: Sequence[Curve],
    pruning: PruningSpec,
    external: Mapping[str, Mapping[int, float | None]] | None = None,
) -> dict[str, Verdict]:
    """Keep or prune every trial, from what its curve and its peers' curves show so far."""
    scores = scores_by_rung(curves, pruning, external)
    trials = [Trial(curve.name, scores[curve.name], curve.calibration) for curve in curves]
    if pruning.algorithm == "none":
        return {trial.name: Verdict(trial.name, False, "PruningDisabled") for trial in trials}
    return judge(
        trials,
        rungs_of(pruning),
        score_direction(pruning.score),
        pruning.min_trials_per_rung,
        keep_factor=pruning.keep_fraction_factor(),
    )


def objective(curve: Curve, metric: str, window: int) -> float | None:
    """A finished trial's objective: its last eval loss, or the median train loss over its last `window` steps."""
    if metric == "evalLoss":
        return curve.evals[max(curve.evals)] if curve.evals else None
    last = curve.last_step()
    return window_median([record.loss for record in curve.steps if record.step > last - window])


def best(objectives: Mapping[str, float | None], direction: Direction) -> tuple[str, float] | None:
    """The trial with the best finite objective (ties: the first name), or None."""
    finite = [(value, name) for name, value in objectives.items() if value is not None and math.isfinite(value)]
    if not finite:
        return None
    value, name = min(finite, key=lambda item: (item[0] if direction == "minimize" else -item[0], item[1]))
    return name, value


def correlation(
    first_rung_scores: Mapping[str, float | None],
    objectives: Mapping[str, float | None],
    score_better: Direction,
    objective_better: Direction,
    rung: int | None,
) -> Correlation:
    """Spearman rho between the first-rung score and the objective over trials that have both, signed so that
    positive means "a better score went with a better objective" whatever the two directions are."""
    pairs = [
        (score, value)
        for name, score in first_rung_scores.items()
        if score is not None
        and math.isfinite(score)
        and (value := objectives.get(name)) is not None
        and math.isfinite(value)
    ]
    rho = spearman([pair[0] for pair in pairs], [pair[1] for pair in pairs]) if pairs else None
    if rho is not None and score_better != objective_better:
        rho = -rho
    return Correlation(rho=rho, n=len(pairs), rung=rung)


PREDICTIVE_RHO = 0.3
"""Below this the score is reported as not predictive (ScoreNotPredictive=True)."""
MIN_CORRELATION_TRIALS = 4
"""Fewer finished trials than this and rho says nothing either way."""


def predictive(value: Correlation) -> bool | None:
    """True/False once enough trials finished; None before (no claim either way)."""
    if value.rho is None or value.n < MIN_CORRELATION_TRIALS:
        return None
    return value.rho >= PREDICTIVE_RHO


def projected_savings(step: int, total_steps: int, seconds_used: float) -> float:
    """What a pruned trial would still have used: its own rate so far times the steps it did not run."""
    if step <= 0 or total_steps <= step:
        return 0.0
    return seconds_used / step * (total_steps - step)
