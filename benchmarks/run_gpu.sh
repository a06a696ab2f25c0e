#!/usr/bin/env bash
# The device command for benchmarks/gpu_round2.py on a lent GPU machine (no network there). Prepare the wheels
# first on the CPU machine (bash benchmarks/wheels.sh) and carry .whl, .whl-extra and .whl-bnb. This script:
# installs the wheels into /tmp/site (pandas/xxhash only if the machine lacks them), this project without
# dependencies, prints the versions, then runs every measurement into $OUT/gpu_round2.json (arguments are
# passed on, e.g. --entries tier2 --budget-s 300 for a second call).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"; SITE="${SITE:-/tmp/site}"
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$@"; }
pipi .whl/*.whl || exit 1
for module in pandas xxhash; do
  python3 -c "import $module" 2>/dev/null || pipi .whl-extra/"$module"-*.whl || exit 1
done
ls .whl-bnb/*.whl >/dev/null 2>&1 && { pipi .whl-bnb/*.whl || echo "bitsandbytes: install failed (QLoRA runs only)"; }
export PYTHONPATH="$SITE"
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
export ZEPHYR_LIGHTNING_CACHE=/tmp/zephyr-lightning-cache  # the tokenizer folder, made once
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, lightning, trl, datasets, peft; print('torch', torch.__version__, '| transformers', transformers.__version__, '| lightning', lightning.__version__, '| trl', trl.__version__, '| datasets', datasets.__version__, '| peft', peft.__version__)"
timeout 60 python3 -m bitsandbytes > "$OUT/bitsandbytes.txt" 2>&1; echo "bitsandbytes self-check: exit $? (details in bitsandbytes.txt)"
python3 benchmarks/gpu_round2.py --out "$OUT/gpu_round2.json" "$@" 2>&1 | tee "$OUT/gpu_round2.log"
