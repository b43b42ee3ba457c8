#!/usr/bin/env bash
# The main job on a fresh machine: install what the demo needs, then run it (memory store, no config).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade "pip>=25.1" >/dev/null
python -m pip install -q -e ".[httpx]" >/dev/null
exec python -m ratesync_http.demo "$@"
