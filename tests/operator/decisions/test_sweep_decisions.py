"""The sweep's decisions from curves (issue 13): window statistics, rung scores (the paper's ranks included),
judge_sweep's properties, the objective, the best trial, the score/objective correlation and the savings.

The pure pruning rule itself (decisions.pruning.judge) is covered by test_pruning.py; here it is exercised through
curves. Expected values are computed independently (rank by counting, medians by sorting).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from finetune_contract.records import StepRecord
from finetune_operator.api.sweep import Correlation, PruningSpec, ScoreSpec
from finetune_operator.decisions.sweep import (
    MIN_CORRELATION_TRIALS,
    PREDICTIVE_RHO,
    Curve,
    RungStats,
    best,
    correlation,
    judge_sweep,
    objective,
    paper_scores,
    predictive,
    projected_savings,
    rung_scores,
    rung_stats,
    scores_by_rung,
    window_median,
)


def curve(
    name: str,
    losses: Sequence[float | None],
    grad_norms: Sequence[float | None] | None = None,
    evals: dict[int, float] | None = None,
    calibration: bool = False,
) -> Curve:
    """Steps 1..len(losses); grad norms default to 1.0."""
    norms = grad_norms if grad_norms is not None else [1.0] * len(losses)
    steps = [StepRecord(step, loss, norm) for step, (loss, norm) in enumerate(zip(losses, norms, strict=True), 1)]
    return Curve(name, steps, evals or {}, calibration)


def pruning(**fields: object) -> PruningSpec:
    return PruningSpec.model_validate(fields)


def middle(values: Sequence[float]) -> float:
    """The median, by sorting."""
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


def rank_low_first(value: float, population: Sequence[float]) -> float:
    """1 = smallest; ties share the mean of their positions."""
    less = sum(other < value for other in population)
    equal = sum(other == value for other in population)
    return less + (equal + 1) / 2


def same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
POSITIVE = st.floats(min_value=1e-3, max_value=1e3)


# --- window statistics --------------------------------------------------------------------------------------------


def test_window_median_ignores_missing_values() -> None:
    assert window_median([None, 3.0, 1.0, None, 2.0]) == 2.0
    assert window_median([4.0, None, 1.0]) == 2.5
    assert window_median([None, None]) is None
    assert window_median([]) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), FINITE), min_size=1, max_size=30))
def test_window_median_is_the_median_of_the_observed_values(values: list[float | None]) -> None:
    seen = [value for value in values if value is not None]
    result = window_median(values)
    if not seen:
        assert result is None
    else:
        assert result == pytest.approx(middle(seen))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.none(), FINITE), max_size=20),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.data(),
)
def test_a_non_finite_value_anywhere_makes_the_window_nan(
    values: list[float | None], bad: float, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(values)))
    result = window_median([*values[:position], bad, *values[position:]])
    assert result is not None
    assert math.isnan(result)


def test_rung_stats_is_none_before_the_rung_is_reached() -> None:
    run = curve("a", [1.0] * 9)
    assert rung_stats(run, 10, 5) is None
    assert rung_stats(curve("b", [1.0] * 10), 10, 5) is not None
    assert rung_stats(curve("empty", []), 1, 1) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.integers(1, 20), st.integers(0, 30))
def test_rung_window_is_the_steps_after_rung_minus_window_up_to_the_rung(rung: int, window: int, extra: int) -> None:
    """loss = step and grad norm = 2 * step: the window's medians are the middle of (rung - window, rung]."""
    length = rung + extra
    run = curve("a", [float(step) for step in range(1, length + 1)], [2.0 * step for step in range(1, length + 1)])
    stats = rung_stats(run, rung, window)
    assert stats is not None
    low = max(1, rung - window + 1)
    assert stats.loss == pytest.approx((low + rung) / 2)
    assert stats.grad_norm == pytest.approx(low + rung)
    assert stats.eval_loss is None


def test_rung_stats_reads_the_eval_in_the_window() -> None:
    run = curve("a", [1.0] * 20, evals={4: 9.0, 9: 3.0, 15: 7.0})
    assert rung_stats(run, 10, 5) == RungStats(1.0, 1.0, 3.0)  # step 9 in (5, 10]; 4 and 15 outside
    assert rung_stats(run, 20, 3) == RungStats(1.0, 1.0, None)  # no eval in (17, 20]


