#!/usr/bin/env bash
# Every GPU check of byol_core in one call on a lent GPU machine (about 5 minutes):
#   1. the test suite (but the DVC tests: the GPU machine has no dvc); device: auto picks
#      CUDA there, so the end-to-end test pretrains with bf16 autocast on the GPU and
#      exports with the GPU-trained encoder;
#   2. the default pipeline (params.yaml, full Fashion-MNIST) on the GPU, with its figures;
#   3. training-step throughput for the default encoder and a full-width ResNet-18;
#   4. pretraining streamed from the memory-mapped shards against resident on the GPU, for
#      ResNet-18 w1.0 at 32 px (the streamed path should reach >= 90% of resident).
# Expects data/raw/fashion-mnist/*.gz and, for packages the machine lacks, wheels in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
OUT=${OUT:-/tmp/byol-gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, onnxruntime; print("torch", torch.__version__, "| onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())' | tee -a "$OUT/gpu.txt"

echo "== 1. tests"
timeout 300 python3 -m pytest -q -p no:cacheprovider --ignore tests/test_dvc.py tests 2>&1 | tail -n 15 | tee "$OUT/tests.txt"

echo "== 2. default pipeline on the GPU"
start=$(date +%s)
for stage in ingest pretrain evaluate export; do
  timeout 200 python3 -m byol_core.cli "$stage" 2>&1 | tee -a "$OUT/pipeline.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "stage $stage failed"; break; }
done
echo "pipeline wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/pipeline.txt"
cp metrics/*.json "$OUT/" 2>/dev/null

echo "== 3. step throughput"
timeout 150 python3 benchmarks/pretrain_throughput.py --steps 30 2>&1 | tee "$OUT/throughput.txt"

echo "== 4. streamed vs resident pretraining (ResNet-18 w1.0, 32 px, 200k images = 586 MiB)"
timeout 240 python3 benchmarks/stream_vs_resident.py --n 200000 --px 32 --width 1 --heads 4096,256,4096 \
  --batch 512 --steps 40 --rounds 3 2>&1 | tee "$OUT/stream_vs_resident.txt"
cp benchmarks/results/stream_vs_resident-cuda-*.json "$OUT/" 2>/dev/null
