#!/usr/bin/env bash
# The GPU checks, in one call on the lent GPU machine (one H200; its own Python 3.12 with torch 2.11 and
# torchvision 0.26 at /opt/torch/.venv; no snakemake, dvc or jsonschema there, nothing downloadable):
#
#   1. the `gpu` tests: training, evaluation and every measure on CUDA against the CPU, within the
#      tolerances their docstrings state (tests/test_gpu.py, tests/test_measure_values.py, tests/test_augment.py);
#   2. one epoch of CIFAR-10-shaped synthetic data (50,000 uint8 images resident on the GPU, augmented
#      there) per model, and every measure at its default settings (benchmarks/measure_cost.py);
#   3. one epoch of the same data for every model family, float and LSQ W4A4 (benchmarks/family_epoch.py);
#      the families' one-step CUDA tests run in part 1 (tests/test_model_families.py);
#   4. training throughput of NiN, ResNet-20 and the small ViT, float and LSQ W4A4, one run at a time vs
#      K = 8 spawned processes at once on the GPU: images/s, models per hour (benchmarks/gpu_throughput.py);
#   5. the SAM and SAQ (cases 1-3) steps against their plain float and LSQ steps (benchmarks/saq_step.py).
#
# Budget: under 8 minutes in all (each part has its own timeout: 115 + 90 + 90 + 150 + 45 s, and about 10 s of
# set-up). Prepare once, here:
#   bash scripts/gpu_check.sh --wheels     # downloads the missing pure-Python wheels into .whl/ (ignored)
# then run it there with the device tool: command `bash scripts/gpu_check.sh`, carry [".whl"].
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --wheels ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  # jsonschema for the config; timm (its hub client is optional: not taken) with safetensors and PyYAML
  pins=$(grep -iE '^(jsonschema|jsonschema-specifications|referencing|rpds-py|attrs|timm|safetensors|pyyaml)==' \
    requirements.lock | sed 's/ ;.*//')
  # shellcheck disable=SC2086
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
  ls .whl
  exit 0
fi

python=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$python" ] || python=python3
if ls .whl/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH} MPLBACKEND=Agg PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
  "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'

status=0
echo "== 1. gpu tests (CUDA vs CPU)"
timeout 115 "$python" -m pytest -m gpu -q -p no:cacheprovider -rs tests/test_gpu.py \
  tests/test_measure_values.py tests/test_augment.py tests/test_model_families.py tests/test_worker.py 2>&1 | tee "$out/gpu_tests.log" || status=1

echo "== 2. CIFAR-10-shaped epoch per model and the measures' cost on CUDA"
timeout 90 "$python" benchmarks/measure_cost.py --device cuda --epoch --threads 8 2>&1 | tee "$out/measure_cost_cuda.log" || status=1

echo "== 3. one epoch per model family (float and LSQ W4A4) on CUDA"
timeout 90 "$python" benchmarks/family_epoch.py --device cuda 2>&1 | tee "$out/family_epoch_cuda.log" || status=1

echo "== 4. training throughput, one run at a time vs K at once, float and LSQ W4A4, on CUDA"
timeout 150 "$python" benchmarks/gpu_throughput.py --device cuda 2>&1 | tee "$out/gpu_throughput_cuda.log" || status=1

echo "== 5. SAM and SAQ steps against their plain steps on CUDA"
timeout 45 "$python" benchmarks/saq_step.py --device cuda --cases 1 2 3 2>&1 | tee "$out/saq_step_cuda.log" || status=1
exit $status