def test_rung_stats_uses_the_latest_eval_in_the_window_whatever_the_mapping_order() -> None:
    run = curve("a", [1.0] * 10, evals={10: 1.0, 8: 2.0})
    stats = rung_stats(run, 10, 5)
    assert stats is not None
    assert stats.eval_loss == 1.0


def test_sparse_steps_use_the_first_step_observed_soon_after_the_rung() -> None:
    """Prometheus may see every 5th step: with no step in (rung - window, rung], the first one observed within a
    window after the rung stands in; farther than that, nothing is observed at the rung."""
    steps = [StepRecord(step, float(step), 2.0 * step) for step in range(5, 31, 5)]
    run = Curve("sparse", steps, {12: 0.5})
    assert rung_stats(run, 8, 2) == RungStats(10.0, 20.0, None)  # (6, 8] empty -> step 10 in (8, 10]
    assert rung_stats(run, 11, 1) == RungStats(None, None, 0.5)  # (10, 11], (11, 12] hold no step; eval 12 stands in
    assert rung_stats(run, 10, 2) == RungStats(10.0, 20.0, 0.5)  # step 10 in the window; eval 12 stands in


# --- rung scores --------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(POSITIVE, POSITIVE), min_size=0, max_size=10),
    st.floats(min_value=0.0, max_value=1000.0),
    st.floats(min_value=0.0, max_value=1000.0),
)
def test_lowest_grad_norm_and_highest_loss_get_the_best_paper_score(
    others: list[tuple[float, float]], grad_weight: float, loss_weight: float
) -> None:
    assume(grad_weight + loss_weight > 0)
    stats = {f"t{i}": RungStats(loss=loss, grad_norm=norm, eval_loss=None) for i, (norm, loss) in enumerate(others)}
    lowest_norm = min((norm for norm, _ in others), default=1.0) / 2
    highest_loss = max((loss for _, loss in others), default=1.0) * 2
    stats["star"] = RungStats(loss=highest_loss, grad_norm=lowest_norm, eval_loss=None)
    scores = paper_scores(stats, grad_weight, loss_weight)
    assert scores["star"] == pytest.approx(1.0)
    for name in stats:
        score = scores[name]
        assert score is not None
        if name != "star":
            assert score >= 2.0 - 1e-9  # every other trial ranks at best second on both counts
    verdicts = judge_sweep(
        [curve(name, [value.loss] * 10, [value.grad_norm] * 10) for name, value in stats.items()],  # type: ignore[list-item]
        pruning(
            firstRungStep=10,
            minTrialsPerRung=1,
            score={"metric": "paper", "gradNormWeight": grad_weight, "lossWeight": loss_weight},
        ),
    )
    assert not verdicts["star"].prune


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.5, 1.0, 2.0, 4.0]), st.sampled_from([1.0, 2.0, 3.0])), min_size=1, max_size=12
    ),
    POSITIVE,
)
def test_paper_score_with_one_weight_zero_is_the_other_rank(pairs: list[tuple[float, float]], weight: float) -> None:
    """Ties included (values drawn from small sets): ranks are the mean of the tied positions."""
    stats = {f"t{i}": RungStats(loss=loss, grad_norm=norm, eval_loss=None) for i, (norm, loss) in enumerate(pairs)}
    norms = [norm for norm, _ in pairs]
    negated_losses = [-loss for _, loss in pairs]
    by_norm = paper_scores(stats, weight, 0.0)
    by_loss = paper_scores(stats, 0.0, weight)
    for i, (norm, loss) in enumerate(pairs):
        assert by_norm[f"t{i}"] == pytest.approx(rank_low_first(norm, norms))
        assert by_loss[f"t{i}"] == pytest.approx(rank_low_first(-loss, negated_losses))  # highest loss first


def test_paper_score_weights_combine_the_two_ranks() -> None:
    stats = {
        "a": RungStats(loss=1.0, grad_norm=1.0, eval_loss=None),  # norm rank 1, loss rank 3
        "b": RungStats(loss=2.0, grad_norm=3.0, eval_loss=None),  # norm rank 3, loss rank 2
        "c": RungStats(loss=3.0, grad_norm=2.0, eval_loss=None),  # norm rank 2, loss rank 1
    }
    scores = paper_scores(stats, 3.0, 1.0)
    assert scores == pytest.approx({"a": (3 * 1 + 3) / 4, "b": (3 * 3 + 2) / 4, "c": (3 * 2 + 1) / 4})
    assert paper_scores(stats, 0.0, 0.0) == {"a": 0.0, "b": 0.0, "c": 0.0}  # no weight: no preference


