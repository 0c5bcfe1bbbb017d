"""The sweep loop (issue 13) against the in-memory API server: which trials start and when, restart safety, pruning
written onto the trial, the sweep's status, suspend, the GPU-hours budget and invalid sweeps.

The trials' FineTuneJob phases are set by writing their status in the fake, as the operator's other loops would;
their curves come from a table of StepRecords per trial (`curves_from_table`), standing in for Prometheus. Expected
values are derived here from the inputs (medians by sorting, device-seconds by hand), not by the loop's helpers.
The last group pins defects found while writing these tests (adopting a same-named job, a budget-stopped sweep never
ending, a stale curve as the objective, a suspended trial's GPU time, reports repeated after a restart, one sweep's
failure stopping the others), fixed since.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from finetune_contract import names
from finetune_contract.records import StepRecord
from finetune_operator.api.sweep import FineTuneSweepSpec, PlannedTrial, plan, trial_name
from finetune_operator.config import OperatorConfig
from finetune_operator.decisions.sweep import Curve
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.common import Context
from finetune_operator.reconcile.sweep import SweepController
from tests.manifests import minimal_job
from tests.operator.fake_kube import FakeKube

NS, SWEEP = "team", "sw"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GPUS_PER_NODE = 2
TEMPLATE: dict[str, Any] = {**minimal_job()["spec"], "resources": {"nodes": 1, "gpusPerNode": GPUS_PER_NODE}}
RATES = [1e-5, 2e-5, 3e-5, 4e-5, 5e-5, 6e-5]
PRUNING = {"firstRungStep": 10, "reductionFactor": 3, "windowSteps": 5, "minTrialsPerRung": 3}
PRUNED_TOTAL = "finetune_operator_sweep_pruned_total"
Table = dict[str, list[StepRecord]]


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def name(index: int) -> str:
    return trial_name(SWEEP, index)


def sweep_manifest(trials: int = 4, **spec: Any) -> dict[str, Any]:
    """A sweep over `trials` learning rates (trial i sets RATES[i])."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneSweep",
        "metadata": {"name": SWEEP},
        "spec": {
            "template": TEMPLATE,
            "parameters": [{"path": "training.learningRate", "values": RATES[:trials]}],
            "pruning": PRUNING,
            **spec,
        },
    }


def curves_from_table(table: Table, evals: dict[str, dict[int, float]] | None = None) -> Any:
    """The curve reader the operator gives Prometheus to, reading a table instead: a trial's steps (and evals) by
    its name; None for a trial the table has no steps of (nothing scraped yet)."""

    def read(_: Context, trial: PlannedTrial, __: dict[str, Any]) -> Curve | None:
        if not table.get(trial.name):
            return None
        return Curve(trial.name, list(table[trial.name]), dict((evals or {}).get(trial.name, {})), trial.calibration)

    return read


def losses(*segments: tuple[int, float | Sequence[float]]) -> list[StepRecord]:
    """Steps 1.. in segments of (count, loss): a constant loss, or one loss per step."""
    out: list[StepRecord] = []
    for count, loss in segments:
        values = [loss] * count if isinstance(loss, float) else list(loss)
        assert len(values) == count
        out += [StepRecord(len(out) + offset, value, 1.0) for offset, value in enumerate(values, 1)]
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class Cluster:
    """The fake API server, the operator's context and one SweepController (a restart makes a new one)."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.fake = FakeKube()
        self.clock = Clock()
        self.metrics = OperatorMetrics()
        self.ctx = Context(kube=cast(Kube, self.fake), config=OperatorConfig(), metrics=self.metrics, clock=self.clock)
        self.table: Table = {}
        self.evals: dict[str, dict[int, float]] = {}
        self.sweep = self.fake.add_sweep(manifest, NS)
        self.restart()

    def restart(self) -> None:
        """A new operator process: fresh caches, same cluster."""
        self.controller = SweepController(self.ctx, read_curve=curves_from_table(self.table, self.evals))

    def tick(self, lookup: Callable[[str, str], dict[str, Any] | None] | None = None) -> None:
        self.controller.tick([self.body()], lookup or self.fake.find_job)

    def body(self) -> dict[str, Any]:
        body = self.fake.get_sweep(NS, SWEEP)
        assert body is not None
        return body

    def status(self) -> dict[str, Any]:
        return dict(self.body().get("status") or {})

    def rows(self) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in self.status().get("trials") or []}

    def job(self, index: int) -> dict[str, Any]:
        return self.fake.jobs[(NS, name(index))]

    def trials(self) -> list[str]:
        """The trial FineTuneJobs in the order they were created."""
        return [job_name for (namespace, job_name) in self.fake.jobs if namespace == NS]

    def set_status(self, index: int, **fields: Any) -> None:
        """What the operator's job reconcile would write onto the trial (a new resourceVersion)."""
        self.fake.patch_job_status(NS, name(index), fields, None)

    def run(self, index: int, seconds: float, step: int = 10, total: int = 100) -> None:
        start = stamp(self.clock.now - timedelta(seconds=seconds))
        self.set_status(index, phase="Running", startTime=start, step=step, totalSteps=total)

    def finish(self, index: int, seconds: float, phase: str = "Succeeded") -> None:
        """Started `seconds` before now, ended now."""
        self.set_status(
            index,
            phase=phase,
            startTime=stamp(self.clock.now - timedelta(seconds=seconds)),
            completionTime=stamp(self.clock.now),
            conditions=[{"type": phase, "status": "True", "reason": phase, "message": "", "lastTransitionTime": ""}],
        )

    def sweep_events(self, reason: str | None = None) -> list[tuple[str, str, str, str]]:
        return [e for e in self.fake.events if e[0] == SWEEP and (reason is None or e[2] == reason)]

    def pruned_total(self) -> float:
        return self.metrics.registry.get_sample_value(PRUNED_TOTAL) or 0.0

    def active(self) -> int:
        ended = {"Succeeded", "Failed", "EarlyStopped"}
        return sum(1 for job in self.fake.jobs.values() if (job.get("status") or {}).get("phase") not in ended)


