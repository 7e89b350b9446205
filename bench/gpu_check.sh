#!/usr/bin/env bash
# GPU check for pretraining, for a lent GPU machine (one script, ~5 minutes on an H100/H200):
#   1. the GPT-2-small benchmark (124M parameters, context 1024, bf16 autocast, torch.compile, fused SDPA),
#      our loop vs the leanest reference loop -> bench-gpt2-small.json (tokens/s, step_ms, MFU, ratio)
#   2. the same size without compile, to show what compile buys -> bench-gpt2-small-eager.json
#   3. the GPU-marked tests (pytest -m gpu) -> pytest-gpu.txt
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (OUT_DIR defaults to $OUT, else ./gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-check}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.__version__, torch.cuda.get_device_name(0))' \
  | tee "$OUT_DIR/device.txt" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$OUT_DIR/device.txt" 2>&1

GPT2_SMALL=(--arch gpt2 --layers 12 --heads 12 --dim 768 --context 1024 --batch 16 --vocab-size 50304
            --device cuda --dtype bf16 --steps 20 --warmup 10 --rounds 3)
echo "== bench: GPT-2 small, bf16, compile"
"$PY" -m lifecycle.cli bench pretrain "${GPT2_SMALL[@]}" --compile | tee "$OUT_DIR/bench-gpt2-small.json"
echo "== bench: GPT-2 small, bf16, eager"
"$PY" -m lifecycle.cli bench pretrain "${GPT2_SMALL[@]}" | tee "$OUT_DIR/bench-gpt2-small-eager.json"
echo "== pytest -m gpu"
"$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT_DIR/pytest-gpu.txt"
status=${PIPESTATUS[0]}
echo "results in $OUT_DIR"
exit "$status"
