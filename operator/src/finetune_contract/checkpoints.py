"""The checkpoint layout in a run's output directory, and finding the newest complete checkpoint.

`checkpoint-<step>/` holds one complete checkpoint once its `COMPLETE` marker exists (the trainer writes under a
temporary name and renames into place, so a pod killed mid-write never leaves a "newest" checkpoint that cannot
load); `final/` holds the finished model. The trainer writes this layout; the trainer's resume and `finetune
local` read it with these functions, so both always agree which checkpoint is the newest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CHECKPOINT_PREFIX: Final = "checkpoint-"
CHECKPOINT_PATTERN: Final = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
COMPLETE_MARKER: Final = "COMPLETE"
FINAL_DIR: Final = "final"
METRICS_FILE: Final = "metrics.jsonl"
"""The per-step records (see records.py), one JSON object per line, next to the checkpoints."""


@dataclass(frozen=True)
class ResumePoint:
    """Where training continues: the optimizer step already completed, and the directory it came from."""

    step: int
    path: Path


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first; incomplete or temporary directories are ignored."""
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> ResumePoint | None:
    """The newest COMPLETE checkpoint, or None."""
    found = checkpoint_dirs(output_dir)
    return ResumePoint(*found[-1]) if found else None