# --- starting trials ----------------------------------------------------------------------------------------------


def test_trials_start_in_index_order_as_owned_labelled_annotated_jobs() -> None:
    cluster = Cluster(sweep_manifest(trials=5, maxParallelTrials=2))
    cluster.tick()
    assert cluster.trials() == [name(0), name(1)]
    uid = cluster.sweep["metadata"]["uid"]
    for index in (0, 1):
        job = cluster.job(index)
        meta = job["metadata"]
        assert meta["name"] == f"{SWEEP}-t{index}"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneSweep",
                "name": SWEEP,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"] == {names.SWEEP_LABEL: SWEEP, names.TRIAL_INDEX_LABEL: str(index)}
        assert json.loads(meta["annotations"][names.TRIAL_PARAMETERS_ANNOTATION]) == {
            "training.learningRate": RATES[index]
        }
        assert job["spec"]["training"]["learningRate"] == RATES[index]
        assert job["spec"]["training"]["checkpoint"]["outputDir"] == f"/output/{name(index)}"
        assert meta["generation"] == 1
        assert meta["uid"]
    assert [e[2] for e in cluster.sweep_events("TrialCreated")] == ["TrialCreated"] * 2
    assert cluster.status()["trialsTotal"] == 5
    assert [row["phase"] for row in cluster.status()["trials"]] == ["Pending"] * 5
    # Created but not yet running trials hold their slots.
    cluster.tick()
    assert cluster.trials() == [name(0), name(1)]


@pytest.mark.parametrize(
    "ending",
    [
        {"phase": "Succeeded"},
        {"phase": "Failed"},
        {
            "phase": "EarlyStopped",
            "conditions": [{"type": "EarlyStopped", "status": "True", "reason": "PrunedBySweep", "message": "x"}],
        },
    ],
    ids=["succeeded", "failed", "pruned"],
)
def test_an_ended_trial_frees_its_slot_for_the_next_index(ending: dict[str, Any]) -> None:
    cluster = Cluster(sweep_manifest(trials=5, maxParallelTrials=2))
    cluster.tick()
    cluster.run(0, 60)
    cluster.run(1, 60)
    cluster.tick()
    assert cluster.trials() == [name(0), name(1)]  # both running: no free slot
    cluster.set_status(1, **ending, completionTime=stamp(NOW))
    cluster.tick()
    assert cluster.trials() == [name(0), name(1), name(2)]
    assert cluster.active() == 2
    cluster.tick()
    assert cluster.trials() == [name(0), name(1), name(2)]
    # The next one to end frees a slot for index 3, never a jump or a double start.
    cluster.finish(0, 60)
    cluster.tick()
    assert cluster.trials() == [name(0), name(1), name(2), name(3)]
    assert cluster.active() == 2


def test_never_more_than_max_parallel_trials_active_over_a_whole_sweep() -> None:
    cluster = Cluster(sweep_manifest(trials=6, maxParallelTrials=3))
    started: list[str] = []
    for _ in range(20):
        cluster.tick()
        assert cluster.active() <= 3
        for index, job_name in enumerate(cluster.trials()):
            if job_name not in started:
                started.append(job_name)
                cluster.run(index, 10)
            elif (cluster.job(index).get("status") or {}).get("phase") == "Running":
                cluster.finish(index, 10)
                break  # one trial ends per cycle
    assert started == [name(i) for i in range(6)]
    assert cluster.status()["phase"] == "Succeeded"
    assert cluster.status()["succeeded"] == 6


