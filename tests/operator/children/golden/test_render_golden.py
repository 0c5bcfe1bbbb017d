"""Golden files: the full PyTorchJob for representative FineTuneJobs, reviewed as YAML.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/operator/children/golden` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator.children.pytorchjob import render_pytorchjob
from tests.manifests import REPO_ROOT

HERE = Path(__file__).parent
CASES = {
    "cpu-1-node": REPO_ROOT / "examples/quickstart.yaml",
    "gpu-1x8": REPO_ROOT / "examples/single-node-8gpu.yaml",
    "gpu-4x8-phased-pvc-tolerations": REPO_ROOT / "examples/multi-node-phased.yaml",
    "long-name-suspended-queued": HERE / "inputs/long-name-suspended-queued.yaml",
}


def check_golden(name: str, manifest: dict[str, Any]) -> None:
    """The rendered manifest as YAML equals expected/<name>.yaml (UPDATE_GOLDEN=1 rewrites it)."""
    rendered = yaml.safe_dump(manifest, sort_keys=False, width=120)
    golden = HERE / "expected" / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.is_file(), f"missing {golden}; run UPDATE_GOLDEN=1 pytest tests/operator/children/golden"
    assert rendered == golden.read_text(), f"{name}: render changed; review and regenerate with UPDATE_GOLDEN=1"


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden(case: str) -> None:
    check_golden(case, render_pytorchjob(yaml.safe_load(CASES[case].read_text())))