def test_paper_score_nan_and_missing_stats() -> None:
    stats = {
        "nan-loss": RungStats(loss=math.nan, grad_norm=1.0, eval_loss=None),
        "inf-norm": RungStats(loss=1.0, grad_norm=math.inf, eval_loss=None),
        "no-loss": RungStats(loss=None, grad_norm=1.0, eval_loss=None),
        "no-norm": RungStats(loss=1.0, grad_norm=None, eval_loss=None),
        "a": RungStats(loss=1.0, grad_norm=2.0, eval_loss=None),
        "b": RungStats(loss=2.0, grad_norm=1.0, eval_loss=None),
    }
    scores = paper_scores(stats, 1.0, 1.0)
    assert math.isnan(scores["nan-loss"])  # type: ignore[arg-type]
    assert math.isnan(scores["inf-norm"])  # type: ignore[arg-type]
    assert scores["no-loss"] is None
    assert scores["no-norm"] is None
    # Only the complete trials are ranked against each other: b has the lower norm and the higher loss.
    assert (scores["a"], scores["b"]) == (2.0, 1.0)


def test_paper_score_nan_is_pruned_and_missing_is_never_pruned() -> None:
    length = 10
    curves = [
        curve("nan", [math.nan] * length),
        curve("missing", [1.0] * length, [None] * length),  # the grad-norm series was never scraped
        *(curve(f"t{i}", [1.0 + i] * length, [1.0 + i] * length) for i in range(4)),
    ]
    verdicts = judge_sweep(curves, pruning(firstRungStep=10, score={"metric": "paper"}))
    assert (verdicts["nan"].prune, verdicts["nan"].reason) == (True, "NonFiniteScore")
    assert (verdicts["missing"].prune, verdicts["missing"].reason) == (False, "NoScoreYet")


@pytest.mark.parametrize(
    ("metric", "wanted"),
    [("trainLoss", {"a": 1.0, "b": 2.0}), ("gradNorm", {"a": 5.0, "b": 4.0}), ("evalLoss", {"a": 0.5, "b": None})],
)
def test_rung_scores_pick_the_metric(metric: str, wanted: dict[str, float | None]) -> None:
    stats = {"a": RungStats(1.0, 5.0, 0.5), "b": RungStats(2.0, 4.0, None)}
    assert rung_scores(stats, ScoreSpec.model_validate({"metric": metric})) == wanted


def test_promql_scores_are_not_computed_from_curves() -> None:
    with pytest.raises(ValueError, match="Prometheus"):
        rung_scores({"a": RungStats(1.0, 1.0, None)}, ScoreSpec.model_validate({"metric": "promql", "promql": "up"}))


def test_scores_by_rung_covers_the_rungs_each_trial_reached() -> None:
    curves = [curve("long", [2.0] * 35), curve("short", [3.0] * 12), curve("none", [1.0] * 9)]
    scores = scores_by_rung(curves, pruning(firstRungStep=10, reductionFactor=3))
    assert scores == {"long": {10: 2.0, 30: 2.0}, "short": {10: 3.0}, "none": {}}


def test_promql_scores_come_from_the_caller_at_the_rungs_reached() -> None:
    curves = [curve("a", [1.0] * 30), curve("b", [1.0] * 10)]
    external = {"a": {10: 0.7, 30: 0.2}, "b": {10: 0.9, 30: 0.1}}  # b's rung-30 value is ignored: not reached
    spec = pruning(firstRungStep=10, score={"metric": "promql", "promql": "x"})
    assert scores_by_rung(curves, spec, external) == {"a": {10: 0.7, 30: 0.2}, "b": {10: 0.9}}
    assert scores_by_rung(curves, spec) == {"a": {10: None, 30: None}, "b": {10: None}}  # unread: missing


# --- judge_sweep --------------------------------------------------------------------------------------------------

SAMPLE = st.one_of(st.floats(min_value=0.0, max_value=10.0), st.sampled_from([None, math.nan, math.inf]))