# --- restart safety -----------------------------------------------------------------------------------------------


def test_a_restarted_operator_never_creates_a_trial_twice() -> None:
    cluster = Cluster(sweep_manifest(trials=4, maxParallelTrials=2))
    cluster.tick()
    cluster.run(0, 30)
    uids = {job_name: job["metadata"]["uid"] for (_, job_name), job in cluster.fake.jobs.items()}
    cluster.restart()
    cluster.tick()
    assert cluster.fake.calls.count("create_job") == 2
    # Restarted before its index is filled: every trial looks missing, the creates get 409 and find the same jobs.
    cluster.restart()
    cluster.tick(lambda namespace, job_name: None)
    assert cluster.fake.calls.count("create_job") == 4  # the two lowest missing indices, tried once each
    assert {job_name: job["metadata"]["uid"] for (_, job_name), job in cluster.fake.jobs.items()} == uids
    assert cluster.trials() == [name(0), name(1)]
    assert len(cluster.sweep_events("TrialCreated")) == 2  # a 409 is not a creation
    assert cluster.rows()[name(0)]["phase"] == "Running"


def foreign_scene() -> Cluster:
    """Someone else's running FineTuneJob (no ownerReference to the sweep) holds trial 0's name."""
    cluster = Cluster(sweep_manifest(trials=3, maxParallelTrials=2))
    cluster.fake.add_job(minimal_job(name(0)), NS)
    cluster.fake.patch_job_status(NS, name(0), {"phase": "Running", "startTime": stamp(NOW - timedelta(hours=1))}, None)
    return cluster


def test_a_same_named_job_not_owned_by_the_sweep_is_left_alone() -> None:
    """The create of trial 0 gets 409 every cycle and the trial stays missing; the foreign job is never changed
    (not labelled, not suspended, not pruned) and the next index still starts."""
    cluster = foreign_scene()
    foreign = copy.deepcopy(cluster.job(0))
    cluster.table[name(0)] = losses((10, float("nan")))  # a curve that would be pruned at once were it a trial
    cluster.tick()
    assert cluster.job(0) == foreign
    assert cluster.trials() == [name(0), name(1)]
    assert cluster.fake.calls.count("create_job") == 2
    assert [e[3].split(":")[0] for e in cluster.sweep_events("TrialCreated")] == [f"trial 1 {name(1)}"]
    cluster.fake.edit_sweep_spec(NS, SWEEP, {"suspend": True})
    cluster.tick()
    assert cluster.job(0) == foreign
    assert cluster.job(1)["spec"]["suspend"] is True
    cluster.fake.edit_sweep_spec(NS, SWEEP, {"suspend": False})
    cluster.tick()
    assert cluster.job(0) == foreign
    # Tried again whenever a slot is free (not while suspended), 409 each time.
    assert cluster.fake.calls.count("create_job") == 3
    assert cluster.sweep_events("TrialPruned") == []


def test_a_same_named_job_not_owned_by_the_sweep_is_not_adopted() -> None:
    cluster = foreign_scene()
    cluster.tick()
    status = cluster.status()
    assert cluster.rows()[name(0)]["phase"] == "Pending"
    assert status["running"] == 0
    assert status["gpuSeconds"] == 0


# --- pruning ------------------------------------------------------------------------------------------------------

BAD_WINDOW = [9.0, 9.5, 8.5, 9.2, 9.1]  # steps 6..10 of the losing trial
GOOD = [1.0, 1.1, 1.2]  # the early losses of the three trials that finished


def pruning_scene(calibration_trials: int = 0, bad: int = 3) -> Cluster:
    """Four trials: three finished with good early losses, trial `bad` running at step 10 with a far worse one."""
    pruning = {**PRUNING, "calibrationTrials": calibration_trials}
    cluster = Cluster(sweep_manifest(trials=4, maxParallelTrials=4, pruning=pruning))
    cluster.tick()
    assert len(cluster.trials()) == 4
    good = iter(GOOD)
    for index in range(4):
        if index == bad:
            cluster.table[name(index)] = losses((5, 9.0), (5, BAD_WINDOW))
            cluster.run(index, 100, step=10, total=100)
        else:
            early = next(good)
            cluster.table[name(index)] = losses((10, early), (20, early / 2))
            cluster.finish(index, 300)
    return cluster


