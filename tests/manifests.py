"""Manifest builders shared by the unit, golden and cluster tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
SWEEP_EXAMPLES = [path for path in EXAMPLES if path.name.startswith("sweep")]
JOB_EXAMPLES = [path for path in EXAMPLES if path not in SWEEP_EXAMPLES]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
"""The shared instruction-tuning data (see its README.md); CI checks it out next to the repository."""
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
"""A Llama-style config small enough to train for a few steps on 2 CPU cores in seconds."""


SHARED_OUTPUT = {"name": "output", "claimName": "shared-output", "mountPath": "/output"}
"""A ReadWriteMany volume at the default checkpoint.outputDir, as a multi-node job must have."""


def minimal_job(name: str = "job", **spec_overrides: Any) -> dict[str, Any]:
    """The smallest valid FineTuneJob manifest; keyword arguments replace whole spec sections."""
    spec: dict[str, Any] = {
        "model": {"name": "ibm-granite/granite-3.1-2b-base"},
        "data": {"datasets": [{"path": "/data/train.jsonl"}]},
    }
    spec.update(copy.deepcopy(spec_overrides))
    resources = spec.get("resources")
    if isinstance(resources, dict) and isinstance(resources.get("nodes"), int) and resources["nodes"] > 1:
        resources.setdefault("volumes", [SHARED_OUTPUT])  # multi-node jobs need shared storage for their output
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
