#!/usr/bin/env bash
# Prepare a lent GPU machine's run (docs/gpu.md): that machine has CUDA torch, triton, pytest,
# transformers and tokenizers, but no network and no ../shared. Run HERE, from the repo root:
#   bash bench/gpu_prepare.sh [SHARED_DIR (default ../shared)]
# It fills two git-ignored folders, to be named in the device run's `carry`:
#   .whl/     wheels (CPython 3.12) of our other runtime dependencies
#   .gpudata/ the ShareGPT prompts bench/gpu.py reads
# The device command then starts with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=$PWD:/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${1:-../shared}"
for d in .whl .gpudata; do
    grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude
done
rm -rf .whl .gpudata
mkdir -p .whl .gpudata
platforms=()
for p in manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    outlines_core==0.2.14 llguidance jsonschema jsonschema_specifications referencing rpds_py pyzmq
cp "$shared/data/sharegpt_mlenergy/ShareGPT_V3_filtered_1000.json" .gpudata/
du -sh .whl .gpudata
