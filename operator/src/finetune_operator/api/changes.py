"""Which spec changes a running training can take. Pure.

Everything that defines the training — model, data, training hyperparameters, resources, metrics port — is
fixed once the PyTorchJob exists: applying it would silently restart or corrupt the run, ignoring it would lie.
So the operator keeps the child as it is and says so in a SpecChangeRejected condition. suspend, earlyStopping,
queueName and recovery are applied to a running job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IMMUTABLE_SECTIONS = ("model", "data", "training", "resources", "metrics")
MUTABLE_SECTIONS = ("suspend", "earlyStopping", "queueName", "recovery")


def immutable_part(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec sections a running job cannot change (wire form, defaults included)."""
    return {section: spec[section] for section in IMMUTABLE_SECTIONS if section in spec}


def changed_paths(old: Any, new: Any, prefix: str = "spec") -> list[str]:
    """Dotted paths where `new` differs from `old` (lists compared whole, by index when same length)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        paths: list[str] = []
        for key in sorted(set(old) | set(new)):
            paths += changed_paths(old.get(key), new.get(key), f"{prefix}.{key}")
        return paths
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        paths = []
        for index, (before, after) in enumerate(zip(old, new, strict=True)):
            paths += changed_paths(before, after, f"{prefix}[{index}]")
        return paths
    return [] if old == new else [prefix]
