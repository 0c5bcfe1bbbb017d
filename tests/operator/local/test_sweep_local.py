"""`finetune local SWEEP.yaml` as a person runs it: real `finetune` and trainer processes on the shipped data.

The sweep is examples/sweep-quickstart.yaml with its sizes cut down (few steps, first rung at step 3, 5 trials)
and two absurd learning rates last in the grid, so that by the time they reach the first rung enough peers have
scores there for the rule to judge them. Invalid sweeps are run through the real CLI entry point, in process.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_contract.checkpoints import COMPLETE_MARKER
from finetune_operator.api.sweep import TrialPhase, plan
from finetune_operator.api.validation import validate_sweep_manifest
from finetune_operator.cli import load_documents, main
from finetune_operator.local.report import RunState
from finetune_operator.local.sweep import (
    TrialRun,
    final_phase,
    local_job,
    local_problems,
    rows,
    summarize,
    summary_text,
    sweep_missing_paths,
    table_lines,
    take,
    thread_env,
)
from tests.manifests import REPO_ROOT
from tests.operator.local.test_local import PNG_SIGNATURE, environment, finetune_command

EXAMPLE = REPO_ROOT / "examples" / "sweep-quickstart.yaml"
BAD_RATES = (0.5, 1.0)
MAX_STEPS = 12
RUN_TIMEOUT = 240


def small_sweep(tmp_path: Path, **spec: Any) -> tuple[Path, dict[str, Any]]:
    """The example with an absolute data path, tiny sizes and the given spec overrides, written to tmp_path."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    template = manifest["spec"]["template"]
    for dataset in template["data"]["datasets"]:
        dataset["path"] = str((REPO_ROOT / dataset["path"]).resolve())
    template["data"]["evalFraction"] = 0.02
    template["training"].update(maxSteps=MAX_STEPS, effectiveBatchSize=16)
    manifest["spec"].update(copy.deepcopy(spec))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path, manifest


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["local", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def most_at_once(trials: list[dict[str, Any]]) -> int:
    """The most trials whose trainer ran at the same moment, from their start and end times."""
    spans = [(float(t["startedAt"]), float(t["endedAt"])) for t in trials if t["startedAt"] is not None]
    return max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)