@st.composite
def sweeps(draw: st.DrawFn) -> tuple[list[Curve], PruningSpec]:
    metric = draw(st.sampled_from(["trainLoss", "gradNorm", "evalLoss", "paper"]))
    score: dict[str, object] = {"metric": metric}
    if metric != "paper":
        score["direction"] = draw(st.sampled_from(["minimize", "maximize"]))
    spec = pruning(
        algorithm=draw(st.sampled_from(["asha", "median"])),
        firstRungStep=draw(st.integers(1, 8)),
        reductionFactor=draw(st.integers(2, 4)),
        windowSteps=draw(st.integers(1, 5)),
        minTrialsPerRung=draw(st.integers(1, 5)),
        score=score,
    )
    curves = []
    for index in range(draw(st.integers(1, 10))):
        length = draw(st.integers(0, 40))
        # Few distinct values per curve keep examples small while still producing ties, NaN and gaps.
        level = draw(SAMPLE)
        losses = [level if draw(st.booleans()) else draw(SAMPLE) for _ in range(length)]
        norms = [draw(SAMPLE) for _ in range(length)] if draw(st.booleans()) else [1.0] * length
        evals = {step: draw(SAMPLE) for step in draw(st.sets(st.integers(1, max(length, 1)), max_size=5))}
        evals = {step: value for step, value in evals.items() if value is not None}
        curves.append(curve(f"t{index:02d}", losses, norms, evals, calibration=draw(st.booleans())))  # type: ignore[arg-type]
    return curves, spec


def comparable(verdicts: dict[str, object]) -> dict[str, str]:
    """Verdicts as text: NaN scores compare equal."""
    return {name: repr(verdict) for name, verdict in verdicts.items()}


@settings(max_examples=200, deadline=None)
@given(sweeps(), st.randoms(use_true_random=False))
def test_judge_sweep_properties(sweep: tuple[list[Curve], PruningSpec], shuffler: random.Random) -> None:
    curves, spec = sweep
    verdicts = judge_sweep(curves, spec)
    assert set(verdicts) == {run.name for run in curves}

    # Deterministic, and independent of the order of the curves.
    assert comparable(judge_sweep(curves, spec)) == comparable(verdicts)
    shuffled = list(curves)
    shuffler.shuffle(shuffled)
    assert comparable(judge_sweep(shuffled, spec)) == comparable(verdicts)

    scores = scores_by_rung(curves, spec)

    def peers(rung: int) -> int:
        """Trials with a finite score at the rung (calibration trials included)."""
        return sum(
            1 for other in curves if (value := scores[other.name].get(rung)) is not None and math.isfinite(value)
        )

    for run in curves:
        verdict = verdicts[run.name]
        if run.calibration:
            assert not verdict.prune  # calibration trials are never pruned
        if not verdict.prune:
            continue
        mine = {rung: score for rung, score in scores[run.name].items() if score is not None}
        assert verdict.rung in mine  # never at a rung it has not reached with a score
        if verdict.reason == "NonFiniteScore":
            assert verdict.rung == max(mine)  # failing now: its latest score is NaN or infinite
            assert not math.isfinite(mine[verdict.rung])
            continue
        # Pruned on its score: at a rung with at least minTrialsPerRung finite peers ...
        assert math.isfinite(mine[verdict.rung])
        assert verdict.peers == peers(verdict.rung) >= spec.min_trials_per_rung
        # ... the highest such rung it reached (so fewer peers than that at every higher rung it reached).
        for rung, score in mine.items():
            if rung > verdict.rung and math.isfinite(score):
                assert peers(rung) < spec.min_trials_per_rung
        if all(peers(rung) < spec.min_trials_per_rung for rung in mine):
            pytest.fail(f"{run.name} was pruned with fewer than minTrialsPerRung peers at every rung it reached")

    # algorithm none never prunes, whatever the curves.
    disabled = judge_sweep(curves, spec.model_copy(update={"algorithm": "none"}))
    assert {(verdict.prune, verdict.reason) for verdict in disabled.values()} <= {(False, "PruningDisabled")}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=2, max_size=12, unique=True),
    st.integers(1, 120),
    st.sampled_from(["asha", "median"]),
    st.integers(1, 20),
    st.integers(2, 4),
    st.integers(1, 10),
    st.integers(1, 4),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_a_score_ranking_trials_as_the_objective_never_prunes_the_best(
    offsets: list[int],
    length: int,
    algorithm: str,
    first_rung: int,
    factor: int,
    window: int,
    minimum: int,
    calibration: list[bool],
) -> None:
    """Train-loss curves offset + shared decay: every rung's median orders them as their final objective does."""
    decay = [1.0 / step for step in range(1, length + 1)]
    curves = [
        curve(f"t{i:02d}", [offset * 0.01 + value for value in decay], calibration=calibration[i])
        for i, offset in enumerate(offsets)
    ]
    spec = pruning(
        algorithm=algorithm,
        firstRungStep=first_rung,
        reductionFactor=factor,
        windowSteps=window,
        minTrialsPerRung=minimum,
    )
    objectives = {run.name: objective(run, "trainLoss", window) for run in curves}
    winner = best(objectives, "minimize")
    assert winner is not None
    assert winner[0] == f"t{offsets.index(min(offsets)):02d}"
    if first_rung <= length:  # the premise: the first rung ranks trials exactly as the objective
        first = scores_by_rung(curves, spec)
        order_by_score = sorted(curves, key=lambda run: first[run.name][first_rung])  # type: ignore[arg-type,return-value]
        order_by_objective = sorted(curves, key=lambda run: objectives[run.name])  # type: ignore[arg-type,return-value]
        assert order_by_score == order_by_objective
    assert not judge_sweep(curves, spec)[winner[0]].prune


