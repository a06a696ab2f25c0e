#!/usr/bin/env bash
# Fetch, on the CPU machine, the wheels the lent GPU machine lacks (it has no network; see shared/GPU.md),
# pinned to what this project's CPU venv resolves, for its python 3.12 / x86_64:
#   .whl/        always installed there (run_gpu.sh): trl, datasets and their small deps, hydra/omegaconf/antlr4,
#                mistral-common (the tokenizer file), peft, pydantic
#   .whl-extra/  installed only if the machine lacks them: pandas, xxhash
#   .whl-bnb/    bitsandbytes, for QLoRA runs: its wheel holds kernels for every CUDA/ROCm version (41 MiB, too
#                much beside the rest); slimmed to the CPU library and CUDA ${BNB_CUDA:-130} (the lent machine's
#                torch is +cu130), about 2 MiB. BNB_CUDA=all keeps the full wheel.
# PY=3.11 fetches the same set for python 3.11 (to try run_gpu.sh on this machine). The carried paths must total under 64 MiB. All three folders are git-ignored (.git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
for d in .whl .whl-extra .whl-bnb; do
  grep -qx "/$d/" "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null || echo "/$d/" >> "$(git rev-parse --git-common-dir)/info/exclude"
done
target=(--no-deps --only-binary=:all: --python-version "${PY:-3.12}" --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
rm -rf .whl .whl-extra .whl-bnb
python3 -m pip download -q "${target[@]}" -d .whl \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hydra-core==1.3.8 omegaconf==2.3.1 \
  mistral-common==1.13.1 peft==0.21.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing-extensions==4.16.0
# antlr4-python3-runtime (hydra's parser) is published as an sdist only: build its wheel here.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
python3 -m pip download -q "${target[@]}" -d .whl-extra pandas==3.1.1 xxhash==4.1.0
python3 -m pip download -q "${target[@]}" -d .whl-bnb bitsandbytes==0.50.2
if [ "${BNB_CUDA:-130}" != all ]; then
  python3 benchmarks/slim_wheel.py .whl-bnb/bitsandbytes-*.whl --drop-pattern 'libbitsandbytes_*.so' \
    --keep libbitsandbytes_cpu.so --keep "libbitsandbytes_cuda${BNB_CUDA:-130}.so"
fi
du -sk .whl .whl-extra .whl-bnb | awk '{printf "%-11s %6.1f MiB\n", $2, $1/1024}'
total=$(du -skc .whl .whl-extra .whl-bnb | tail -1 | cut -f1)
echo "carried (.whl + .whl-extra + .whl-bnb): $((total / 1024)) MiB of the 64 MiB limit (the tracked tree adds ~1.4 MiB)"
ls .whl .whl-extra .whl-bnb
# The device's install command, for its python (PY, default 3.12) and platform: every wheel must be accepted.
rm -rf /tmp/wheel-check && python3 -m pip install -q --no-index --no-deps --no-compile "${target[@]:1}" \
  --target /tmp/wheel-check .whl/*.whl .whl-extra/*.whl .whl-bnb/*.whl && echo "all wheels install for python ${PY:-3.12}, manylinux x86_64"
rm -rf /tmp/wheel-check
