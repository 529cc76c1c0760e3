#!/usr/bin/env bash
# Every GPU check in one call on a lent GPU machine (about 9 minutes; no network there):
#   0. the project's and the peers' missing packages from carried wheels (.whl/, wheels/);
#   1. training-step speed of ResNet-18 w1.0, small stem, batch 512, bf16, paper heads, one
#      lever at a time (NCHW, channels_last, cuDNN autotune, the whole step as a CUDA graph
#      with deterministic kernels as pretraining runs it, and with autotuned ones)
#      at 28 px, the graphed step at 32 px, and the default encoder eager and graphed;
#   2. the same step against lightly 1.6 and byol-pytorch 0.9 on this GPU, alternating;
#   3. alone on the GPU's training side: the Fashion-MNIST recipe (benchmarks/gpu_recipe.sh,
#      recipes/fashion-mnist-gpu.yaml; fewer epochs only if the measured speed says 100
#      would not fit before the deadline), and beside it on the CPU cores the test suite
#      with device: auto (so on CUDA; each kill -9 resume test for the graphed and the eager
#      step; not the DVC and Dagster tests: the machine has neither), then the default
#      pipeline (params.yaml) with its figures.
# Everything lands in $OUT: log.txt (this script's output) and results.tgz (every JSON
# record and log), refreshed after each part, so a cut-short run still returns its figures.
# Prepare here: wheels/ (scripts/fetch_bench_wheels.sh, then only what the machine lacks:
# lightly, byol_pytorch, hydra_core, omegaconf, antlr4, beartype, kornia, kornia_rs) and
# .whl/ (pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions).
# Run there with: command `BYOL_COMMIT=<commit> bash benchmarks/gpu_check.sh`, timeout_s 600,
#   carry [".whl", "wheels", "data/raw/fashion-mnist"] (all git-ignored; about 42 MiB).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/byol-gpu-check}
DEADLINE=${DEADLINE:-585}  # seconds from the start by which every part has ended
WORK=/tmp/byol-gpu-work
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( DEADLINE - $(el) )); }
pack() { cp -f recipe-params.yaml "$WORK/" 2>/dev/null; tar czf "$OUT/results.tgz" -C "$WORK" . 2>/dev/null; }

echo "== 0. packages [$(el) s]"
site=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  .whl/*.whl wheels/*.whl || { echo "wheels failed to install"; exit 1; }
export PYTHONPATH=$site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$WORK/gpu.txt"
python3 -c 'import os, torch, torchvision, onnxruntime, lightly, byol_pytorch, importlib.metadata as m; print("torch", torch.__version__, "| torchvision", torchvision.__version__, "| cudnn", torch.backends.cudnn.version(), "| onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers(), "| lightly", lightly.__version__, "| byol-pytorch", m.version("byol-pytorch"), "| CPUs", len(os.sched_getaffinity(0)))' \
  | tee -a "$WORK/gpu.txt"
N_CPU=$(nproc)

echo "== 1. step speed, lever by lever [$(el) s]"
timeout 110 python3 benchmarks/pretrain_throughput.py --device cuda --configs r18-w1-bf16 --px 28 \
  --levers nchw,eager,cudnn-benchmark,graph,graph-autotune --steps 30 --warmup 5 --rounds 3 --out "$WORK" 2>&1 | tee "$WORK/throughput.txt"
timeout 40 python3 benchmarks/pretrain_throughput.py --device cuda --configs r18-w1-bf16 --px 32 \
  --levers graph --steps 30 --warmup 5 --rounds 3 --out "$WORK" 2>&1 | tee "$WORK/throughput32.txt"
timeout 40 python3 benchmarks/pretrain_throughput.py --device cuda --configs default --px 28 \
  --levers eager,graph --steps 30 --warmup 5 --rounds 3 --out "$WORK" 2>&1 | tee "$WORK/throughput_default.txt"
pack

echo "== 2. against lightly and byol-pytorch, same GPU, same run [$(el) s]"
timeout 130 python3 benchmarks/step_vs_peers.py --device cuda --width 1.0 --size 32 --batch 512 \
  --proj-hidden 4096 --proj-out 256 --pred-hidden 4096 --steps 20 --warmup 5 --repeats 3 --retries 0 \
  --workers "$N_CPU" --out "$WORK" 2>&1 | grep -v "^round" | tee "$WORK/peers.txt"
pack

echo "== 3. the recipe, beside it the tests and the default pipeline [$(el) s]"
# Epochs that fit: the graphed step's measured img/s, less 20% for the loop and the tests beside it, before the
# deadline less ~100 s for ingest, capture and evaluate.
EPOCHS_FIT=$(python3 - "$WORK" "$(left)" <<'PY'
import glob, json, sys
rate = 16000.0  # the eager bf16 step measured on commit 2adf77a, if the graph gave no figure
for path in glob.glob(f"{sys.argv[1]}/pretrain_throughput-*.json"):
    for row in json.load(open(path))["results"]:
        if (row.get("config"), row.get("px"), row.get("lever")) == ("r18-w1-bf16", 28, "graph") \
                and "images_per_sec" in row:
            rate = row["images_per_sec"]  # the step pretraining runs
print(max(1, min(100, int((int(sys.argv[2]) - 100) * rate * 0.8 / 60000))))
PY
)
echo "recipe epochs: $EPOCHS_FIT of 100"
if [ "$EPOCHS_FIT" -lt 100 ]; then export EPOCHS=$EPOCHS_FIT; fi
( OUT=$WORK/recipe timeout $(( $(left) - 5 )) bash benchmarks/gpu_recipe.sh >"$WORK/recipe.log" 2>&1 ) &
RECIPE=$!

default_pipeline() {
  local start stage
  start=$(date +%s)
  for stage in ingest pretrain evaluate export; do
    python3 -m byol_core.cli "$stage" 2>&1 | grep -v "it/s\]$" >>"$WORK/pipeline.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "stage $stage failed" >>"$WORK/pipeline.txt"; break; }
  done
  echo "default pipeline wall: $(( $(date +%s) - start )) s" >>"$WORK/pipeline.txt"
  mkdir -p "$WORK/default-metrics" && cp metrics/*.json "$WORK/default-metrics/" 2>/dev/null
}
( timeout $(( $(left) - 10 )) bash -c "$(declare -f default_pipeline); WORK=$WORK; default_pipeline" ) &
PIPELINE=$!

ignore=()  # the tests that need dvc or Dagster (pipelines/), which the machine lacks
for f in dvc code_deps pipelines serve tether ui; do ignore+=(--ignore "tests/test_$f.py"); done
xdist=()
python3 -c "import xdist" 2>/dev/null && xdist=(-n 4 --dist loadfile)
echo "tests: ${ignore[*]} left out; ${xdist[*]}"
timeout $(( $(left) - 15 )) python3 -m pytest -q -p no:cacheprovider -rfE "${xdist[@]}" "${ignore[@]}" tests \
  >"$WORK/tests.txt" 2>&1
echo "tests exit $? [$(el) s]"; tail -n 40 "$WORK/tests.txt"
pack

echo "-- the default pipeline (params.yaml, device: auto) [$(el) s]"
wait $PIPELINE
tail -n 12 "$WORK/pipeline.txt"
pack

echo "-- waiting for the recipe [$(el) s]"
wait $RECIPE
echo "recipe exit $? [$(el) s]"
tail -n 8 "$WORK/recipe.log"
mkdir -p "$WORK/recipe-metrics" && cp .recipe/metrics/*.json .recipe/metrics/*.csv "$WORK/recipe-metrics/" 2>/dev/null
pack
echo "== done [$(el) s]"
