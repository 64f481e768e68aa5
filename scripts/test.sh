#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the whole test suite, slow tests included.
# Fast suite only: scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
