"""The sweep's pruning rule (issue 13, first part): asynchronous successive halving on an early score. Pure.

Rungs sit at optimizer steps r, rη, rη², ... A trial is judged at the highest rung it has reached where at least
`min_trials_per_rung` trials have a score, against everyone who has reached that rung so far (calibration trials
included as peers), and is re-judged every time as peers arrive: ASHA's known weakness — the first trials through a
rung pass with nobody to compare to — is closed by never treating a pass as final, and a trial that ran ahead of
every peer is still judged where peers are. What never prunes: missing data (no score at a rung is not a bad score),
fewer than `min_trials_per_rung` peers at every rung reached, a rung the trial has not reached, and calibration
trials (kept so the sweep can measure whether its score predicts the objective at all). A non-finite score is the
trial failing: pruned at once, whatever the peers. Ties are broken by trial name, so the same inputs always give the
same verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Rungs:
    """Rung steps r, rη, rη², ... up to the last step a trial can reach."""

    first_step: int
    reduction_factor: int

    def __post_init__(self) -> None:
        if self.first_step < 1:
            raise ValueError(f"first_step must be at least 1 (got {self.first_step})")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be at least 2 (got {self.reduction_factor})")

    def steps(self, last_step: int) -> list[int]:
        out, step = [], self.first_step
        while step <= last_step:
            out.append(step)
            step *= self.reduction_factor
        return out


@dataclass(frozen=True)
class Trial:
    """One trial's score at each rung it has reached (None: the rung was reached but no score could be read)."""

    name: str
    scores: Mapping[int, float | None]
    calibration: bool = False

    def highest_rung(self, rungs: Rungs) -> int | None:
        """The highest rung step with a score (scores at other steps are ignored)."""
        reached = [step for step, score in self.scores.items() if score is not None and step in rungs.steps(step)]
        return max(reached) if reached else None


@dataclass(frozen=True)
class Verdict:
    """Keep or prune, with the evidence a status and an Event show."""

    trial: str
    prune: bool
    reason: str
    rung: int | None = None
    score: float | None = None
    cutoff: float | None = None
    peers: int = 0


def judge(
    trials: Sequence[Trial],
    rungs: Rungs,
    direction: Direction = "minimize",
    min_trials_per_rung: int = 3,
    keep_factor: int | None = None,
) -> dict[str, Verdict]:
    """A verdict for every trial, from the scores seen so far. A rung keeps the best 1/keep_factor of the trials
    that reached it (default: the reduction factor, as ASHA; 2 is the median rule)."""
    factor = keep_factor or rungs.reduction_factor
    return {trial.name: _judge_one(trial, trials, rungs, direction, min_trials_per_rung, factor) for trial in trials}


def _judge_one(
    trial: Trial, trials: Sequence[Trial], rungs: Rungs, direction: Direction, min_trials_per_rung: int, factor: int
) -> Verdict:
    highest = trial.highest_rung(rungs)
    if highest is None:
        return Verdict(trial.name, False, "NoScoreYet")
    top_score = trial.scores[highest]
    assert top_score is not None
    if trial.calibration:
        return Verdict(trial.name, False, "CalibrationTrial", highest, top_score)
    if not math.isfinite(top_score):
        return Verdict(trial.name, True, "NonFiniteScore", highest, top_score)
    for rung in _reached_rungs(trial, rungs):
        score = trial.scores[rung]
        assert score is not None
        finite = [
            (value, peer.name) for peer in trials if (value := _finite_or_none(peer.scores.get(rung))) is not None
        ]
        if len(finite) < min_trials_per_rung or not math.isfinite(score):
            continue
        peers = sorted(finite, key=lambda item: (item[0] if direction == "minimize" else -item[0], item[1]))
        keep = max(1, len(peers) // factor)
        cutoff = peers[keep - 1][0]
        kept = (score, trial.name) in peers[:keep]
        reason = "WithinRungCutoff" if kept else "BelowRungCutoff"
        return Verdict(trial.name, not kept, reason, rung, score, cutoff, len(peers))
    peers_at_top = sum(1 for peer in trials if _finite_or_none(peer.scores.get(highest)) is not None)
    return Verdict(trial.name, False, "TooFewPeers", highest, top_score, peers=peers_at_top)


def _reached_rungs(trial: Trial, rungs: Rungs) -> list[int]:
    """The rungs the trial has a score at, highest first: it is judged at the highest one that has enough peers.
    A trial that runs ahead of every peer (steps faster than the loop judges) is thereby still judged where peers
    exist, instead of escaping at a rung nobody else has reached yet."""
    return sorted(
        (step for step, score in trial.scores.items() if score is not None and step in rungs.steps(step)), reverse=True
    )


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None with fewer than 3 pairs or a constant side."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs pairs: {len(xs)} x values, {len(ys)} y values")
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mean_x, mean_y = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mean_x) * (b - mean_y) for a, b in zip(rx, ry, strict=True))
    var_x = sum((a - mean_x) ** 2 for a in rx)
    var_y = sum((b - mean_y) ** 2 for b in ry)
    if var_x == 0 or var_y == 0:
        return None
    return cov / math.sqrt(var_x * var_y)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda index: values[index])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks
