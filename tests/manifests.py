"""Manifest builders shared by the unit, golden and cluster tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))


def minimal_job(name: str = "job", **spec_overrides: Any) -> dict[str, Any]:
    """The smallest valid FineTuneJob manifest; keyword arguments replace whole spec sections."""
    spec: dict[str, Any] = {
        "model": {"name": "ibm-granite/granite-3.1-2b-base"},
        "data": {"datasets": [{"path": "/data/train.jsonl"}]},
    }
    spec.update(copy.deepcopy(spec_overrides))
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
