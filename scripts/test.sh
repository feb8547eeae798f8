#!/usr/bin/env bash
# README's test command: set up .venv with the dev extra (from nothing if needed) and run pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k store -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh dev
# The dedup report is checked in a real browser; install Debian's Chromium when we can (root + apt).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing chromium for the HTML report test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
export SSLSEARCH_NO_PROGRESS=1
# pytest exits 5 when it collects no test: that fails this script like any other failure.
exec .venv/bin/python -m pytest -q "$@"
