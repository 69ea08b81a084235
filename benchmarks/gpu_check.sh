#!/usr/bin/env bash
# The engine's GPU checks and the throughput tables, as one device call (budget: 11 minutes after
# start-up, tests included; issue 15's targets are at batch 128 and 256):
#   bash benchmarks/gpu_check.sh          # writes gpu.json, encode.json and gpu.log under $OUT (or benchmarks/)
# Runs from the repository root with the machine's own torch and transformers (PYTHONPATH=src,
# no install: pathreplay's engine needs nothing else). The previous version's row is measured in
# the same call: `--compare` times the engine with every row's prompt in its own cache, which is
# the engine before shared prompts (v6).
set -o pipefail
out=${OUT:-benchmarks}
export PYTHONPATH=src PYTHONUNBUFFERED=1
{
  date -u +%F
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_prefix.py \
    tests/test_patch.py tests/test_kernels.py tests/test_fast_encode.py
  timeout 60 python3 benchmarks/encode_throughput.py --device cuda --d-model 4096 --d-sae 32768 --rows 8192 \
    --json "$out/encode.json"
  timeout 420 python3 benchmarks/replay_throughput.py --shape llama-3.1-8b --device cuda \
    --batch 128 256 --compare --job --json "$out/gpu.json" --profile
} 2>&1 | tee "$out/gpu.log"