# ------------------------------------------------------------------------------------------------ a real sweep
def test_sweep_prunes_the_absurd_rates_and_keeps_the_best(tmp_path: Path) -> None:
    sweep, _ = small_sweep(
        tmp_path,
        parameters=[{"path": "training.learningRate", "values": [1e-3, 2e-3, 3e-3, *BAD_RATES]}],
        maxTrials=5,
        maxParallelTrials=2,
        pruning={
            "firstRungStep": 3,
            "reductionFactor": 2,
            "windowSteps": 2,
            "minTrialsPerRung": 3,
            "calibrationTrials": 0,
            "score": {"metric": "evalLoss"},
        },
    )
    output = tmp_path / "out"
    command = finetune_command("local", str(sweep), "--output", str(output))
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=environment(), timeout=RUN_TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads((output / "sweep-summary.json").read_text())
    trials = {trial["parameters"]["training.learningRate"]: trial for trial in summary["trials"]}
    assert len(trials) == 5

    for rate in BAD_RATES:
        bad = trials[rate]
        assert bad["phase"] == "Pruned", bad
        assert bad["reason"] == "PrunedBySweep"
        assert "evalLoss score" in bad["message"]
        assert "at rung step 3 is worse than the rung's cutoff" in bad["message"]
        assert 3 <= bad["steps"] < MAX_STEPS
        assert bad["projectedRestSteps"] == MAX_STEPS - bad["steps"]
        checkpoint = Path(bad["checkpoint"])
        assert checkpoint == output / bad["name"] / f"checkpoint-{bad['steps']}"
        assert (checkpoint / COMPLETE_MARKER).is_file()
        assert not (output / bad["name"] / "final").exists()
        assert f"{bad['name']}: PrunedBySweep: evalLoss score" in result.stdout

    best = summary["best"]
    winner = next(trial for trial in summary["trials"] if trial["name"] == best["trial"])
    assert winner["phase"] == "Succeeded"
    assert winner["parameters"]["training.learningRate"] not in BAD_RATES
    assert winner["steps"] == MAX_STEPS
    assert best["checkpoint"] == str(output / winner["name"] / "final")
    assert (Path(best["checkpoint"]) / "model.safetensors").is_file()
    succeeded = [t["objective"] for t in summary["trials"] if t["phase"] == "Succeeded"]
    assert best["objective"] == min(succeeded)

    compute = summary["compute"]
    assert compute["optimizerSteps"] == sum(t["steps"] for t in summary["trials"])
    assert compute["optimizerStepsFullSweep"] > compute["optimizerSteps"]
    assert compute["trainerSecondsFullSweep"] > compute["trainerSeconds"] > 0
    assert 0 < compute["savedPercent"] < 100
    assert summary["correlation"]["verdict"] in {"predictive", "not predictive", "too few trials"}
    assert most_at_once(summary["trials"]) <= 2
    assert most_at_once(summary["trials"]) == 2, "two slots: the first two trials start together"

    recipe = json.loads((output / winner["name"] / "recipe.json").read_text())
    assert recipe["training"]["evalIntervalSteps"] == 3, "an evalLoss score needs an eval at every rung"
    assert (output / "sweep.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (output / "sweep.png").stat().st_size > 30_000
    assert f"best       {winner['name']}  evalLoss" in result.stdout
    assert "saved by pruning" in result.stdout


# ------------------------------------------------------------------------------------------------ invalid input
@pytest.mark.parametrize(
    ("parameters", "spec", "path", "rule"),
    [
        (
            [{"path": "training.learningRat", "values": [1e-3]}],
            {},
            "spec.parameters[0].path",
            "training has no field 'learningRat'",
        ),
        (
            [{"path": "training.learningRate", "values": [1e-3, 2e-3, -1]}],
            {},
            "spec.parameters[0].values[2]",
            "training.learningRate: Input should be greater than 0 (got -1)",
        ),
        (
            [{"path": "training.learningRate", "values": [1e-3, 2e-3, 3e-3]}],
            {"maxTrials": 2, "maxParallelTrials": 1},
            "spec.maxTrials",
            "the space defines 3 trials",
        ),
        (
            [{"path": "training.learningRate", "values": [1e-3]}],
            {"pruning": {"score": {"metric": "promql", "promql": "up"}}},
            "spec.pruning.score.metric",
            "finetune local computes scores from the trainers' records",
        ),
    ],
    ids=["unknown-path", "rejected-value", "too-many-trials", "promql-score"],
)
def test_invalid_sweep_exits_2_before_any_trial(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    parameters: list[dict[str, Any]],
    spec: dict[str, Any],
    path: str,
    rule: str,
) -> None:
    sweep, _ = small_sweep(tmp_path, parameters=parameters, **spec)
    output = tmp_path / "out"
    code, out, err = run_cli(capsys, str(sweep), "--output", str(output))
    assert code == 2, err
    assert f"{sweep}: {path}: {rule}" in err
    assert out == ""
    assert not output.exists(), "no trial starts when any trial is invalid"


def test_a_sweep_schema_error_names_the_sweep_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, _ = small_sweep(tmp_path, maxParallelTrials="2")
    code, _, err = run_cli(capsys, str(sweep), "--output", str(tmp_path / "out"))
    assert code == 2
    assert f"{sweep}: spec.maxParallelTrials: Input should be a valid integer (got '2')" in err


# ------------------------------------------------------------------------------------------------ the example
def test_the_example_validates_and_plans_at_least_8_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the example's data path is relative to the repository root, as documented
    (document,), source = load_documents(str(EXAMPLE))
    sweep = validate_sweep_manifest(document, source)
    trials, problems = plan(sweep.metadata.name, sweep.spec)
    assert problems == []
    assert len(trials) >= 8
    assert local_problems(sweep.spec, source) == []
    rates = {trial.spec.training.learning_rate for trial in trials}
    assert max(rates) >= 0.1, "the example shows pruning: it includes clearly bad learning rates"
    assert sweep.spec.max_parallel_trials == 2
    jobs = [(trial, local_job(sweep, trial, Path("/tmp/out"))) for trial in trials]
    assert sweep_missing_paths(jobs, source) == []
    assert all(str(job.spec.data.cache_dir) == "/tmp/out/.cache/data" for _, job in jobs)


# ------------------------------------------------------------------------------------------------ pure parts
def test_a_trial_stopped_by_the_sweep_is_pruned_unless_it_had_finished() -> None:
    state = RunState()
    assert final_phase(0, "sweep", state) is TrialPhase.Pruned
    assert final_phase(-15, "sweep", state) is TrialPhase.Pruned
    state.add({"kind": "event", "event": "done", "step": 12})
    assert final_phase(0, "sweep", state) is TrialPhase.Succeeded
    assert final_phase(0, "policy", RunState()) is TrialPhase.EarlyStopped
    assert final_phase(-15, "user", RunState()) is TrialPhase.Suspended
    assert final_phase(3, None, RunState()) is TrialPhase.Failed


def test_parallel_trainers_share_the_cores() -> None:
    assert thread_env({}, 2, 2) == {"OMP_NUM_THREADS": "1"}
    assert thread_env({}, 2, 16) == {"OMP_NUM_THREADS": "8"}
    assert thread_env({}, 4, 2) == {"OMP_NUM_THREADS": "1"}
    assert thread_env({"OMP_NUM_THREADS": "3"}, 2, 2) == {"OMP_NUM_THREADS": "3"}


def step(number: int, loss: float, when: float, total: int = 4) -> dict[str, Any]:
    return {"kind": "step", "step": number, "total_steps": total, "loss": loss, "grad_norm": 1.0, "time": when}


def test_summary_projects_a_pruned_trial_at_its_own_step_rate(tmp_path: Path) -> None:
    """The full sweep's cost adds what the pruned trial would still have run, at its rate between steps (2 s),
    not at its wall time per step so far (which includes setup)."""
    sweep = validate_sweep_manifest(yaml.safe_load(EXAMPLE.read_text()))
    trials, _ = plan(sweep.metadata.name, sweep.spec)
    done, pruned = (TrialRun(trial, local_job(sweep, trial, tmp_path), tmp_path / trial.name) for trial in trials[:2])
    for number in range(1, 5):
        take(done, step(number, 5.0 - number / 2, 100.0 + number), [])
    assert take(done, {"kind": "eval", "step": 4, "eval_loss": 3.0}, []) == (True, None)
    for number in range(1, 3):
        take(pruned, step(number, 6.0, 200.0 + 2 * number), [])
    done.phase, done.seconds, done.started_at = TrialPhase.Succeeded, 10.0, 1.0
    pruned.phase, pruned.seconds, pruned.started_at = TrialPhase.Pruned, 6.0, 1.0
    summary = summarize(sweep, [done, pruned], tmp_path, interrupted=False, wall_seconds=20.0)
    assert (summary.best_trial, summary.best_objective) == (done.name, 3.0)
    assert (summary.trainer_seconds, summary.trainer_seconds_full) == (16.0, 20.0)
    assert (summary.steps, summary.steps_full) == (6, 8)
    assert summary.exit_code == 0
    assert summary.rho_verdict == "too few trials"
    assert summary.trials[1].objective is None, "a pruned trial's loss so far is not an objective"
    text = summary_text(summary)
    assert "16 trainer-s of ~20 for the full sweep (20% saved by pruning); 6 of 8 optimizer steps" in text
    header, first, second = table_lines(rows([done, pruned], {done.name: {4: 4.1}, pruned.name: {}}))
    assert header.split() == ["trial", "parameters", "phase", "step", "loss", "rung", "score"]
    assert first.split()[-5:] == ["Succeeded", "4/4", "3", "4.1", "@4"]
    assert second.split()[-4:] == ["Pruned", "2/4", "6", "-"]
    assert first.index("Succeeded") == second.index("Pruned"), "columns are aligned"
