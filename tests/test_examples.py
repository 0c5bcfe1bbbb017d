"""What a user runs from a fresh clone needs nothing outside the repository: every example's data is in it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.manifests import EXAMPLES, REPO_ROOT


def local_paths(job: dict) -> list[str]:
    """Dataset paths of a FineTuneJob, stacked and phased, that are relative (read from where the user runs)."""
    spec = job["spec"]
    datasets = list(spec.get("data", {}).get("datasets", []))
    for phase in spec.get("training", {}).get("phases", []):
        datasets += phase.get("datasets", [])
    return [d["path"] for d in datasets if "path" in d and not d["path"].startswith("/")]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_relative_data_paths_stay_inside_the_repository_and_exist(example: Path) -> None:
    job = yaml.safe_load(example.read_text())
    for path in local_paths(job):
        resolved = (REPO_ROOT / path).resolve()
        assert REPO_ROOT in resolved.parents, f"{example.name}: {path} is outside the repository"
        assert resolved.is_file(), f"{example.name}: {path} does not exist"


def test_shipped_data_carries_its_license_and_provenance() -> None:
    data = REPO_ROOT / "examples" / "data"
    for folder in (path for path in data.iterdir() if path.is_dir()):
        assert (folder / "LICENSE").is_file(), folder
    readme = (data / "README.md").read_text()
    for file in data.rglob("*.jsonl"):
        assert str(file.relative_to(data)) in readme, f"{file} has no provenance row in examples/data/README.md"
