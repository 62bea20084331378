#!/usr/bin/env bash
# Every GPU check in one go (a lent GPU's time is short): the whole test suite with CUDA present
# (the CUDA tests run, the rest checks this machine's torch), then the 448 px head benchmark in
# float32 and with float16 autocast at a training batch of 16.
#     bash bench/gpu.sh [OUT_DIR]
set -uo pipefail
out=${1:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; python -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } | tee "$out/device.txt"
python -m pytest -q -p no:cacheprovider -x 2>&1 | tail -n 40 | tee "$out/tests.txt"
python bench/head.py --device cuda --repeats 10 2>&1 | tee "$out/head_fp32.txt"
python bench/head.py --device cuda --amp --repeats 10 --eval-batch 16 --train-batch 16 2>&1 | tee "$out/head_amp_b16.txt"
