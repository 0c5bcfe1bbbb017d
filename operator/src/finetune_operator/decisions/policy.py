"""The early-stopping policy: per-step training metrics and thresholds in, continue | stop | unknown out.

Pure (no I/O, no clock: `now` is passed in). The paper found lower early grad norms and higher early loss predict
a better final model; the rules apply that signal only where a threshold is set and never stop on missing data.
Checks, in order; the first that decides wins:

1. ``enabled: false`` -> unknown/Disabled (nothing judged; the operator does not call the policy then).
2. No point at step >= 1 -> unknown/NoData.
3. ``stopOnNonFinite`` and NaN/Inf loss or grad norm at ANY step -> stop/NonFinite at once (before staleness and
   ``checkAfterSteps``): steps outpace evaluations, so judging the newest step only would depend on timing.
4. Newest step observed over ``stale_after_seconds`` before ``now``, or with no time -> unknown/StaleMetrics.
5. Newest step < ``checkAfterSteps`` -> unknown/NotYetCheckable.
6. Window = the last ``windowSteps`` step numbers up to the newest when every step is observed; when the
   metrics are sampled every ~k steps (Prometheus scrapes on a clock), the last ``windowSteps`` observations,
   and only a hole wider than 2k steps is a gap (see `observation_stride`). A step absent or lacking a metric a
   set rule needs -> unknown/GapInWindow; a NaN (only with ``stopOnNonFinite: false``; NaN has no order, so no
   median) -> unknown/NaNInWindow. Infinities are ordered, so judged like numbers.
7. Initial loss = median of the first ``windowSteps`` finite losses (by step, gaps allowed); fewer -> unknown/
   TooFewSteps. An initial loss <= 0 leaves divergence unjudged (any factor of it would flag every loss).
8. Strict comparisons on the window MEDIAN (one spike among 3+ steps cannot carry it), first firing wins: divergence
   (LossDiverged), maxGradNorm (GradNormAboveMax), minLoss (LossBelowMin); else continue/WithinThresholds.

The metrics source gives one point per observed optimizer step (one scrape may see one step several times, or
skip steps). It should
start at the run's first step (or resume point), or the initial loss is not initial. Steps count from 1; points
at step < 1 (a gauge before the first step) are ignored. Observations of one step (one per scrape) reduce to the
latest by `time` (untimed ones lose), ties by a fixed order on the values: the input order never matters.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import islice, pairwise
from typing import Any, Literal

from finetune_contract.records import StepRecord
from finetune_operator.api import EarlyStoppingSpec, Verdict

Metric = Literal["loss", "gradNorm"]


@dataclass(frozen=True)
class _Outcome:
    decision: Literal["continue", "stop", "unknown"]
    reason: str
    message: str
    evidence: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Check:
    """One threshold rule on one window's median; `above` says which side of the threshold stops."""

    rule: str
    reason: str
    metric: Metric
    value: float
    threshold: float
    above: bool
    described: str = ""

    @property
    def fired(self) -> bool:
        return self.value > self.threshold if self.above else self.value < self.threshold

    def sentence(self, first: int, last: int) -> str:
        side = ("is " if self.fired else "is not ") + ("above" if self.above else "below")
        value, threshold = _fmt(self.value), _fmt(self.threshold)
        return (
            f"median {self.metric} {value} over steps {first}-{last} {side} {self.described or self.rule} = {threshold}"
        )

    def evidence(self, first: int, last: int) -> dict[str, Any]:
        return _evidence(self.rule, self.metric, first, last, "median", self.value, self.threshold)


def evaluate(
    series: Sequence[StepRecord],
    spec: EarlyStoppingSpec,
    *,
    now: float | None = None,
    stale_after_seconds: float | None = None,
    evaluated_at: str | None = None,
) -> Verdict:
    """Judge a run from its per-step metrics (see the module docstring for the exact rules and their order)."""
    outcome = _decide(_resolve(series), spec, now, stale_after_seconds)
    return Verdict.model_validate(asdict(outcome) | {"evaluatedAt": evaluated_at})