@pytest.mark.parametrize(("algorithm", "kept"), [("asha", 2), ("median", 3)])
def test_asha_keeps_a_third_and_median_half(algorithm: str, kept: int) -> None:
    curves = [curve(f"t{i}", [float(i)] * 10) for i in range(6)]
    verdicts = judge_sweep(curves, pruning(algorithm=algorithm, firstRungStep=10, reductionFactor=3))
    assert sorted(name for name, verdict in verdicts.items() if not verdict.prune) == [f"t{i}" for i in range(kept)]


def test_maximize_direction_keeps_the_highest_scores() -> None:
    curves = [curve(f"t{i}", [1.0] * 10, [float(i)] * 10) for i in range(6)]
    spec = pruning(firstRungStep=10, score={"metric": "gradNorm", "direction": "maximize"})
    assert sorted(name for name, verdict in judge_sweep(curves, spec).items() if not verdict.prune) == ["t4", "t5"]


def test_paper_score_is_judged_lower_is_better_whatever_its_direction() -> None:
    """The paper's combined rank is minimized even when the spec says maximize (score_direction)."""
    curves = [curve(f"t{i}", [10.0 - i] * 10, [1.0 + i] * 10) for i in range(6)]  # t0: lowest norm, highest loss
    spec = pruning(firstRungStep=10, score={"metric": "paper", "direction": "maximize"})
    assert sorted(name for name, verdict in judge_sweep(curves, spec).items() if not verdict.prune) == ["t0", "t1"]


# --- objective, best, correlation, savings ------------------------------------------------------------------------


def test_eval_objective_is_the_eval_at_the_last_step() -> None:
    assert objective(curve("a", [1.0] * 3, evals={50: 0.5, 100: 0.4, 70: 0.9}), "evalLoss", 5) == 0.4
    assert objective(curve("a", [1.0] * 3), "evalLoss", 5) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(FINITE, min_size=1, max_size=40), st.integers(1, 50))
def test_train_objective_is_the_median_of_the_last_window(losses: list[float], window: int) -> None:
    assert objective(curve("a", losses), "trainLoss", window) == pytest.approx(middle(losses[-window:]))


def test_train_objective_without_steps_is_none() -> None:
    assert objective(curve("a", []), "trainLoss", 5) is None
    result = objective(curve("a", [1.0, 2.0, math.nan]), "trainLoss", 2)
    assert result is not None
    assert math.isnan(result)


VALUES = st.one_of(st.none(), FINITE, st.sampled_from([math.nan, math.inf, -math.inf]))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.from_regex(r"^t[0-9]{1,2}$", fullmatch=True), VALUES, max_size=10),
    st.sampled_from(["minimize", "maximize"]),
)
def test_best_picks_by_direction_and_ignores_non_finite(objectives: dict[str, float | None], direction: str) -> None:
    result = best(objectives, direction)  # type: ignore[arg-type]
    finite = {name: value for name, value in objectives.items() if value is not None and math.isfinite(value)}
    if not finite:
        assert result is None
        return
    target = min(finite.values()) if direction == "minimize" else max(finite.values())
    assert result == (min(name for name, value in finite.items() if value == target), target)  # ties: first name


