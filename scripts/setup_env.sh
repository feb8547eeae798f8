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
# An install with extras includes the plain one: quickstart after test.sh installs nothing more.
if [ -z "$extras" ] && [ ! -f "$stamp" ]; then
  for other in .venv/.sslsearch-installed-*; do
    [ -f "$other" ] && ! [ pyproject.toml -nt "$other" ] && stamp="$other" && break
  done
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing sslsearch${extras:+[$extras]} into .venv (first time: torch is a few GB, ~2 min)" >&2
  log=.venv/install.log
  # pip's build-backend chatter goes to the log; on failure the log is shown
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: installing sslsearch into .venv failed (log above, also in $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
