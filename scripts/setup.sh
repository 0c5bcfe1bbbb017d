#!/usr/bin/env bash
# Sets up this machine for the project: a Python venv ($VENV, default .venv) with the operator, the trainer and
# the dev tools installed from pinned versions (constraints.txt). Shared by scripts/quickstart.sh and
# scripts/test.sh so both run on exactly the same environment. Re-running is cheap: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

printf '\n==> %s\n' "Python environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -c constraints.txt -e ".[dev,trainer,bench]"
