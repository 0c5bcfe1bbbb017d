#!/usr/bin/env bash
# The one test command: sets up a fresh machine (Python venv with pinned deps, the local Kubernetes control
# plane built from Go modules) and runs every check — ruff, mypy, CRD drift, the whole pytest suite.
# Re-running is cheap: installs and builds are skipped when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool missing: install the Debian package prometheus (as root: apt-get install prometheus)" >&2
  fi
fi

PYTHON="$PYTHON" VENV="$VENV" scripts/setup.sh  # the Python venv, shared with scripts/quickstart.sh
export PATH="$PWD/$VENV/bin:$PATH"

step "checkov (own venv: it pins packaging<24, which conflicts with constraints.txt)"
CHECKOV_VENV="$HOME/.cache/finetune-operator/checkov-venv"
if [ ! -x "$CHECKOV_VENV/bin/checkov" ]; then
  "$PYTHON" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install --quiet checkov==3.3.30
fi
export CHECKOV="$CHECKOV_VENV/bin/checkov"
# Nothing in the tests may reach a model hub: tiny models are built from configs, tokenizers locally.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

if [ -x tests/cluster/build.sh ] && [ "${FINETUNE_SKIP_CLUSTER_BUILD:-0}" != 1 ]; then
  step "Kubernetes control plane binaries (tests/cluster/build.sh)"
  tests/cluster/build.sh
  step "Kubeflow Trainer v2 and JobSet binaries (tests/cluster/build_trainer.sh)"
  tests/cluster/build_trainer.sh
fi

step "ruff"
ruff check .
ruff format --check .

step "mypy"
mypy

step "generated CRD is fresh"
python -m finetune_operator.api.crd --check

step "pytest"
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
