#!/usr/bin/env bash
# One command for a single-GPU machine (an H200) with PyTorch and transformers, no network: random-weight
# Qwen2-Audio-7B / Qwen3-8B shapes through the trainer's loss, the transformers engine and the judge backend;
# peak memory and tokens/s next to the planner's estimates. About 5 minutes. CPU smoke run: bench/gpu_check.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export TOKENIZERS_PARALLELISM=false AUDIO_THINKER_NO_PROGRESS=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