def _decide(
    points: Mapping[int, StepRecord], spec: EarlyStoppingSpec, now: float | None, stale_after: float | None
) -> _Outcome:
    if not spec.enabled:
        return _Outcome("unknown", "Disabled", "early stopping is disabled")
    if not points:
        return _Outcome("unknown", "NoData", "no training metrics have been observed yet")
    if spec.stop_on_non_finite and (bad := _first_non_finite(points)) is not None:
        point, metric, value = bad
        message = f"{metric} was {_fmt(value)} at step {point.step}; stopOnNonFinite stops at once"
        return _Outcome(
            "stop", "NonFinite", message, _evidence("nonFinite", metric, point.step, point.step, "first", value)
        )
    newest = points[max(points)]
    if (stale := _staleness(newest, now, stale_after)) is not None:
        return stale
    if newest.step < spec.check_after_steps:
        message = f"step {newest.step} is before checkAfterSteps {spec.check_after_steps}; thresholds wait until then"
        evidence = {"toStep": newest.step, "threshold": str(spec.check_after_steps)}
        return _Outcome("unknown", "NotYetCheckable", message, evidence)
    stride = observation_stride(points)
    if stride == 1:
        window_steps = list(range(newest.step - spec.window_steps + 1, newest.step + 1))
    else:
        window_steps = sorted(points)[-spec.window_steps :]
        if (sparse := _sparse_window(window_steps, stride, spec.window_steps)) is not None:
            return sparse
    first = window_steps[0]
    medians: dict[Metric, float] = {}
    for metric in _needed_metrics(spec):
        values = [_value(points.get(step), metric) for step in window_steps]
        if (hole := _hole(values, metric, first, newest.step)) is not None:
            return hole
        medians[metric] = statistics.median(v for v in values if v is not None)
    checks = _checks(spec, medians, points)
    return checks if isinstance(checks, _Outcome) else _verdict(checks, first, newest.step)


def _resolve(series: Sequence[StepRecord]) -> dict[int, StepRecord]:
    """Points at step >= 1, one per step (the latest observation), in step order."""
    kept: dict[int, StepRecord] = {}
    for point in series:
        held = kept.get(point.step)
        if point.step >= 1 and (held is None or _recency(point) > _recency(held)):
            kept[point.step] = point
    return dict(sorted(kept.items()))


def _recency(point: StepRecord) -> tuple[tuple[int, float, float], ...]:
    """Later `time` first; then a fixed, total order on the values so duplicates resolve the same in any order."""
    return (_rank(point.time), _rank(point.loss), _rank(point.grad_norm))


def _rank(value: float | None) -> tuple[int, float, float]:
    if value is None or math.isnan(value):
        return (0 if value is None else 1, 0.0, 0.0)
    return (2, value, math.copysign(1.0, value))


def _value(point: StepRecord | None, metric: Metric) -> float | None:
    return None if point is None else point.loss if metric == "loss" else point.grad_norm


def _first_non_finite(points: Mapping[int, StepRecord]) -> tuple[StepRecord, Metric, float] | None:
    """The earliest NaN/Inf: where the run went wrong (the trainer skips such steps; later ones may look fine)."""
    for point in points.values():
        for metric in ("loss", "gradNorm"):
            value = _value(point, metric)
            if value is not None and not math.isfinite(value):
                return point, metric, value
    return None


def _staleness(newest: StepRecord, now: float | None, stale_after: float | None) -> _Outcome | None:
    """Unknown when the newest step was observed too long ago: a hung trainer is not judged on old data."""
    if now is None or stale_after is None:
        return None
    if newest.time is None:
        message = f"step {newest.step} has no observation time, so its freshness cannot be judged"
        return _Outcome("unknown", "StaleMetrics", message, {"toStep": newest.step})
    age = now - newest.time
    if age <= stale_after:  # written so that a NaN age reads as stale
        return None
    message = f"the newest metrics (step {newest.step}) are {_fmt(age)} s old, more than {_fmt(stale_after)} s"
    evidence = {"toStep": newest.step, "value": _fmt(age), "threshold": _fmt(stale_after)}
    return _Outcome("unknown", "StaleMetrics", message, evidence)


def _needed_metrics(spec: EarlyStoppingSpec) -> Iterator[Metric]:
    if spec.divergence_factor is not None or spec.min_loss is not None:
        yield "loss"
    if spec.max_grad_norm is not None:
        yield "gradNorm"


def observation_stride(points: Mapping[int, StepRecord]) -> int:
    """How many optimizer steps usually pass between two observations: 1 when every step is seen.

    Prometheus scrapes on a clock, not per step: a fast trainer is seen every few steps. Then the window is the
    last `windowSteps` observations, and only a hole larger than twice the usual stride counts as a gap.
    """
    steps = sorted(points)
    deltas = [later - earlier for earlier, later in pairwise(steps)]
    return max(1, round(statistics.median(deltas))) if len(deltas) >= 3 else 1


