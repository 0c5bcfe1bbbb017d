#!/usr/bin/env bash
# The README's first command: sets up a fresh machine (scripts/setup.sh: Python venv, pinned deps) and trains the
# quickstart FineTuneJob here, no cluster: `finetune local examples/quickstart.yaml` — a tiny Llama built from a
# config on GSM8K from examples/data (in the repository), on CPU, in about 2 minutes on 2 cores, with live progress, early stopping,
# a summary and a plot in runs/quickstart/training.png. Extra arguments go to `finetune local` (e.g. --port 0,
# --output DIR). Nothing is downloaded at run time (HF_HUB_OFFLINE=1).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
scripts/setup.sh

printf '\n==> %s\n' "finetune local examples/quickstart.yaml"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$VENV/bin/finetune" local examples/quickstart.yaml "$@"
