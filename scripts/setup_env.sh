#!/usr/bin/env bash
# Create .venv if missing and install sslsearch into it (editable). Usage: scripts/setup_env.sh [EXTRAS]
# Sourced by quickstart.sh and test.sh; idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($python --version 2>&1)" >&2
  "$python" -m venv .venv
fi
stamp=".venv/.sslsearch-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing sslsearch${extras:+[$extras]} into .venv (first time: torch is a few GB, ~2 min)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}" >&2
  touch "$stamp"
fi
