#!/usr/bin/env bash
# Every GPU check in one run of under 8 minutes (a lent GPU's time is short), most important first,
# each result written to OUT_DIR as soon as it exists:
#   1. the CUDA tests (compiled attention kernels against float64, model and engine on CUDA);
#   2. the head benchmark at 448 px, batch 16, float16 and bfloat16 autocast: trunk, plain formula,
#      chunked, fused (VOC and COCO: time ratios to the trunk, and the head's memory);
#   3. the attention alone per implementation, and the fused kernels' tile shapes;
#   4. the end-to-end training benchmark (COCO-like JPEGs, -j 4/8/16, step-only rate, largest batch);
#   5. options, each only while time is left: channels_last, the whole model through torch.compile,
#      fc1 in float16 for evaluation, the official formula through torch.compile.
#     bash bench/gpu.sh [OUT_DIR]
set -uo pipefail
out=${1:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
budget=420   # seconds after which optional steps are skipped
{ nvidia-smi -L; python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; nproc; } 2>&1 | tee "$out/device.txt"
python -m pytest -q -p no:cacheprovider tests/test_*_cuda.py 2>&1 | tail -n 30 | tee "$out/tests.txt"
python bench/head.py --device cuda --amp --repeats 10 --eval-batch 16 --train-batch 16 2>&1 | tee "$out/head_amp_b16.txt"
python bench/head.py --device cuda --amp --amp-dtype bfloat16 --repeats 10 --eval-batch 16 --train-batch 16 2>&1 | tee "$out/head_bf16_b16.txt"
python bench/attention.py --device cuda --sweep 2>&1 | tee "$out/attention.txt"
python bench/train.py --device cuda --images 640 --max-batch 2> "$out/train_stderr.txt" | tee "$out/train.txt"
optional() {   # optional NAME COMMAND...: run unless the budget is spent
    local name=$1; shift
    if (( SECONDS > budget )); then echo "skipped $name: ${SECONDS}s spent" | tee "$out/$name.txt"; return; fi
    "$@" 2>&1 | tee "$out/$name.txt"
}
optional head_channels_last python bench/head.py --device cuda --amp --repeats 10 --eval-batch 16 --train-batch 16 --configs coco --cases a d --channels-last
optional head_compile python bench/head.py --device cuda --amp --repeats 10 --eval-batch 16 --train-batch 16 --configs coco --modes train --cases a d --compile
optional head_fc1_half python bench/head.py --device cuda --amp --repeats 10 --eval-batch 16 --configs coco --modes eval --cases a d --fc1-half
optional head_compiled_formula python bench/head.py --device cuda --amp --repeats 10 --eval-batch 16 --train-batch 16 --configs coco --cases e
echo "total ${SECONDS}s" | tee -a "$out/device.txt"
