#!/usr/bin/env bash
# The device command for benchmarks/dpo_gpu.py on a lent GPU machine (no network there): installs the
# carried wheels (.whl: trl, datasets and their small deps; .whl-extra: pandas, only if missing) into
# /tmp/site, installs this project without dependencies, and runs the benchmark into $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
python3 -c "import pandas" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-extra/*.whl
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
export ZEPHYR_LIGHTNING_CACHE="$PWD/.tokcache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, lightning, trl, datasets; print(torch.__version__, transformers.__version__, lightning.__version__, trl.__version__, datasets.__version__)"
python3 benchmarks/dpo_gpu.py --out "${OUT:-.}/gpu_results.json" "$@" 2>&1 | grep -vE "Warning|warnings.warn|^\s*$" | tee "${OUT:-.}/gpu_log.txt"
