#!/usr/bin/env bash
# The device checks in one script: install the carried wheels, check CUDA correctness on tiny models, then time
# the real SD-1.5 architecture (random weights) in the official loop shape and batched (BENCH_EXTRA="--compile
# --overlap" adds compiled UNets and two CUDA streams). Results land in $OUT.
set -u
OUT=${OUT:-/tmp/imgsound-gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
# gpu_check compiles the tiny UNets (3 buckets each) with inductor: a few minutes the first time.
timeout "${CHECK_TIMEOUT_S:-420}" python3 bench/gpu_check.py 2>&1 | grep -v -E "Loading|shards|accelerate" | tee "$OUT/gpu_check.txt"
timeout "${BENCH_TIMEOUT_S:-420}" python3 bench/bench_sampler.py --arch sd15 --device cuda --dtype fp16 --steps 100 \
  --batch 16 32 --official-samples 2 --decode ${BENCH_EXTRA:-} --json "$OUT/bench_sd15.json" 2>&1 \
  | grep -v -E "Loading|shards|kept in float32|token_id" | tee "$OUT/bench_sd15.txt"