def test_a_far_worse_running_trial_is_pruned_with_its_evidence() -> None:
    cluster = pruning_scene()
    finished = {index: copy.deepcopy(cluster.job(index)["status"]) for index in range(3)}
    cluster.tick()
    status = cluster.job(3)["status"]
    assert status["phase"] == "EarlyStopped"
    assert status["completionTime"] == stamp(NOW)
    stopped = {c["type"]: c for c in status["conditions"]}["EarlyStopped"]
    assert (stopped["status"], stopped["reason"]) == ("True", "PrunedBySweep")
    verdict = status["earlyStopping"]
    assert (verdict["decision"], verdict["reason"]) == ("stop", "PrunedBySweep")
    # Rung 10, window steps 6..10: the trial's median against the cut-off, the best of the four (asha keeps 4 // 3).
    assert verdict["evidence"] == {
        "metric": "trainLoss",
        "rule": "sweepPruning",
        "statistic": "rung score",
        "toStep": 10,
        "value": repr(median(BAD_WINDOW)),
        "threshold": repr(min(GOOD)),
    }
    assert median(BAD_WINDOW) == 9.1
    pruned_events = cluster.sweep_events("TrialPruned")
    assert len(pruned_events) == 1
    kind, message = pruned_events[0][1], pruned_events[0][3]
    assert kind == "Normal"
    assert name(3) in message
    assert "rung step 10" in message
    assert cluster.pruned_total() == 1
    row = cluster.rows()[name(3)]
    assert (row["phase"], row["reason"]) == ("Pruned", "PrunedBySweep")
    assert cluster.status()["pruned"] == 1
    # The finished trials (worse than the cut-off too) are never rewritten.
    assert {index: cluster.job(index)["status"] for index in range(3)} == finished
    assert cluster.status()["phase"] == "Succeeded"  # every trial ended, three of them well


def test_a_restarted_operator_finds_the_prune_already_written() -> None:
    cluster = pruning_scene()
    cluster.tick()
    written = copy.deepcopy(cluster.job(3))
    events = list(cluster.fake.events)
    cluster.restart()
    cluster.tick()
    cluster.tick()
    assert cluster.job(3) == written
    assert cluster.fake.events == events
    assert cluster.pruned_total() == 1
    assert cluster.rows()[name(3)]["phase"] == "Pruned"


def test_calibration_trials_are_never_pruned() -> None:
    spec = FineTuneSweepSpec.model_validate(
        {**sweep_manifest(trials=4)["spec"], "pruning": {**PRUNING, "calibrationTrials": 1}}
    )
    calibration = [trial.index for trial in plan(SWEEP, spec)[0] if trial.calibration]
    assert len(calibration) == 1
    cluster = pruning_scene(calibration_trials=1, bad=calibration[0])
    before = copy.deepcopy(cluster.job(calibration[0]))
    cluster.tick()
    assert cluster.job(calibration[0])["status"] == before["status"]
    assert cluster.sweep_events("TrialPruned") == []
    assert cluster.pruned_total() == 0
    row = cluster.rows()[name(calibration[0])]
    assert (row["phase"], row["calibration"]) == ("Running", True)


def test_a_trial_that_ended_meanwhile_is_not_rewritten_by_a_late_verdict() -> None:
    """The index still shows the losing trial Running; on the server it has just Succeeded: the resourceVersion-
    guarded write fails, the fresh read shows it ended, nothing is written."""
    cluster = pruning_scene()
    stale = {job_name: copy.deepcopy(job) for (_, job_name), job in cluster.fake.jobs.items()}
    cluster.finish(3, 100)
    ended = copy.deepcopy(cluster.job(3)["status"])
    cluster.tick(lambda namespace, job_name: copy.deepcopy(stale.get(job_name)))
    assert cluster.job(3)["status"] == ended
    assert cluster.sweep_events("TrialPruned") == []
    assert cluster.pruned_total() == 0
    assert not [e for e in cluster.fake.events if e[0] == name(3)]


# --- status -------------------------------------------------------------------------------------------------------

EARLY = [1.0, 2.0, 3.0, 4.0, 5.0]  # trial i's loss over steps 1..10: its rung-10 score
LATE = [0.5, 0.4, 0.3, 0.2, 0.1]  # its loss over steps 11..30 (anti-correlated with EARLY: best score, worst end)
SECONDS = [60, 120, 180, 240, 300]
LAST_FIVE = [1.0, 0.9, 0.3, -0.05, 0.02]  # steps 26..30 around the late loss: median +0.3, unlike the last step's


