"""The replay behind benchmarks/sweep_savings.py, on synthetic curves (no trainer): what would make its figures wrong.

The benchmark trains every trial of a sweep to the end once and replays the pruned sweep from those recordings, so
its compute and kept-the-best figures are only as good as the replay: an unpruned replay must cost exactly the full
sweep, a trial that is worst at every rung must stop early and cost less, no more than `parallel` trials may ever
hold a slot, and calibration trials must run to the end.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.sweep_savings import (
    BASELINE,
    SCORES,
    TrialRun,
    evaluate_score,
    max_overlap,
    replay,
)
from finetune_contract.records import StepRecord
from finetune_operator.api.sweep import PruningSpec

MAX_STEPS = 30
FIRST_RUNG = 3  # rungs at 3, 9, 27


def pruning(metric: str, min_trials: int = 3) -> PruningSpec:
    algorithm = "none" if metric == BASELINE else "asha"
    return PruningSpec.model_validate(
        {
            "algorithm": algorithm,
            "firstRungStep": FIRST_RUNG,
            "reductionFactor": 3,
            "windowSteps": 2,
            "minTrialsPerRung": min_trials,
            "score": {"metric": "trainLoss" if metric == BASELINE else metric},
        }
    )


def run(
    index: int,
    loss: float,
    grad_norm: float,
    *,
    startup: float = 2.0,
    step_seconds: float = 1.0,
    teardown: float = 1.0,
    steps: int = MAX_STEPS,
    calibration: bool = False,
) -> TrialRun:
    """A trial whose loss falls from `loss` (eval loss 0.1 below train loss) with a constant gradient norm; step k
    is logged `startup + k * step_seconds` after the process started, which exits `teardown` after the last one."""
    records = tuple(
        StepRecord(step=k, loss=loss - 0.01 * k, grad_norm=grad_norm, step_duration_seconds=step_seconds)
        for k in range(1, steps + 1)
    )
    evals = {k: loss - 0.01 * k - 0.1 for k in range(FIRST_RUNG, steps + 1, FIRST_RUNG)} | {steps: loss - 0.01 * steps}
    ready = tuple(startup + k * step_seconds for k in range(1, steps + 1))
    return TrialRun(
        index=index,
        name=f"t{index}",
        parameters={"i": index},
        calibration=calibration,
        steps=records,
        evals=evals,
        ready=ready,
        wall_seconds=ready[-1] + teardown,
        returncode=0,
    )


def six_trials(worst: tuple[float, float] = (9.0, 9.0)) -> list[TrialRun]:
    """t0..t4 ordinary (t0 best on every score but the paper's), t5 = `worst` (loss, grad norm)."""
    ordinary = [run(i, loss=2.0 + 0.1 * i, grad_norm=1.0 + 0.1 * i) for i in range(5)]
    return [*ordinary, run(5, loss=worst[0], grad_norm=worst[1])]


def test_without_pruning_the_replay_costs_exactly_the_full_sweep() -> None:
    runs = six_trials()
    figures = evaluate_score(runs, pruning(BASELINE), parallel=2, metric="evalLoss", window=2)
    assert figures["compute_seconds_ratio"] == 1.0
    assert figures["compute_steps_ratio"] == 1.0
    assert figures["pruned"] == 0
    assert figures["best_kept"]
    assert figures["regret"] == 0.0
    # 6 trials of 2 + 30 + 1 = 33 s on 2 slots, one after the other: 3 waves.
    assert figures["makespan_s"] == pytest.approx(99.0)


@pytest.mark.parametrize("metric", SCORES)
def test_a_trial_worst_at_every_rung_is_pruned_early_and_costs_less(metric: str) -> None:
    # Worst: high loss and grad norm for the loss/norm scores; the paper's score ranks LOW loss and high norm worst.
    worst = (0.5, 9.0) if metric == "paper" else (9.0, 9.0)
    runs = six_trials(worst)
    result = replay(runs, pruning(metric), parallel=6)
    victim = result.outcomes["t5"]
    assert victim.pruned, victim
    assert victim.steps < MAX_STEPS
    assert victim.seconds < runs[5].wall_seconds
    # It held its slot from its start until it was pruned, then its teardown: steps done x 1 s + startup + teardown.
    assert victim.seconds == pytest.approx(2.0 + victim.steps * 1.0 + 1.0)
    figures = evaluate_score(runs, pruning(metric), parallel=6, metric="evalLoss", window=2)
    assert figures["compute_seconds_ratio"] < 1.0
    assert figures["compute_steps_ratio"] < 1.0


def test_calibration_trials_run_to_the_end_even_when_worst() -> None:
    runs = six_trials()
    runs[5] = run(5, loss=9.0, grad_norm=9.0, calibration=True)
    result = replay(runs, pruning("trainLoss"), parallel=6)
    assert not result.outcomes["t5"].pruned
    assert result.outcomes["t5"].steps == MAX_STEPS
    assert result.outcomes["t5"].seconds == pytest.approx(runs[5].wall_seconds)


def test_the_true_best_pruned_by_a_misleading_score_shows_as_not_kept_with_its_regret() -> None:
    # t0 ends best (lowest final eval loss) but has the highest gradient norm early: gradNorm prunes it.
    runs = six_trials()
    runs[0] = run(0, loss=1.0, grad_norm=50.0)
    figures = evaluate_score(runs, pruning("gradNorm"), parallel=6, metric="evalLoss", window=2)
    assert figures["true_best"] == "t0"
    assert not figures["best_kept"]
    assert figures["regret"] is not None
    assert figures["regret"] > 0
    assert figures["rho_all_n"] == 6  # over every trial of the full sweep, pruned or not
    assert figures["rho_finished_n"] == len(runs) - figures["pruned"]


@settings(max_examples=60, deadline=None)
@given(
    parallel=st.integers(1, 4),
    shapes=st.lists(
        st.tuples(st.floats(0.5, 5.0), st.floats(0.1, 3.0), st.floats(1.0, 9.0), st.integers(4, MAX_STEPS)),
        min_size=3,
        max_size=9,
    ),
    metric=st.sampled_from((BASELINE, *SCORES)),
)
def test_the_schedule_never_runs_more_than_parallel_trials_and_starts_them_in_order(
    parallel: int, shapes: list[tuple[float, float, float, int]], metric: str
) -> None:
    runs = [
        run(i, loss=loss, grad_norm=loss / 2, startup=startup, step_seconds=step, steps=steps)
        for i, (startup, step, loss, steps) in enumerate(shapes)
    ]
    result = replay(runs, pruning(metric), parallel)
    outcomes = [result.outcomes[r.name] for r in runs]
    assert max_overlap(outcomes) <= parallel
    assert max_overlap(outcomes) == min(parallel, len(runs))
    starts = [outcome.start for outcome in outcomes]
    assert starts == sorted(starts)
    for r, outcome in zip(runs, outcomes, strict=True):
        assert 0 < outcome.steps <= len(r.steps)
        assert outcome.seconds <= r.wall_seconds + 1e-9
        assert math.isclose(outcome.end - outcome.start, outcome.seconds)
        if not outcome.pruned:
            assert outcome.steps == len(r.steps)
            assert outcome.seconds == pytest.approx(r.wall_seconds)
    figures = evaluate_score(runs, pruning(metric), parallel, metric="evalLoss", window=2)
    assert 0 < figures["compute_seconds_ratio"] <= 1.0 + 1e-12
    if metric == BASELINE:
        assert figures["compute_seconds_ratio"] == pytest.approx(1.0)


def test_round_trip_through_the_result_json_keeps_the_replay() -> None:
    runs = six_trials()
    again = [TrialRun.from_json(r.to_json()) for r in runs]
    for metric in SCORES:
        first = evaluate_score(runs, pruning(metric), 3, "evalLoss", 2)
        second = evaluate_score(again, pruning(metric), 3, "evalLoss", 2)
        assert first == second
