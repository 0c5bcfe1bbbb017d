"""The early-stopping policy: every reason, spikes, NaN/Inf, duplicates, and three properties: stopping is
monotonic in each threshold, missing/short/stale data never stops a run, and the verdict is deterministic and
independent of the input order."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from finetune_contract.records import StepRecord
from finetune_operator.api import EarlyStoppingSpec, Verdict
from finetune_operator.decisions.policy import evaluate, observation_stride

NAN = float("nan")
INF = float("inf")
NONE: Mapping[int, float | None] = {}
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def spec(**fields: Any) -> EarlyStoppingSpec:
    """camelCase keys, as on the wire (the model accepts no other)."""
    return EarlyStoppingSpec.model_validate(fields)


def run(losses: Sequence[float | None], grads: Sequence[float | None], t0: float | None = None) -> list[StepRecord]:
    """Consecutive steps from 1, one second apart from `t0` when it is set."""
    return [
        StepRecord(i + 1, loss, grad, None if t0 is None else t0 + i)
        for i, (loss, grad) in enumerate(zip(losses, grads, strict=True))
    ]


def flat(steps: int, loss: float = 2.0, grad: float = 1.0, t0: float | None = None) -> list[StepRecord]:
    return run([loss] * steps, [grad] * steps, t0)


def with_values(
    points: list[StepRecord], loss: Mapping[int, float | None] = NONE, grad_norm: Mapping[int, float | None] = NONE
) -> list[StepRecord]:
    """The series with single steps' loss / grad norm overridden."""
    return [replace(p, loss=loss.get(p.step, p.loss), grad_norm=grad_norm.get(p.step, p.grad_norm)) for p in points]


def without(points: list[StepRecord], *steps: int) -> list[StepRecord]:
    return [p for p in points if p.step not in steps]


# Window of 5 judged from step 10: with 20 steps the window is 16..20 and the initial loss is steps 1..5.
BASE = {"checkAfterSteps": 10, "windowSteps": 5}
ALL_RULES = BASE | {"maxGradNorm": 5.0, "minLoss": 0.5, "divergenceFactor": 3.0}


@dataclass(frozen=True)
class Case:
    id: str
    spec: dict[str, Any]
    series: list[StepRecord]
    decision: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    now: float | None = None
    stale_after: float | None = None


HIGH_GRAD = flat(20, grad=9.0)  # grad norm 9 > maxGradNorm 5 everywhere: stops unless something else decides