@pytest.mark.parametrize(("late", "predictive"), [(LATE, False), (LATE[::-1], True)], ids=["anti", "correlated"])
def test_the_status_reports_best_trial_cost_and_whether_the_score_predicts(late: list[float], predictive: bool) -> None:
    cluster = Cluster(sweep_manifest(trials=5, maxParallelTrials=5))
    cluster.tick()
    for index in range(5):
        tail = [late[index]] * 15 + [late[index] + offset for offset in LAST_FIVE]
        cluster.table[name(index)] = losses((10, EARLY[index]), (20, tail))
        cluster.finish(index, SECONDS[index])
    cluster.tick()
    status = cluster.status()
    objectives = [median([v + offset for offset in LAST_FIVE]) for v in late]  # steps 26..30
    assert objectives == pytest.approx([v + 0.3 for v in late])
    best = min(range(5), key=lambda i: objectives[i])
    assert (status["phase"], status["trialsTotal"], status["running"], status["succeeded"], status["pruned"]) == (
        "Succeeded",
        5,
        0,
        5,
        0,
    )
    assert status["bestTrial"] == name(best)
    assert status["bestObjective"] == pytest.approx(objectives[best])
    assert status["bestCheckpoint"] == f"/output/{name(best)}/final"
    assert [row["objective"] for row in status["trials"]] == pytest.approx(objectives)
    assert status["gpuSeconds"] == sum(SECONDS) * GPUS_PER_NODE
    assert status["gpuSecondsSaved"] == 0
    assert [row["gpuSeconds"] for row in status["trials"]] == [s * GPUS_PER_NODE for s in SECONDS]
    assert [row["scores"][0] for row in status["trials"]] == [{"step": 10, "score": repr(e)} for e in EARLY]
    correlation = status["scoreObjectiveCorrelation"]
    assert (correlation["rho"], correlation["trials"], correlation["rung"]) == (1.0 if predictive else -1.0, 5, 10)
    condition = {c["type"]: c for c in status["conditions"]}["ScoreNotPredictive"]
    assert condition["status"] == ("False" if predictive else "True")
    assert condition["reason"] == ("ScorePredictive" if predictive else "ScoreNotPredictive")


def test_no_claim_on_the_score_before_four_trials_finished() -> None:
    cluster = Cluster(sweep_manifest(trials=5, maxParallelTrials=5, pruning={**PRUNING, "algorithm": "none"}))
    cluster.tick()
    for index in range(5):
        cluster.table[name(index)] = losses((10, EARLY[index]), (20, LATE[index]))
        if index < 3:
            cluster.finish(index, 60)
        else:
            cluster.run(index, 60, step=30)
    cluster.tick()
    status = cluster.status()
    assert status["scoreObjectiveCorrelation"]["trials"] == 3
    assert "ScoreNotPredictive" not in {c["type"] for c in status.get("conditions") or []}
    assert (status["phase"], status["running"], status["succeeded"]) == ("Running", 2, 3)
    # A running trial is counted at its rate so far, to now.
    assert status["gpuSeconds"] == 5 * 60 * GPUS_PER_NODE
    assert status["bestTrial"] == name(2)  # the lowest final loss among the finished (0.3)


def test_a_pruned_trials_saving_is_projected_from_its_own_rate() -> None:
    cluster = pruning_scene()
    cluster.tick()
    status = cluster.status()
    used = 3 * 300 * GPUS_PER_NODE + 100 * GPUS_PER_NODE  # three finished trials, the pruned one until now
    saved = (100 * GPUS_PER_NODE) / 10 * (100 - 10)  # its device-seconds per step x the 90 steps it did not run
    assert status["gpuSeconds"] == used
    assert status["gpuSecondsSaved"] == saved
    assert status["savedPercent"] == f"{round(100 * saved / (used + saved))}%"
    assert status["savedPercent"] == "47%"
    assert status["bestTrial"] == name(0)  # objective 0.5 = 1.0 / 2


def test_phase_goes_pending_running_succeeded_with_an_event_each() -> None:
    cluster = Cluster(sweep_manifest(trials=2, maxParallelTrials=2))
    cluster.tick()
    assert cluster.status()["phase"] == "Pending"
    cluster.run(0, 10)
    cluster.tick()
    assert cluster.status()["phase"] == "Running"
    cluster.finish(0, 10)
    cluster.finish(1, 10, phase="Failed")
    cluster.table[name(0)] = losses((10, 1.0))
    cluster.tick()
    assert cluster.status()["phase"] == "Succeeded"
    phases = [(e[1], e[2]) for e in cluster.sweep_events() if e[2] in {"Pending", "Running", "Succeeded", "Failed"}]
    assert phases == [("Normal", "Pending"), ("Normal", "Running"), ("Normal", "Succeeded")]
    writes = cluster.fake.calls.count("patch_sweep_status")
    cluster.tick()
    assert cluster.fake.calls.count("patch_sweep_status") == writes  # nothing changed, nothing written


