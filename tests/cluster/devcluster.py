"""Bring the test control plane up and leave it running for manual kubectl/helm use, or stop it.

    python tests/cluster/devcluster.py up       # prints the kubeconfig path (or: python -m tests.cluster.devcluster)
    python tests/cluster/devcluster.py status
    python tests/cluster/devcluster.py down

The cluster (state, logs, kubeconfig) lives in $FINETUNE_CLUSTER_CACHE/dev; the binaries come from
tests/cluster/build.sh. Its processes are detached from this command, and `down` finds them again
through state.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, for script use

from tests.cluster.controlplane import CACHE, ClusterError, missing_artifacts, remove_if_unchanged, start_gpu_cluster
from tests.cluster.processes import Process, stop_all

STATE_DIR = CACHE / "dev"


def _state() -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((STATE_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state


def _recorded() -> list[Process]:
    return [Process.from_json(item) for item in _state().get("processes", [])]


def _print_usage_hint() -> None:
    kubeconfig = STATE_DIR / "kubeconfig"
    print(kubeconfig)
    print(f"export KUBECONFIG={kubeconfig}; export PATH={CACHE / 'bin'}:$PATH", file=sys.stderr)


def up() -> int:
    """Start a detached cluster unless one is already running."""
    if any(proc.alive() for proc in _recorded()):
        print("already running", file=sys.stderr)
        _print_usage_hint()
        return 0
    missing = missing_artifacts()
    if missing:
        print(f"missing {', '.join(missing)} in {CACHE}: run tests/cluster/build.sh", file=sys.stderr)
        return 1
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    try:
        start_gpu_cluster(STATE_DIR, die_with_parent=False)
    except ClusterError as err:
        print(err, file=sys.stderr)
        return 1
    _print_usage_hint()
    return 0


def down() -> int:
    """Stop every recorded process (process groups) and delete the cluster's state."""
    stop_all(_recorded())
    remove_if_unchanged({Path(path): digest for path, digest in _state().get("written", {}).items()})
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    print("stopped", file=sys.stderr)
    return 0


def status() -> int:
    """Print each recorded component and whether it runs; exit 1 unless all do."""
    procs = _recorded()
    for proc in procs:
        print(f"{proc.name:24} pid {proc.pid:<8} {'running' if proc.alive() else 'NOT running'}")
    return 0 if procs and all(proc.alive() for proc in procs) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status"))
    command = parser.parse_args(argv).command
    return {"up": up, "down": down, "status": status}[command]()


if __name__ == "__main__":
    raise SystemExit(main())
