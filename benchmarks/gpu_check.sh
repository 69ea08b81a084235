#!/usr/bin/env bash
# The engine's GPU checks and the H100 throughput table, as one device call (150 s on an H100):
#   bash benchmarks/gpu_check.sh          # writes gpu.json and gpu.log under $OUT (or benchmarks/)
# Runs from the repository root with the machine's own torch and transformers (PYTHONPATH=src,
# no install: pathreplay's engine needs nothing else).
set -o pipefail
out=${OUT:-benchmarks}
export PYTHONPATH=src PYTHONUNBUFFERED=1
{
  date -u +%F
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_patch.py tests/test_kernels.py
  timeout 330 python3 benchmarks/replay_throughput.py --shape llama-3.1-8b --device cuda \
    --batch 16 64 128 --json "$out/gpu.json" --profile
} 2>&1 | tee "$out/gpu.log"
