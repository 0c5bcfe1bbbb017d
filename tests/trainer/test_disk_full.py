"""The disk filling up during a checkpoint write: the run fails with the OS's reason, and the previous checkpoint
stays the newest loadable one — a restart (on storage with room) resumes from it. Real: a 2.5 MiB tmpfs as the
output directory (root is needed to mount it; CI runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_contract.checkpoints import latest_checkpoint
from tests.trainer.test_trainer import events, recipe, run_env

TMPFS_BYTES = 2_560 * 1024
"""Room for the data cache (~0.45 MB), the metrics and one checkpoint of the tiny model (~1.4 MB), not two."""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def train(spec: dict[str, object], out: Path, recipe_file: Path) -> subprocess.CompletedProcess[str]:
    recipe_file.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "finetune_trainer", "--recipe", str(recipe_file)]
    return subprocess.run(command, env=run_env(out), capture_output=True, text=True, timeout=300, check=False)


def test_a_full_disk_mid_checkpoint_keeps_the_previous_one_loadable(small_disk: Path, tmp_path: Path) -> None:
    spec = recipe(maxSteps=6, checkpoint={"intervalSteps": 2, "keepLast": 5})
    failed = train(spec, small_disk, tmp_path / "recipe.json")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert "is full" in output
    assert "checkpoint-2 stays the newest complete one" in output
    newest = latest_checkpoint(small_disk)
    assert newest is not None
    assert newest.step == 2, sorted(p.name for p in small_disk.iterdir())
    assert not (small_disk / "checkpoint-4").exists()  # the half-written one never took the name

    moved = tmp_path / "bigger"
    shutil.copytree(small_disk, moved)  # the same files on storage with room, as a restart would see them
    resumed = train(spec, moved, tmp_path / "recipe.json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    starts = [event for event in events(moved) if event["event"] == "resumed"]
    assert [event["step"] for event in starts] == [2]
    assert (moved / "final" / "model.safetensors").is_file()
