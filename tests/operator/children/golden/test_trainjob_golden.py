"""Golden files: the full TrainJob (Kubeflow Trainer v2.3) for representative FineTuneJobs, and the
ClusterTrainingRuntime they name, reviewed as YAML.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/operator/children/golden` and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finetune_operator.children.trainjob import render_trainjob, runtime_manifest
from tests.manifests import REPO_ROOT
from tests.operator.children.golden.test_render_golden import check_golden

HERE = Path(__file__).parent
CASES = {
    "cpu-1-node": REPO_ROOT / "examples/quickstart.yaml",
    "gpu-1x8": REPO_ROOT / "examples/single-node-8gpu.yaml",
    "gpu-4x8-phased-pvc-tolerations": HERE / "inputs/multi-node-no-priority.yaml",
    "long-name-suspended-queued": HERE / "inputs/long-name-suspended-queued.yaml",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trainjob_render_matches_golden(case: str) -> None:
    check_golden(f"trainjob-{case}", render_trainjob(yaml.safe_load(CASES[case].read_text())))


def test_runtime_matches_golden() -> None:
    check_golden("clustertrainingruntime", runtime_manifest())