def test_phase_is_failed_when_every_trial_ended_without_success() -> None:
    cluster = Cluster(sweep_manifest(trials=2, maxParallelTrials=2))
    cluster.tick()
    cluster.finish(0, 10, phase="Failed")
    cluster.finish(1, 10, phase="EarlyStopped")
    cluster.tick()
    status = cluster.status()
    assert status["phase"] == "Failed"
    assert "bestTrial" not in status
    assert ("Warning", "Failed") in [(e[1], e[2]) for e in cluster.sweep_events()]


# --- suspend ------------------------------------------------------------------------------------------------------


def test_suspend_reaches_every_unfinished_trial_and_resume_starts_trials_again() -> None:
    cluster = Cluster(sweep_manifest(trials=4, maxParallelTrials=2))
    cluster.tick()
    cluster.run(1, 10)
    cluster.finish(0, 10)
    cluster.fake.edit_sweep_spec(NS, SWEEP, {"suspend": True})
    cluster.tick()
    assert cluster.trials() == [name(0), name(1)]  # a free slot, yet nothing new starts
    assert cluster.job(1)["spec"]["suspend"] is True
    assert cluster.job(1)["metadata"]["generation"] == 2
    assert cluster.job(0)["spec"].get("suspend") is False  # ended: left alone
    assert cluster.job(0)["metadata"]["generation"] == 1
    assert cluster.status()["phase"] == "Suspended"
    patches = cluster.fake.calls.count("patch_job")
    cluster.tick()
    assert cluster.fake.calls.count("patch_job") == patches  # already suspended: not patched again
    cluster.fake.edit_sweep_spec(NS, SWEEP, {"suspend": False})
    cluster.tick()
    assert cluster.job(1)["spec"]["suspend"] is False
    assert cluster.trials() == [name(0), name(1), name(2)]
    assert cluster.job(2)["spec"].get("suspend") is False
    assert cluster.status()["phase"] == "Running"


# --- finished trials deleted -------------------------------------------------------------------------------------


def delete_trials(cluster: Cluster, *indices: int) -> None:
    """`kubectl delete finetunejob` of trials (their children go by garbage collection)."""
    for index in indices:
        del cluster.fake.jobs[(NS, name(index))]


TABLE_KEYS = ("phase", "pruned", "succeeded", "trialsTotal", "gpuSeconds", "gpuSecondsSaved", "bestTrial")


@pytest.mark.parametrize("curves_kept", [True, False], ids=["curves-in-prometheus", "curves-expired"])
def test_deleting_ended_trials_runs_none_again_and_keeps_their_results(curves_kept: bool) -> None:
    cluster = pruning_scene()
    cluster.tick()
    before = cluster.status()
    assert before["pruned"] == 1, before
    assert before["gpuSecondsSaved"] > 0, before
    delete_trials(cluster, 0, 1, 2, 3)
    if not curves_kept:
        cluster.table.clear()  # past Prometheus' retention
    cluster.restart()  # a fresh process: nothing cached, only the cluster and the sweep's status
    cluster.tick()
    cluster.tick()
    assert cluster.trials() == [], "a finished trial was created again"
    after = cluster.status()
    assert {key: after.get(key) for key in TABLE_KEYS} == {key: before.get(key) for key in TABLE_KEYS}
    assert after["bestObjective"] == pytest.approx(before["bestObjective"])
    for row_before, row_after in zip(before["trials"], after["trials"], strict=True):
        assert row_after == row_before
    assert cluster.rows()[name(3)]["gpuSecondsSaved"] == before["gpuSecondsSaved"]
    assert not cluster.sweep_events("TrialCreated")[4:], "only the four first creations"


def test_a_deleted_failed_trial_is_run_again() -> None:
    cluster = Cluster(sweep_manifest(trials=2, maxParallelTrials=2))
    cluster.tick()
    cluster.finish(0, 60, phase="Failed")
    cluster.finish(1, 60)
    cluster.tick()
    assert cluster.rows()[name(0)]["phase"] == "Failed"
    delete_trials(cluster, 0, 1)
    cluster.tick()
    assert cluster.trials() == [name(0)], "the failed trial comes back (a retry), the succeeded one does not"
    rows = cluster.rows()
    assert (rows[name(0)]["phase"], rows[name(1)]["phase"]) == ("Pending", "Succeeded")