def test_best_concrete() -> None:
    objectives = {"b": 2.0, "a": 3.0, "c": None, "d": math.nan, "e": 1.0}
    assert best(objectives, "minimize") == ("e", 1.0)
    assert best(objectives, "maximize") == ("a", 3.0)
    assert best({"z": 1.0, "y": 1.0}, "minimize") == ("y", 1.0)
    assert best({}, "minimize") is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-1000, 1000).map(float), min_size=3, max_size=20, unique=True),
    st.sampled_from(["minimize", "maximize"]),
    st.sampled_from(["minimize", "maximize"]),
    st.booleans(),
)
def test_perfect_agreement_gives_rho_plus_one_whatever_the_directions(
    scores: list[float], score_better: str, objective_better: str, agree: bool
) -> None:
    """Agreement: the better score (by its direction) goes with the better objective (by its own)."""
    increasing = (score_better == objective_better) == agree
    objectives = {f"t{i}": (3 * score + 1 if increasing else -score) for i, score in enumerate(scores)}
    value = correlation(
        {f"t{i}": score for i, score in enumerate(scores)}, objectives, score_better, objective_better, 10
    )  # type: ignore[arg-type]
    assert value.rho == pytest.approx(1.0 if agree else -1.0)
    assert (value.n, value.rung) == (len(scores), 10)


def test_correlation_counts_only_trials_with_both_values_finite() -> None:
    scores = {
        "a": 1.0,
        "b": 2.0,
        "c": 3.0,
        "d": 4.0,
        "nan": math.nan,
        "none": None,
        "no-objective": 5.0,
        "bad-obj": 6.0,
    }
    objectives = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "nan": 5.0, "none": 6.0, "bad-obj": math.inf, "extra": 7.0}
    value = correlation(scores, objectives, "minimize", "minimize", 10)
    assert value.n == 4
    assert value.rho == pytest.approx(1.0)


def test_correlation_needs_three_pairs() -> None:
    value = correlation({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}, "minimize", "minimize", 3)
    assert (value.rho, value.n, value.rung) == (None, 2, 3)
    assert correlation({}, {}, "minimize", "maximize", None) == Correlation(rho=None, n=0, rung=None)


@pytest.mark.parametrize(
    ("rho", "n", "wanted"),
    [
        (1.0, MIN_CORRELATION_TRIALS - 1, None),
        (None, 10, None),
        (1.0, MIN_CORRELATION_TRIALS, True),
        (PREDICTIVE_RHO, MIN_CORRELATION_TRIALS, True),
        (PREDICTIVE_RHO - 0.01, MIN_CORRELATION_TRIALS, False),
        (-1.0, 10, False),
    ],
)
def test_predictive(rho: float | None, n: int, wanted: bool | None) -> None:
    assert MIN_CORRELATION_TRIALS == 4
    assert predictive(Correlation(rho=rho, n=n)) is wanted


def test_predictive_from_real_scores() -> None:
    three = correlation({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.0, "b": 2.0, "c": 3.0}, "minimize", "minimize", 1)
    assert three.rho == pytest.approx(1.0)
    assert predictive(three) is None  # 3 trials: no claim
    four = correlation(
        {k: v for k, v in zip("abcd", (1.0, 2.0, 3.0, 4.0), strict=True)},
        {k: v for k, v in zip("abcd", (4.0, 3.0, 2.0, 1.0), strict=True)},
        "minimize",
        "minimize",
        1,
    )
    assert predictive(four) is False


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10_000), st.integers(0, 10_000), st.floats(min_value=0.0, max_value=1e7))
def test_projected_savings_is_rate_times_remaining_steps(step: int, more: int, seconds: float) -> None:
    total = step + more
    assert projected_savings(step, total, seconds) == pytest.approx(seconds * more / step)


@pytest.mark.parametrize(("step", "total"), [(0, 100), (-1, 100), (100, 100), (150, 100)])
def test_projected_savings_is_zero_when_nothing_remains_or_nothing_ran(step: int, total: int) -> None:
    assert projected_savings(step, total, 123.0) == 0.0
