#!/usr/bin/env bash
# First thing to run on a machine with a CUDA GPU: the real-size Qwen3-VL-2B vision tower (random weights
# from its config), bf16 + activation checkpointing: embed throughput at 448² and 256², a short last-blocks
# and a short LoRA training run with peak GPU memory, and the FP8 path where the GPU has it. Prints one JSON
# summary on stdout; without a GPU it prints {"skipped": ...}. At most 8 minutes (the script keeps to
# --budget-s, 450 s by default; the timeout below is the backstop).
#
#   bench/gpu_check.sh [--dry-run] [--out FILE] [--budget-s S]
#
# --dry-run: every section on CPU at tiny sizes (the tiny random tower), to check the script itself.
# Python: $PYTHON, else .venv/bin/python, else python3 (torch with CUDA, and the [train] extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec timeout --signal=TERM --kill-after=10 480 "$PY" bench/gpu_check.py "$@"
