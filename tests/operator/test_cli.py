"""The `finetune` command as a user runs it: a real process, its exit code, stdout and stderr."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune_contract import names
from finetune_operator.api.sweep import FineTuneSweep, plan
from finetune_operator.children.pytorchjob import render_pytorchjob
from finetune_operator.children.trainjob import render_trainjob, runtime_manifest
from tests.invalid_cases import CASES
from tests.manifests import JOB_EXAMPLES, REPO_ROOT, SWEEP_EXAMPLES, minimal_job


def finetune(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (falling back to the module when not on PATH)."""
    exe = shutil.which("finetune", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "finetune_operator.cli"]
    return subprocess.run([*command, *args], input=stdin, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)


def test_render_prints_one_pytorchjob_per_example() -> None:
    result = finetune("render", *map(str, JOB_EXAMPLES))
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert len(documents) == len(JOB_EXAMPLES)
    for document, example in zip(documents, JOB_EXAMPLES, strict=True):
        assert document["kind"] == "PyTorchJob"
        assert document == render_pytorchjob(yaml.safe_load(example.read_text()))


def test_render_trainjob_backend_and_its_runtime() -> None:
    result = finetune("render", "--backend", "trainjob", "--runtime", "team-runtime", "examples/quickstart.yaml")
    assert result.returncode == 0, result.stderr
    (document,) = yaml.safe_load_all(result.stdout)
    assert document == render_trainjob(
        yaml.safe_load((REPO_ROOT / "examples/quickstart.yaml").read_text()), runtime="team-runtime"
    )
    runtime = finetune("runtime", "--name", "team-runtime", "--image", "registry.example/trainer:2")
    assert runtime.returncode == 0, runtime.stderr
    assert yaml.safe_load(runtime.stdout) == runtime_manifest("team-runtime", "registry.example/trainer:2")


def test_a_bad_runtime_name_is_refused_naming_the_rule() -> None:
    for args in (["runtime", "--name", "Bad Name"], ["render", "--backend", "trainjob", "--runtime", "x y", "-"]):
        result = finetune(*args, stdin="")
        assert result.returncode == 2, args
        assert "is not a valid ClusterTrainingRuntime name (lowercase letters" in result.stderr
        assert "Traceback" not in result.stderr


def test_render_trainjob_refuses_what_a_trainjob_cannot_carry_by_field() -> None:
    job = minimal_job("urgent", resources={"priorityClassName": "high"})
    result = finetune("render", "--backend", "trainjob", "-", stdin=yaml.safe_dump(job))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "FineTuneJob default/urgent: spec.resources.priorityClassName: cannot be set on a TrainJob" in result.stderr
    assert "(got 'high')" in result.stderr
    assert "Traceback" not in result.stderr


def test_render_reads_stdin() -> None:
    result = finetune("render", "-", stdin=yaml.safe_dump(minimal_job("from-stdin")))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["metadata"]["name"] == "from-stdin"


def test_crd_prints_the_committed_crds() -> None:
    result = finetune("crd")
    assert result.returncode == 0
    committed = [(REPO_ROOT / name).read_text() for name in ("crds/finetunejob.yaml", "crds/finetunesweep.yaml")]
    assert result.stdout == "---\n".join(committed)
    assert [doc["spec"]["names"]["kind"] for doc in yaml.safe_load_all(result.stdout)] == [
        "FineTuneJob",
        "FineTuneSweep",
    ]


@pytest.mark.parametrize("case", CASES[:8] + [case for case in CASES if not case.server], ids=lambda case: case.id)
def test_invalid_input_exits_2_with_field_and_rule(case, tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(case.manifest))
    result = finetune("render", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}: {case.path}: " in result.stderr
    assert case.message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("spec: [unclosed\n", "invalid YAML"),
        ("", "no FineTuneJob document found"),
        ("- 1\n- 2\n", "a FineTuneJob must be a mapping"),
    ],
)
def test_unusable_files_exit_2(content: str, expected: str, tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(content)
    result = finetune("validate", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_exits_2() -> None:
    result = finetune("render", "does-not-exist.yaml")
    assert result.returncode == 2
    assert "does-not-exist.yaml" in result.stderr
    assert "No such file" in result.stderr


def test_validate_reports_valid_files() -> None:
    result = finetune("validate", str(JOB_EXAMPLES[0]))
    assert result.returncode == 0
    assert "is valid" in result.stdout


@pytest.mark.parametrize("example", SWEEP_EXAMPLES, ids=lambda path: path.name)
def test_render_prints_every_trial_of_a_sweep(example: Path) -> None:
    """A FineTuneSweep renders as its trial FineTuneJobs, in index order, each one a valid FineTuneJob that
    `finetune render` turns into a PyTorchJob in turn."""
    result = finetune("render", str(example))
    assert result.returncode == 0, result.stderr
    trials = list(yaml.safe_load_all(result.stdout))
    source = yaml.safe_load(example.read_text())
    planned, problems = plan(source["metadata"]["name"], FineTuneSweep.model_validate(source).spec)
    assert problems == []
    assert [trial["metadata"]["name"] for trial in trials] == [trial.name for trial in planned]
    assert [trial["metadata"]["labels"][names.TRIAL_INDEX_LABEL] for trial in trials] == [
        str(index) for index in range(len(planned))
    ]
    assert {trial["kind"] for trial in trials} == {"FineTuneJob"}
    again = finetune("render", "-", stdin=yaml.safe_dump_all(trials))
    assert again.returncode == 0, again.stderr
    assert [child["kind"] for child in yaml.safe_load_all(again.stdout)] == ["PyTorchJob"] * len(trials)
    validated = finetune("validate", str(example))
    assert validated.returncode == 0, validated.stderr
    assert f"FineTuneSweep default/{source['metadata']['name']} is valid ({len(planned)} trials)" in validated.stdout


def test_render_refuses_a_sweep_with_a_bad_value_naming_its_path(tmp_path: Path) -> None:
    sweep = yaml.safe_load(SWEEP_EXAMPLES[0].read_text())
    sweep["spec"]["parameters"][0]["values"].append(-1)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    result = finetune("render", str(path))
    assert result.returncode == 2
    position = len(sweep["spec"]["parameters"][0]["values"]) - 1
    assert f"spec.parameters[0].values[{position}]" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
