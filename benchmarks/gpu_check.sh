#!/usr/bin/env bash
# One prepared check for a lent GPU (issue 11): the GPU-marked tests, then the vs_sampling, solver and compiled
# benchmark sections in bf16 on SmolLM2-135M's architecture. Results go under $OUT (or ./gpu_check_out).
#
# On the GPU machine (repository root; nothing is fetched from the network there):
#     bash benchmarks/gpu_check.sh
# It finishes inside ~8 minutes: each step has its own time limit, and a step that fails or runs out of time
# is recorded in $OUT/summary.txt while the later steps still run.
#
# Packages: the machine's python3 already has torch, transformers, accelerate, safetensors, numpy, pytest and
# hypothesis. If a `.whl` folder is in the repository root (carried with the run), its wheels are installed first
# into /tmp/site (no network). Prepare it HERE, beforehand, only when the GPU's transformers is older than the one
# hf_rmod was verified with (5.24: the `cache` argument name, `_prefill`, ...):
#     bash benchmarks/gpu_check.sh --fetch-wheels      # pip download transformers==<local version> into .whl
# and carry `.whl` with the run (README of the device tool: at most 64 MiB per call).
#
# The policy: the real SmolLM2-135M ships as a 98 MB GGUF, more than a run can carry, so the benchmarks use its
# exact architecture with random weights (`--random-weights`: same compute per token; fixed-length sampling).
set -u

if [ "${1:-}" = "--fetch-wheels" ]; then  # runs on the development machine, never on the GPU machine
    py=${PYTHON:-.venv/bin/python}
    version=$("$py" -c "import transformers; print(transformers.__version__)")
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "transformers==$version"
    ls -la .whl
    exit 0
fi

OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$(date +%s)
note() { echo "$*" | tee -a "$SUMMARY"; }
PY=python3

if ls .whl/*.whl >/dev/null 2>&1; then
    note "installing carried wheels: $(ls .whl | tr '\n' ' ')"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$OUT/pip.log" 2>&1 || note "pip install of .whl FAILED (see pip.log)"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false

# 0. the machine (5 s)
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    $PY -c "import sys, torch, transformers, accelerate; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('transformers', transformers.__version__, transformers.__file__); print('accelerate', accelerate.__version__)" 2>&1
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >> "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the exit status
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    note "$name: exit $rc in $(( $(date +%s) - t0 )) s (limit $limit s)$([ $rc -eq 124 ] && echo ' TIMED OUT')"
    tail -n 25 "$OUT/$name.log" >> "$SUMMARY"
    return 0
}

# 1. GPU-marked tests (device map split over CPU + GPU, static cache + compile on CUDA): ~1-2 min with compilation
step gpu_tests 150 $PY -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors tests/ -rA

# 2. vs_sampling + solver on SmolLM2's architecture in bf16 (3 vs_sampling settings + the UNIFORM run)
step bench_sampling_solver 180 $PY -m benchmarks --random-weights --device cuda --dtype bfloat16 --threads 8 \
    --reps 3 --only vs_sampling,solver --output "$OUT/bench_sampling_solver.json"

# 3. compiled decoding: static cache + inductor/CUDA graphs, RMOD vs generate vs eager RMOD
step bench_compiled 120 $PY -m benchmarks --random-weights --device cuda --dtype bfloat16 --threads 8 \
    --reps 3 --only compiled --output "$OUT/bench_compiled.json"

note "total $(( $(date +%s) - START )) s; results in $OUT"