CASES = [
    Case("disabled", ALL_RULES | {"enabled": False}, HIGH_GRAD, "unknown", "Disabled"),
    Case("empty", ALL_RULES, [], "unknown", "NoData"),
    Case("only-step-zero-gauge", ALL_RULES, [StepRecord(0, 0.0, 0.0)], "unknown", "NoData"),
    Case(
        "nan-loss-stops-even-if-later-steps-are-finite",
        ALL_RULES,
        with_values(flat(20), loss={3: NAN}),
        "stop",
        "NonFinite",
        {"rule": "nonFinite", "metric": "loss", "fromStep": 3, "toStep": 3, "value": "NaN"},
    ),
    Case(
        "inf-grad-norm",
        BASE,
        with_values(flat(12), grad_norm={12: INF}),
        "stop",
        "NonFinite",
        {"rule": "nonFinite", "metric": "gradNorm", "fromStep": 12, "value": "+Inf"},
    ),
    Case(
        "stale",
        ALL_RULES,
        flat(20, grad=9.0, t0=1000.0),
        "unknown",
        "StaleMetrics",
        {"toStep": 20, "value": "81.0", "threshold": "60.0"},
        now=1100.0,
        stale_after=60.0,
    ),
    Case("no-time-when-staleness-asked", ALL_RULES, HIGH_GRAD, "unknown", "StaleMetrics", now=1e9, stale_after=60.0),
    Case(
        "fresh-enough",
        ALL_RULES,
        flat(20, grad=9.0, t0=1000.0),
        "stop",
        "GradNormAboveMax",
        now=1079.0,
        stale_after=60.0,
    ),
    Case("before-check-after-steps", ALL_RULES, flat(9, grad=9.0), "unknown", "NotYetCheckable", {"toStep": 9}),
    Case(
        "missing-step-in-window",
        ALL_RULES,
        without(HIGH_GRAD, 18),
        "unknown",
        "GapInWindow",
        {"fromStep": 16, "toStep": 20},
    ),
    Case(
        "missing-grad-norm-in-window",
        BASE | {"maxGradNorm": 5.0},
        with_values(HIGH_GRAD, grad_norm={20: None}),
        "unknown",
        "GapInWindow",
        {"metric": "gradNorm", "fromStep": 16, "toStep": 20},
    ),
    Case(
        "missing-loss-in-window",
        ALL_RULES,
        with_values(flat(20, loss=0.1), loss={17: None}),
        "unknown",
        "GapInWindow",
        {"metric": "loss"},
    ),
    Case(
        "missing-loss-does-not-matter-when-no-rule-reads-loss",
        BASE | {"maxGradNorm": 5.0, "divergenceFactor": None},
        with_values(HIGH_GRAD, loss={17: None, 20: None}),
        "stop",
        "GradNormAboveMax",
    ),
    Case(
        "gap-outside-window-is-fine",
        ALL_RULES,
        without(HIGH_GRAD, 7, 12),
        "stop",
        "GradNormAboveMax",
    ),
    Case(
        "nan-in-window-without-stop-on-non-finite",
        ALL_RULES | {"stopOnNonFinite": False},
        with_values(HIGH_GRAD, grad_norm={19: NAN}),
        "unknown",
        "NaNInWindow",
        {"metric": "gradNorm"},
    ),
    Case(
        "too-few-finite-losses-for-the-initial-loss",
        BASE | {"stopOnNonFinite": False},
        run([INF, INF, INF, INF, 2.0, INF, INF, INF, INF, 2.0], [1.0] * 10),
        "unknown",
        "TooFewSteps",
    ),
    Case(
        "grad-norm-above-max",
        ALL_RULES,
        run([2.0] * 20, [1.0] * 15 + [4.0, 6.0, 7.0, 8.0, 2.0]),
        "stop",
        "GradNormAboveMax",
        {"rule": "maxGradNorm", "metric": "gradNorm", "statistic": "median", "value": "6.0", "threshold": "5.0"},
    ),
    Case(
        "grad-norm-equal-to-max-continues",
        ALL_RULES,
        flat(20, grad=5.0),
        "continue",
        "WithinThresholds",
    ),
    Case(
        "loss-below-min",
        ALL_RULES,
        run([2.0] * 15 + [0.3, 0.4, 0.2, 0.6, 0.1], [1.0] * 20),
        "stop",
        "LossBelowMin",
        {"rule": "minLoss", "metric": "loss", "value": "0.3", "threshold": "0.5", "fromStep": 16, "toStep": 20},
    ),
    Case(
        "loss-diverged",
        ALL_RULES,
        run([1.0, 3.0, 2.0, 2.0, 2.5] + [2.0] * 10 + [7.0] * 5, [1.0] * 20),
        "stop",
        "LossDiverged",
        {"rule": "divergence", "metric": "loss", "value": "7.0", "threshold": "6.0"},
    ),
    Case(
        "divergence-off",
        BASE | {"divergenceFactor": None},
        run([2.0] * 15 + [70.0] * 5, [1.0] * 20),
        "continue",
        "WithinThresholds",
    ),
    Case(
        "initial-loss-zero-leaves-divergence-unjudged",
        BASE,
        run([0.0] * 5 + [5.0] * 15, [1.0] * 20),
        "continue",
        "WithinThresholds",
    ),
    Case(
        "within-thresholds",
        ALL_RULES,
        run([2.0 - 0.05 * i for i in range(20)], [1.0 + 0.1 * i for i in range(20)]),
        "continue",
        "WithinThresholds",
        {"rule": "divergence", "fromStep": 16, "toStep": 20, "statistic": "median"},
    ),
    Case(
        "inf-without-stop-on-non-finite-is-a-large-number",
        BASE | {"maxGradNorm": 5.0, "stopOnNonFinite": False},
        with_values(flat(20), grad_norm={17: INF, 18: INF, 19: INF}),
        "stop",
        "GradNormAboveMax",
        {"value": "+Inf"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_reason_table(case: Case) -> None:
    verdict = evaluate(case.series, spec(**case.spec), now=case.now, stale_after_seconds=case.stale_after)
    assert (verdict.decision, verdict.reason) == (case.decision, case.reason), verdict.message
    evidence = verdict.to_wire().get("evidence", {})
    assert {key: evidence.get(key) for key in case.evidence} == case.evidence
    assert verdict.message


def test_every_reason_is_in_the_table() -> None:
    reasons = {case.reason for case in CASES}
    assert reasons >= {"Disabled", "NoData", "NonFinite", "StaleMetrics", "NotYetCheckable", "GapInWindow"}
    assert reasons >= {"NaNInWindow", "TooFewSteps", "GradNormAboveMax", "LossBelowMin", "LossDiverged"}
    assert "WithinThresholds" in reasons


def test_message_carries_the_numbers() -> None:
    series = run([2.0] * 20, [1.0] * 15 + [4.0, 6.0, 7.0, 8.0, 2.0])
    message = evaluate(series, spec(**ALL_RULES)).message
    assert "6.0" in message
    assert "5.0" in message
    assert "16-20" in message


@pytest.mark.parametrize("position", range(16, 21))
def test_a_single_spike_in_the_window_does_not_stop(position: int) -> None:
    series = with_values(flat(20), grad_norm={position: 1000.0}, loss={position: 1000.0})
    verdict = evaluate(series, spec(**ALL_RULES | {"minLoss": 1.0}))
    assert verdict.decision == "continue"


def test_a_sustained_rise_does_stop() -> None:
    series = with_values(flat(20), grad_norm={18: 1000.0, 19: 1000.0, 20: 1000.0})
    assert evaluate(series, spec(**ALL_RULES)).reason == "GradNormAboveMax"


def test_nan_at_step_one_stops_at_once() -> None:
    config = spec(checkAfterSteps=50, windowSteps=10, maxGradNorm=5.0)
    verdict = evaluate([StepRecord(1, NAN, 1.0, time=0.0)], config, now=1e6, stale_after_seconds=60.0)
    assert (verdict.decision, verdict.reason) == ("stop", "NonFinite")
    assert verdict.evidence is not None
    assert (verdict.evidence.from_step, verdict.evidence.to_step) == (1, 1)


def test_nan_is_not_a_stop_reason_when_stop_on_non_finite_is_off() -> None:
    config = spec(checkAfterSteps=50, windowSteps=10, stopOnNonFinite=False)
    assert evaluate([StepRecord(1, NAN, NAN)], config).reason == "NotYetCheckable"
    early_nan = with_values(flat(60), loss={3: NAN}, grad_norm={4: -INF})
    verdict = evaluate(early_nan, config)
    assert (verdict.decision, verdict.reason) == ("continue", "WithinThresholds")


def test_rule_order_non_finite_then_divergence_then_max_grad_norm_then_min_loss() -> None:
    # Loss 0.1 -> 8.0 is above 3 x initial, and below minLoss 10; grad norm 9 is above maxGradNorm 5.
    series = run([0.1] * 15 + [8.0] * 5, [9.0] * 20)
    rules = ALL_RULES | {"minLoss": 10.0}
    assert evaluate(series, spec(**rules)).reason == "LossDiverged"
    assert evaluate(series, spec(**rules | {"divergenceFactor": None})).reason == "GradNormAboveMax"
    assert evaluate(series, spec(**rules | {"divergenceFactor": None, "maxGradNorm": None})).reason == "LossBelowMin"
    assert evaluate(with_values(series, grad_norm={20: INF}), spec(**rules)).reason == "NonFinite"


def test_latest_observation_per_step_wins_whatever_the_input_order() -> None:
    series = flat(20, t0=100.0)
    scrapes = [StepRecord(20, 2.0, 50.0, time=90.0), *reversed(series), StepRecord(19, 2.0, 50.0, time=200.0)]
    # step 20's older scrape (grad 50) loses to the newer one (grad 1); step 19's newer scrape (grad 50) wins.
    verdict = evaluate(scrapes, spec(**ALL_RULES))
    assert verdict.decision == "continue"
    assert evaluate([*scrapes, StepRecord(18, 2.0, 50.0, time=200.0)], spec(**ALL_RULES)).decision == "continue"
    three = [*scrapes, StepRecord(18, 2.0, 50.0, time=200.0), StepRecord(17, 2.0, 50.0, time=200.0)]
    assert evaluate(three, spec(**ALL_RULES)).reason == "GradNormAboveMax"


def test_duplicates_differing_only_in_the_sign_of_zero_resolve_the_same_in_any_order() -> None:
    config = spec(checkAfterSteps=1, windowSteps=1, minLoss=0.5)
    scrapes = [StepRecord(1, 0.0, 1.0, time=5.0), StepRecord(1, -0.0, 1.0, time=5.0)]
    verdict = evaluate(scrapes, config)
    assert verdict.reason == "LossBelowMin"
    assert evaluate(scrapes[::-1], config) == verdict


def test_an_unreadable_observation_time_reads_as_stale() -> None:
    series = [*flat(19, grad=9.0, t0=1000.0), StepRecord(20, 2.0, 9.0, time=NAN)]
    verdict = evaluate(series, spec(**ALL_RULES), now=1020.0, stale_after_seconds=60.0)
    assert (verdict.decision, verdict.reason) == ("unknown", "StaleMetrics")


def test_initial_loss_skips_gaps_and_non_finite_values() -> None:
    # Steps 2 and 4 are absent and step 3's loss is Inf (stopOnNonFinite off): the initial loss is the median of
    # the first five finite losses, at steps 1, 5, 6, 7, 8: median(1, 2, 2, 2, 9) = 2, so 3 x 2 = 6 is the limit.
    losses = [1.0, 1.0, INF, 1.0, 2.0, 2.0, 2.0, 9.0] + [6.5] * 12
    series = without(run(losses, [1.0] * 20), 2, 4)
    verdict = evaluate(series, spec(**BASE | {"stopOnNonFinite": False}))
    assert verdict.reason == "LossDiverged"
    assert verdict.evidence is not None
    assert verdict.evidence.threshold == "6.0"
    assert "steps 1-8" in verdict.message


def test_verdict_survives_json_with_nan_and_evaluated_at() -> None:
    verdict = evaluate([StepRecord(1, 2.0, NAN)], spec(**BASE), evaluated_at="2026-01-02T03:04:05Z")
    wire = json.loads(json.dumps(verdict.to_wire(), allow_nan=False))
    assert wire["evaluatedAt"] == "2026-01-02T03:04:05Z"
    assert wire["evidence"]["value"] == "NaN"
    assert Verdict.model_validate(wire) == verdict


# ----------------------------------------------------------------------------------------------- properties
@st.composite
def settings_and_series(
    draw: st.DrawFn, *, rules: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[StepRecord]]:
    """A spec and a complete, finite, per-step series long enough to be judged."""
    window = draw(st.integers(1, 8))
    check = draw(st.integers(window, 15))
    length = draw(st.integers(check, check + 15))
    positive = st.floats(0.01, 100.0, allow_nan=False, allow_infinity=False)
    losses = draw(st.lists(positive, min_size=length, max_size=length))
    grads = draw(st.lists(positive, min_size=length, max_size=length))
    config = {"checkAfterSteps": check, "windowSteps": window}
    if rules is None:
        rules = {
            "maxGradNorm": draw(st.none() | positive),
            "minLoss": draw(st.none() | positive),
            "divergenceFactor": draw(st.none() | st.floats(1.01, 20.0)),
        }
    return config | rules, run(losses, grads)


def grad_median(series: list[StepRecord], window: int) -> float:
    return statistics.median(grad for p in series[-window:] if (grad := p.grad_norm) is not None)


thresholds = st.tuples(st.floats(0.01, 100.0), st.floats(0.01, 100.0)).map(sorted)


@PROPERTY
@given(settings_and_series(), thresholds)
def test_max_grad_norm_is_monotonic(generated: tuple[dict[str, Any], list[StepRecord]], pair: list[float]) -> None:
    config, series = generated
    low, high = pair
    stopped_high = evaluate(series, spec(**config | {"maxGradNorm": high})).decision == "stop"
    stopped_low = evaluate(series, spec(**config | {"maxGradNorm": low})).decision == "stop"
    assert stopped_low or not stopped_high


@PROPERTY
@given(settings_and_series(), thresholds)
def test_min_loss_is_monotonic(generated: tuple[dict[str, Any], list[StepRecord]], pair: list[float]) -> None:
    config, series = generated
    low, high = pair
    stopped_low = evaluate(series, spec(**config | {"minLoss": low})).decision == "stop"
    stopped_high = evaluate(series, spec(**config | {"minLoss": high})).decision == "stop"
    assert stopped_high or not stopped_low


@PROPERTY
@given(settings_and_series(), st.tuples(st.floats(1.001, 50.0), st.floats(1.001, 50.0)).map(sorted))
def test_divergence_factor_is_monotonic(generated: tuple[dict[str, Any], list[StepRecord]], pair: list[float]) -> None:
    config, series = generated
    low, high = pair
    stopped_high = evaluate(series, spec(**config | {"divergenceFactor": high})).decision == "stop"
    stopped_low = evaluate(series, spec(**config | {"divergenceFactor": low})).decision == "stop"
    assert stopped_low or not stopped_high


ONLY_GRAD = {"maxGradNorm": None, "minLoss": None, "divergenceFactor": None}


@PROPERTY
@given(settings_and_series(rules=ONLY_GRAD), st.floats(0.01, 100.0))
def test_max_grad_norm_stops_exactly_above_the_window_median(
    generated: tuple[dict[str, Any], list[StepRecord]], threshold: float
) -> None:
    config, series = generated
    verdict = evaluate(series, spec(**config | {"maxGradNorm": threshold}))
    median = grad_median(series, config["windowSteps"])
    assert verdict.decision == ("stop" if median > threshold else "continue")


@PROPERTY
@given(settings_and_series(), st.data())
def test_a_series_shorter_than_check_after_steps_never_stops(
    generated: tuple[dict[str, Any], list[StepRecord]], data: st.DataObject
) -> None:
    config, series = generated
    short = series[: data.draw(st.integers(0, config["checkAfterSteps"] - 1))]
    verdict = evaluate(short, spec(**config))
    assert verdict.decision == "unknown"
    assert verdict.reason in {"NoData", "NotYetCheckable"}


READS = {"loss": ("minLoss", "divergenceFactor"), "grad_norm": ("maxGradNorm",)}


@PROPERTY
@given(settings_and_series(), st.data())
def test_holes_in_the_window_never_stop(
    generated: tuple[dict[str, Any], list[StepRecord]], data: st.DataObject
) -> None:
    config, series = generated
    read = [name for name, keys in READS.items() if any(config[key] is not None for key in keys)]
    assume(read)
    window = series[-config["windowSteps"] :]
    kind = data.draw(st.sampled_from(["absent", *read]))
    # An absent newest step is not a hole: the window simply ends one step earlier.
    steps = [p.step for p in (window[:-1] if kind == "absent" else window)]
    assume(steps)
    holes = data.draw(st.sets(st.sampled_from(steps), min_size=1))
    missing: dict[int, float | None] = dict.fromkeys(holes)
    if kind == "absent":
        holed = without(series, *holes)
        # Absent steps can make the rest look sampled every ~k steps (1,2,3,6,8: k=2); then the window is the last
        # observations and only a hole wider than 2k is a gap, a rule of its own (test_sparse_* below).
        assume(observation_stride({p.step: p for p in holed}) == 1)
    else:
        holed = with_values(series, loss=missing) if kind == "loss" else with_values(series, grad_norm=missing)
    verdict = evaluate(holed, spec(**config))
    assert (verdict.decision, verdict.reason) == ("unknown", "GapInWindow")


@PROPERTY
@given(settings_and_series(), st.data())
def test_removing_points_never_turns_unknown_into_stop(
    generated: tuple[dict[str, Any], list[StepRecord]], data: st.DataObject
) -> None:
    config, series = generated
    # Often unknown: cut the run short, and knock a step out of the (possibly new) window. Removing the newest step
    # would only move the window, so the second removal keeps it.
    if data.draw(st.booleans()):
        series = series[: data.draw(st.integers(1, len(series)))]
    near_end = [p.step for p in series[-config["windowSteps"] - 1 : -1]]
    before = without(series, *data.draw(st.sets(st.sampled_from(near_end), max_size=1))) if near_end else series
    more = data.draw(st.sets(st.sampled_from([p.step for p in before[:-1]]), max_size=5)) if before[:-1] else set()
    verdict = evaluate(before, spec(**config))
    after = without(before, *more)
    # Removing so much that most steps are unobserved turns the series into a sampled one (a scrape every ~k
    # steps), which is judged on its own terms (tests above); the property is about holes in per-step data.
    if verdict.decision == "unknown" and observation_stride({p.step: p for p in after}) == 1:
        assert evaluate(after, spec(**config)).decision == "unknown"


@PROPERTY
@given(settings_and_series(), st.floats(0.0, 1e4), st.floats(1.0, 1e4))
def test_stale_metrics_never_stop(
    generated: tuple[dict[str, Any], list[StepRecord]], stale_after: float, extra: float
) -> None:
    config, series = generated
    timed = [replace(p, time=1000.0 + p.step) for p in series]
    now = 1000.0 + series[-1].step + stale_after + extra
    verdict = evaluate(timed, spec(**config), now=now, stale_after_seconds=stale_after)
    assert (verdict.decision, verdict.reason) == ("unknown", "StaleMetrics")


maybe = st.none() | st.sampled_from([NAN, INF, -INF, 0.0, -0.0]) | st.floats(-10.0, 100.0)
messy_point = st.builds(StepRecord, st.integers(-1, 14), maybe, maybe, st.none() | st.sampled_from([1.0, 2.0, 3.0]))


@PROPERTY
@given(
    st.lists(messy_point, max_size=40),
    settings_and_series(),
    st.booleans(),
    st.none() | st.floats(0.0, 10.0),
    st.data(),
)
def test_verdict_is_deterministic_and_order_free(
    points: list[StepRecord],
    generated: tuple[dict[str, Any], list[StepRecord]],
    stop_on_non_finite: bool,
    now: float | None,
    data: st.DataObject,
) -> None:
    config = generated[0] | {"stopOnNonFinite": stop_on_non_finite}
    shuffled = data.draw(st.permutations(points))
    first = evaluate(points, spec(**config), now=now, stale_after_seconds=1.5)
    assert evaluate(points, spec(**config), now=now, stale_after_seconds=1.5) == first
    assert evaluate(shuffled, spec(**config), now=now, stale_after_seconds=1.5) == first
    json.dumps(first.to_wire(), allow_nan=False)
    if first.decision == "stop" and first.reason != "NonFinite":
        assert first.evidence is not None
        assert first.evidence.statistic == "median"
        assert math.isfinite(float(first.evidence.threshold or "nan"))


# --- sparse observation: Prometheus scrapes on a clock, a fast trainer is seen every few steps -----------------------
def _sparse(stride: int, count: int, grad_norm: float, *, hole_after: int | None = None) -> list[StepRecord]:
    steps = [stride * (index + 1) for index in range(count)]
    if hole_after is not None:
        steps = steps[:hole_after] + [step + 5 * stride for step in steps[hole_after:]]
    return [StepRecord(step, 2.0, grad_norm, float(step)) for step in steps]


def test_sparse_observations_are_judged_on_the_last_observed_window() -> None:
    from finetune_operator.api import EarlyStoppingSpec
    from finetune_operator.decisions.policy import evaluate, observation_stride

    spec = EarlyStoppingSpec.model_validate({"checkAfterSteps": 10, "windowSteps": 4, "maxGradNorm": 5.0})
    series = _sparse(stride=7, count=8, grad_norm=9.0)
    assert observation_stride({point.step: point for point in series}) == 7
    verdict = evaluate(series, spec)
    assert verdict.decision == "stop"
    assert verdict.reason == "GradNormAboveMax"
    assert verdict.evidence is not None
    assert (verdict.evidence.from_step, verdict.evidence.to_step) == (35, 56)
    assert evaluate(_sparse(stride=7, count=8, grad_norm=1.0), spec).decision == "continue"


def test_sparse_observations_with_a_wide_hole_are_unknown() -> None:
    from finetune_operator.api import EarlyStoppingSpec
    from finetune_operator.decisions.policy import evaluate

    spec = EarlyStoppingSpec.model_validate({"checkAfterSteps": 10, "windowSteps": 4, "maxGradNorm": 5.0})
    verdict = evaluate(_sparse(stride=7, count=8, grad_norm=9.0, hole_after=6), spec)
    assert verdict.decision == "unknown"
    assert verdict.reason == "GapInWindow"
