"""The sweep's pruning rule: table cases for each reason, and the properties ARCHITECTURE.md asks of it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_operator.decisions.pruning import Rungs, Trial, judge, spearman

RUNGS = Rungs(first_step=10, reduction_factor=3)  # rungs at 10, 30, 90, 270, ...


def test_rung_steps() -> None:
    assert RUNGS.steps(300) == [10, 30, 90, 270]
    assert RUNGS.steps(9) == []
    with pytest.raises(ValueError, match="reduction_factor must be at least 2"):
        Rungs(10, 1)


def test_top_third_survives_and_the_rest_is_pruned_with_evidence() -> None:
    trials = [Trial(f"t{i}", {10: float(i)}) for i in range(6)]  # lower is better
    verdicts = judge(trials, RUNGS, "minimize", min_trials_per_rung=3)
    assert [name for name, verdict in verdicts.items() if not verdict.prune] == ["t0", "t1"]  # 6 // 3 = 2 kept
    pruned = verdicts["t4"]
    assert (pruned.reason, pruned.rung, pruned.score, pruned.cutoff, pruned.peers) == (
        "BelowRungCutoff",
        10,
        4.0,
        1.0,
        6,
    )


def test_maximize_keeps_the_highest() -> None:
    trials = [Trial(f"t{i}", {10: float(i)}) for i in range(6)]
    kept = [name for name, verdict in judge(trials, RUNGS, "maximize").items() if not verdict.prune]
    assert kept == ["t4", "t5"]


def test_a_trial_passed_early_is_re_judged_as_peers_arrive() -> None:
    """ASHA's weakness: the first trials at a rung pass with nobody to compare to. Here they are re-judged."""
    early = [Trial("early", {10: 5.0}), Trial("b", {10: 6.0}), Trial("c", {10: 7.0})]
    assert not judge(early, RUNGS)["early"].prune  # 3 peers, keep 1: "early" is the best so far
    later = [*early, *(Trial(f"late{i}", {10: 1.0 + i * 0.1}) for i in range(6))]
    verdict = judge(later, RUNGS)["early"]
    assert verdict.prune
    assert verdict.reason == "BelowRungCutoff"


@pytest.mark.parametrize(
    ("trial", "reason"),
    [
        (Trial("x", {}), "NoScoreYet"),
        (Trial("x", {10: None}), "NoScoreYet"),  # reached, unreadable: never a reason to prune
        (Trial("x", {10: 99.0}, calibration=True), "CalibrationTrial"),
        (Trial("x", {12: 99.0}), "NoScoreYet"),  # 12 is no rung
    ],
)
def test_what_never_prunes(trial: Trial, reason: str) -> None:
    peers = [Trial(f"p{i}", {10: float(i)}) for i in range(9)]
    verdict = judge([trial, *peers], RUNGS)["x"]
    assert not verdict.prune
    assert verdict.reason == reason


def test_too_few_peers_never_prunes() -> None:
    verdicts = judge([Trial("a", {10: 1.0}), Trial("b", {10: 9.0})], RUNGS, min_trials_per_rung=3)
    assert {verdict.reason for verdict in verdicts.values()} == {"TooFewPeers"}
    assert not any(verdict.prune for verdict in verdicts.values())


def test_a_non_finite_score_fails_the_trial_alone() -> None:
    """One NaN trial is pruned; it neither stops the others nor counts among their peers (ray#24809)."""
    trials = [Trial("nan", {10: math.nan}), *(Trial(f"t{i}", {10: float(i)}) for i in range(3))]
    verdicts = judge(trials, RUNGS, min_trials_per_rung=3)
    assert (verdicts["nan"].prune, verdicts["nan"].reason) == (True, "NonFiniteScore")
    assert verdicts["t0"].peers == 3
    assert not verdicts["t0"].prune