def test_a_kept_result_is_for_the_same_parameters_only() -> None:
    cluster = Cluster(sweep_manifest(trials=2, maxParallelTrials=2))
    cluster.tick()
    cluster.finish(0, 60)
    cluster.finish(1, 60)
    cluster.tick()
    delete_trials(cluster, 0, 1)
    edited = [{"path": "training.learningRate", "values": [RATES[0], 9e-5]}]  # trial 1 is another recipe now
    cluster.fake.edit_sweep_spec(NS, SWEEP, {"parameters": edited})
    cluster.tick()
    assert cluster.trials() == [name(1)]
    assert cluster.job(1)["spec"]["training"]["learningRate"] == 9e-5
    assert cluster.rows()[name(0)]["phase"] == "Succeeded"


def test_deleted_trials_still_count_against_the_gpu_hours_budget() -> None:
    cluster = Cluster(sweep_manifest(trials=3, maxParallelTrials=1, gpuHoursBudget=0.1))  # 360 device-seconds
    cluster.tick()
    cluster.finish(0, 200)  # 400 device-seconds: spent
    cluster.tick()
    delete_trials(cluster, 0)
    cluster.tick()
    assert cluster.trials() == []
    assert cluster.status()["gpuSeconds"] == 200 * GPUS_PER_NODE


# --- budget -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "starts"), [(100, True), (200, False)], ids=["under", "spent"])
def test_no_trial_starts_once_the_gpu_hours_budget_is_spent(seconds: int, starts: bool) -> None:
    budget_hours = 0.1  # 360 device-seconds; the trial used seconds x 2 GPUs
    cluster = Cluster(sweep_manifest(trials=3, maxParallelTrials=1, gpuHoursBudget=budget_hours))
    cluster.tick()
    cluster.finish(0, seconds)
    cluster.tick()
    assert (name(1) in cluster.trials()) is starts
    assert cluster.status()["gpuSeconds"] == seconds * GPUS_PER_NODE


def test_a_sweep_stopped_by_its_budget_ends_when_its_trials_have() -> None:
    cluster = Cluster(sweep_manifest(trials=3, maxParallelTrials=1, gpuHoursBudget=0.1))
    cluster.tick()
    cluster.table[name(0)] = losses((10, 1.0))
    cluster.finish(0, 200)
    cluster.tick()
    cluster.tick()
    assert cluster.trials() == [name(0)]
    assert cluster.status()["running"] == 0
    assert cluster.status()["phase"] != "Running"


# --- invalid sweeps -----------------------------------------------------------------------------------------------


def test_an_unknown_parameter_path_fails_the_sweep_once_per_generation() -> None:
    manifest = sweep_manifest()
    manifest["spec"]["parameters"] = [{"path": "training.nope", "values": [1, 2]}]
    cluster = Cluster(manifest)
    cluster.tick()
    assert cluster.trials() == []
    assert "create_job" not in cluster.fake.calls
    status = cluster.status()
    assert (status["phase"], status["observedGeneration"]) == ("Failed", 1)
    invalid = {c["type"]: c for c in status["conditions"]}["InvalidSpec"]
    assert invalid["status"] == "True"
    assert "spec.parameters[0].path" in invalid["message"]
    assert "nope" in invalid["message"]
    events = cluster.sweep_events("InvalidSpec")
    assert [(kind, reason) for _, kind, reason, _ in events] == [("Warning", "InvalidSpec")]
    assert "spec.parameters[0].path" in events[0][3]
    cluster.tick()
    assert cluster.fake.calls.count("patch_sweep_status") == 1
    assert len(cluster.sweep_events("InvalidSpec")) == 1
    # A new generation, still invalid: reported for it.
    cluster.fake.edit_sweep_spec(NS, SWEEP, {"maxParallelTrials": 2})
    cluster.tick()
    assert cluster.status()["observedGeneration"] == 2
    assert len(cluster.sweep_events("InvalidSpec")) == 2


def test_a_sweep_the_models_reject_fails_with_the_field() -> None:
    cluster = Cluster(sweep_manifest(maxParallelTrials=9, maxTrials=4))
    cluster.tick()
    assert cluster.trials() == []
    invalid = {c["type"]: c for c in cluster.status()["conditions"]}["InvalidSpec"]
    assert "maxParallelTrials" in invalid["message"]


def test_fixing_an_invalid_sweep_clears_its_invalid_spec_condition() -> None:
    manifest = sweep_manifest(trials=2)
    manifest["spec"]["parameters"] = [{"path": "training.nope", "values": [1, 2]}]
    cluster = Cluster(manifest)
    cluster.tick()
    cluster.fake.edit_sweep_spec(NS, SWEEP, {"parameters": [{"path": "training.learningRate", "values": RATES[:2]}]})
    cluster.tick()
    status = cluster.status()
    assert cluster.trials() == [name(0), name(1)]
    assert status["phase"] == "Pending"
    assert {c["type"]: c["status"] for c in status["conditions"]}.get("InvalidSpec") != "True"