def _sparse_window(window: list[int], stride: int, size: int) -> _Outcome | None:
    first, last = window[0], window[-1]
    evidence = {"fromStep": first, "toStep": last}
    if len(window) < size:
        message = f"{len(window)} observations, fewer than windowSteps ({size}), at about every {stride} steps"
        return _Outcome("unknown", "TooFewSteps", message, evidence)
    widest = max(later - earlier for earlier, later in pairwise(window)) if size > 1 else 0
    if widest > 2 * stride:
        message = f"a hole of {widest} steps in steps {first}-{last}, where observations come every ~{stride} steps"
        return _Outcome("unknown", "GapInWindow", message, evidence)
    return None


def _hole(values: list[float | None], metric: Metric, first: int, last: int) -> _Outcome | None:
    """Unknown for a window with a missing or NaN value: a median over part of the window is not the rule."""
    evidence = {"metric": metric, "fromStep": first, "toStep": last}
    missing = [first + i for i, value in enumerate(values) if value is None]
    if missing:
        message = f"{metric} is missing at {len(missing)} of steps {first}-{last} (first {missing[0]})"
        return _Outcome("unknown", "GapInWindow", message, evidence)
    nans = [first + i for i, value in enumerate(values) if value is not None and math.isnan(value)]
    if nans:
        message = f"{metric} is NaN at {len(nans)} of steps {first}-{last} (first {nans[0]}), which has no median"
        return _Outcome("unknown", "NaNInWindow", message, evidence)
    return None


def _initial_loss(points: Mapping[int, StepRecord], count: int) -> tuple[float, int, int] | None:
    """Median of the first `count` finite losses, and the steps they span; None while there are fewer."""
    finite = ((step, p.loss) for step, p in points.items() if p.loss is not None and math.isfinite(p.loss))
    early = list(islice(finite, count))
    return None if len(early) < count else (statistics.median(loss for _, loss in early), early[0][0], early[-1][0])


def _checks(
    spec: EarlyStoppingSpec, medians: Mapping[Metric, float], points: Mapping[int, StepRecord]
) -> list[_Check] | _Outcome:
    """The set rules, in the order they win: divergence, maxGradNorm, minLoss."""
    checks: list[_Check] = []
    if (factor := spec.divergence_factor) is not None:
        if (initial := _initial_loss(points, spec.window_steps)) is None:
            message = f"fewer than windowSteps ({spec.window_steps}) finite losses to establish the initial loss"
            return _Outcome("unknown", "TooFewSteps", message, {"metric": "loss"})
        loss, start, end = initial
        described = f"{_fmt(factor)} x initial loss {_fmt(loss)} (median of steps {start}-{end})"
        if loss > 0:
            checks.append(_Check("divergence", "LossDiverged", "loss", medians["loss"], factor * loss, True, described))
    if (limit := spec.max_grad_norm) is not None:
        checks.append(_Check("maxGradNorm", "GradNormAboveMax", "gradNorm", medians["gradNorm"], limit, True))
    if (floor := spec.min_loss) is not None:
        checks.append(_Check("minLoss", "LossBelowMin", "loss", medians["loss"], floor, False))
    return checks


def _verdict(checks: list[_Check], first: int, last: int) -> _Outcome:
    """Stop on the first rule that fires; otherwise continue, with every rule's numbers in the message."""
    for check in checks:
        if check.fired:
            return _Outcome("stop", check.reason, check.sentence(first, last), check.evidence(first, last))
    message = "; ".join(check.sentence(first, last) for check in checks) or "no threshold rule is set or applicable"
    return _Outcome("continue", "WithinThresholds", message, checks[0].evidence(first, last) if checks else None)


def _evidence(
    rule: str, metric: Metric, first: int, last: int, statistic: str, value: float, threshold: float | None = None
) -> dict[str, Any]:
    evidence = {"rule": rule, "metric": metric, "fromStep": first, "toStep": last, "statistic": statistic}
    return evidence | {"value": _fmt(value)} | ({} if threshold is None else {"threshold": _fmt(threshold)})


def _fmt(value: float) -> str:
    """Prometheus' spelling for non-finite values (the sign of a NaN means nothing); repr otherwise, exact."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