def test_judged_at_the_highest_rung_reached_only() -> None:
    """A trial that was below the cutoff at rung 10 but reached rung 30 is judged there, among rung-30 peers."""
    trials = [
        Trial("climber", {10: 8.0, 30: 0.5}),
        *(Trial(f"r30-{i}", {10: float(i), 30: 1.0 + i}) for i in range(3)),
        *(Trial(f"r10-{i}", {10: float(i)}) for i in range(6)),
    ]
    verdict = judge(trials, RUNGS)["climber"]
    assert (verdict.rung, verdict.prune, verdict.peers) == (30, False, 4)


def test_a_trial_ahead_of_every_peer_is_judged_where_peers_are() -> None:
    """A bad trial that stepped past every peer's rungs between two judgements does not escape at a rung nobody
    else reached: it is judged at its highest rung with enough peers."""
    trials = [
        Trial("runaway", {10: 50.0, 30: 60.0, 90: 70.0}),
        *(Trial(f"ok-{i}", {10: 1.0 + i}) for i in range(3)),
    ]
    verdict = judge(trials, RUNGS)["runaway"]
    assert (verdict.rung, verdict.prune, verdict.peers, verdict.reason) == (10, True, 4, "BelowRungCutoff")
    alone = judge([trials[0]], RUNGS)["runaway"]
    assert (alone.rung, alone.prune, alone.reason) == (90, False, "TooFewPeers")


SCORES = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@st.composite
def sweeps(draw: st.DrawFn) -> list[Trial]:
    count = draw(st.integers(1, 20))
    trials = []
    for index in range(count):
        depth = draw(st.integers(0, 3))
        scores = {step: draw(st.one_of(st.none(), SCORES)) for step in RUNGS.steps(10 * 3 ** max(depth - 1, 0))[:depth]}
        trials.append(Trial(f"t{index:02d}", scores, calibration=draw(st.booleans())))
    return trials


@settings(max_examples=300, deadline=None)
@given(sweeps(), st.sampled_from(["minimize", "maximize"]), st.integers(1, 6))
def test_properties(trials: list[Trial], direction: str, minimum: int) -> None:
    verdicts = judge(trials, RUNGS, direction, minimum)  # type: ignore[arg-type]
    assert verdicts == judge(list(reversed(trials)), RUNGS, direction, minimum)  # deterministic, order-free
    for trial in trials:
        verdict = verdicts[trial.name]
        if trial.calibration or trial.highest_rung(RUNGS) is None:
            assert not verdict.prune  # calibration and missing data never prune
        if verdict.prune:
            assert trial.scores.get(verdict.rung) is not None  # never by a rung it has not reached
            assert verdict.peers >= minimum or verdict.reason == "NonFiniteScore"
            higher = [rung for rung in RUNGS.steps(10**6) if rung > verdict.rung and trial.scores.get(rung) is not None]
            for rung in higher:  # judged at the highest reached rung with enough peers
                assert sum(1 for t in trials if t.scores.get(rung) is not None) < minimum
    # Pruning never removes everyone who reached a rung with a finite score: the top 1/eta (at least one) stays.
    for rung in {verdict.rung for verdict in verdicts.values() if verdict.reason == "BelowRungCutoff"}:
        cut = [v for v in verdicts.values() if v.rung == rung and v.reason == "BelowRungCutoff"]
        assert len(cut) < cut[0].peers


@settings(max_examples=200, deadline=None)
@given(st.lists(SCORES, min_size=3, max_size=30, unique=True))
def test_a_perfect_score_keeps_the_best_trial(objectives: list[float]) -> None:
    """Scores that order trials exactly as the final objective does: the best trial is never pruned."""
    trials = [Trial(f"t{i:02d}", {10: value}) for i, value in enumerate(objectives)]
    best = min(trials, key=lambda trial: trial.scores[10] or 0.0)
    assert not judge(trials, RUNGS, "minimize")[best.name].prune


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties: average ranks
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None