def test_a_sweep_being_deleted_is_left_alone() -> None:
    cluster = Cluster(sweep_manifest())
    body = cluster.body()
    body["metadata"]["deletionTimestamp"] = stamp(NOW)
    cluster.controller.tick([body], cluster.fake.find_job)
    assert cluster.fake.calls == []


def test_with_held_out_data_the_objective_is_the_last_eval_loss() -> None:
    data = {**TEMPLATE["data"], "evalFraction": 0.1}
    cluster = Cluster(sweep_manifest(trials=2, maxParallelTrials=2, template={**TEMPLATE, "data": data}))
    cluster.tick()
    finals = [0.7, 0.6]
    for index in range(2):
        # Train losses rank the trials the other way round: only the evals may decide.
        cluster.table[name(index)] = losses((20, 1.0 + index))
        cluster.evals[name(index)] = {10: 0.2, 20: finals[index]}
        cluster.finish(index, 60)
    cluster.tick()
    status = cluster.status()
    assert [row["objective"] for row in status["trials"]] == finals
    assert (status["bestTrial"], status["bestObjective"]) == (name(1), 0.6)


# --- defects found while writing these tests, fixed since ---------------------------------------------------------


def test_a_finished_trials_objective_is_read_from_its_whole_curve() -> None:
    cluster = Cluster(sweep_manifest(trials=1, maxParallelTrials=1))
    cluster.tick()
    cluster.table[name(0)] = losses((20, 2.0))
    cluster.run(0, 60, step=20)
    cluster.tick()  # read while running, at step 20
    cluster.table[name(0)] = losses((20, 2.0), (10, 0.5))  # it trained 10 more steps, then finished
    cluster.finish(0, 90)
    cluster.tick()
    assert cluster.rows()[name(0)]["objective"] == 0.5  # the median of steps 26..30


def test_a_suspended_trial_uses_no_gpu_seconds() -> None:
    cluster = Cluster(sweep_manifest(trials=2, maxParallelTrials=1))
    cluster.tick()
    cluster.run(0, 100)
    cluster.fake.edit_sweep_spec(NS, SWEEP, {"suspend": True})
    cluster.tick()
    suspended = {
        "type": "Suspended",
        "status": "True",
        "reason": "JobSuspended",
        "message": "",
        "lastTransitionTime": stamp(cluster.clock.now),
    }
    cluster.set_status(0, phase="Suspended", conditions=[suspended])  # what the status mirror writes (the child's)
    cluster.tick()
    used = cluster.status()["gpuSeconds"]
    assert used == 100 * GPUS_PER_NODE
    cluster.clock.now += timedelta(hours=1)
    cluster.tick()
    assert cluster.status()["gpuSeconds"] == used


def test_a_restarted_operator_does_not_report_an_invalid_generation_again() -> None:
    manifest = sweep_manifest()
    manifest["spec"]["parameters"] = [{"path": "training.nope", "values": [1, 2]}]
    cluster = Cluster(manifest)
    cluster.tick()
    cluster.restart()
    cluster.tick()
    assert len(cluster.sweep_events("InvalidSpec")) == 1
    assert cluster.fake.calls.count("patch_sweep_status") == 1


def test_one_failing_sweep_does_not_stop_the_others() -> None:
    cluster = Cluster(sweep_manifest(trials=2, maxParallelTrials=1))
    other = {**sweep_manifest(trials=2, maxParallelTrials=1), "metadata": {"name": "other"}}
    cluster.fake.add_sweep(other, NS)

    def read(ctx: Context, trial: PlannedTrial, job: dict[str, Any]) -> Curve | None:
        if trial.name.startswith(f"{SWEEP}-"):
            raise RuntimeError("unexpected answer from Prometheus")
        return None

    cluster.controller = SweepController(cluster.ctx, read_curve=read)

    def bodies() -> list[dict[str, Any]]:
        return [cluster.body(), cast(dict[str, Any], cluster.fake.get_sweep(NS, "other"))]

    cluster.controller.tick(bodies(), cluster.fake.find_job)
    assert (NS, "other-t0") in cluster.fake.jobs
    cluster.run(0, 10)
    cluster.fake.patch_job_status(NS, "other-t0", {"phase": "Succeeded"}, None)
    cluster.controller.tick(bodies(), cluster.fake.find_job)  # sw's reader fails before other is reached
    assert (NS, "other-t1") in cluster.fake.jobs
