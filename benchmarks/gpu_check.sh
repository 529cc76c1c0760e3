#!/usr/bin/env bash
# Every GPU check on a lent GPU machine, in parts (PARTS, default all five below, in this
# order; `smoke` alone first: the CUDA tests of the graphed step and a 10-step throughput
# run of eager and graph, about 40 s, to find a fault before the long call):
#   speed     training-step speed of ResNet-18 w1.0, small stem, batch 512, bf16, paper heads,
#             one lever at a time (NCHW, channels_last, cuDNN autotune, the whole step as a
#             CUDA graph with deterministic kernels as pretraining runs it, and with autotuned
#             ones) at 28 px, the graphed step at 32 px, the default encoder eager and graphed
#             (about 55 s);
#   peers     the same step against lightly 1.6 and byol-pytorch 0.9 on this GPU (about 35 s);
#   recipe    the Fashion-MNIST recipe (benchmarks/gpu_recipe.sh: 100 epochs, ~385 s of
#             training at 22k img/s, then evaluate; fewer epochs only if the speed measured
#             by `speed` says 100 would not end, evaluate included, before DEADLINE);
#   tests     the test suite with device: auto, so on CUDA (each kill -9 resume test for the
#             graphed and the eager step; not the DVC and Dagster tests: the machine has
#             neither), names streamed (-v) so a deadline keeps them;
#   pipeline  the default pipeline (params.yaml) with its figures.
# `recipe` runs alone on the GPU when `tests` is not in PARTS; otherwise beside the tests,
# every torch process held to a share of the CPU cores (OMP_NUM_THREADS), since sixteen
# threads in each of half a dozen processes stalled the evaluate stages on 2026-11-29.
# With ~15 device minutes (a machine starts in ~30 s and stays warm 30 s after a call):
# PARTS="speed peers recipe" (about 9 min; leave out `speed` where RESULTS.md already has
# this code's figures), then at once, while the machine is warm, PARTS="tests pipeline"
# DEADLINE=300 (about 5 min). Before either, a 1-minute smoke call of tests/test_graphed.py
# found what a blind run would have lost (2026-11-29: a host copy refused by the capture).
# Everything lands in $OUT: log.txt (this script's output) and results.tgz (every JSON
# record and log), refreshed after each part, so a cut-short run still returns its figures.
# Prepare here: wheels/ (scripts/fetch_bench_wheels.sh, then only what the machine lacks:
# lightly, byol_pytorch, hydra_core, omegaconf, antlr4, beartype, kornia, kornia_rs) and
# .whl/ (pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions).
# Run there with: command `BYOL_COMMIT=<commit> [PARTS=...] bash benchmarks/gpu_check.sh`,
#   timeout_s 600, carry [".whl", "wheels", "data/raw/fashion-mnist"] (git-ignored; ~42 MiB).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/byol-gpu-check}
PARTS=" ${PARTS:-speed peers recipe tests pipeline} "
DEADLINE=${DEADLINE:-585}  # seconds from the start by which every part has ended
WORK=/tmp/byol-gpu-work
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( DEADLINE - $(el) )); }
want() { [[ "$PARTS" == *" $1 "* ]]; }
pack() { cp -f recipe-params.yaml "$WORK/" 2>/dev/null; tar czf "$OUT/results.tgz" -C "$WORK" . 2>/dev/null; }

echo "== packages [$(el) s] parts:$PARTS"
site=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  .whl/*.whl wheels/*.whl || { echo "wheels failed to install"; exit 1; }
export PYTHONPATH=$site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$WORK/gpu.txt"
python3 -c 'import os, torch, torchvision, onnxruntime, lightly, byol_pytorch, importlib.metadata as m; print("torch", torch.__version__, "| torchvision", torchvision.__version__, "| cudnn", torch.backends.cudnn.version(), "| onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers(), "| lightly", lightly.__version__, "| byol-pytorch", m.version("byol-pytorch"), "| CPUs", len(os.sched_getaffinity(0)))' \
  | tee -a "$WORK/gpu.txt"
N_CPU=$(nproc)

if want smoke; then
  echo "== smoke [$(el) s]"
  timeout 70 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_graphed.py 2>&1 | tail -n 15
  timeout 45 python3 benchmarks/pretrain_throughput.py --device cuda --configs r18-w1-bf16 --levers eager,graph \
    --steps 10 --warmup 2 --rounds 1 --out "$WORK" 2>&1 | tail -n 6
  pack
fi

if want speed; then
  echo "== speed, lever by lever [$(el) s]"
  timeout 110 python3 benchmarks/pretrain_throughput.py --device cuda --configs r18-w1-bf16 --px 28 \
    --levers nchw,eager,cudnn-benchmark,graph,graph-autotune --steps 30 --warmup 5 --rounds 3 --out "$WORK" 2>&1 \
    | tee "$WORK/throughput.txt"
  timeout 40 python3 benchmarks/pretrain_throughput.py --device cuda --configs r18-w1-bf16 --px 32 \
    --levers graph --steps 30 --warmup 5 --rounds 3 --out "$WORK" 2>&1 | tee "$WORK/throughput32.txt"
  timeout 40 python3 benchmarks/pretrain_throughput.py --device cuda --configs default --px 28 \
    --levers eager,graph --steps 30 --warmup 5 --rounds 3 --out "$WORK" 2>&1 | tee "$WORK/throughput_default.txt"
  pack
fi

if want peers; then
  echo "== against lightly and byol-pytorch, same GPU, same run [$(el) s]"
  timeout 130 python3 benchmarks/step_vs_peers.py --device cuda --width 1.0 --size 32 --batch 512 \
    --proj-hidden 4096 --proj-out 256 --pred-hidden 4096 --steps 20 --warmup 5 --repeats 3 --retries 0 \
    --workers "$N_CPU" --out "$WORK" 2>&1 | grep -v "^round" | tee "$WORK/peers.txt"
  pack
fi

threads=$N_CPU  # torch threads for each process of the recipe (and of the tests, below)
if want recipe && want tests; then threads=$(( N_CPU / 2 )); fi
if want recipe; then
  echo "== the recipe [$(el) s]"
  # Epochs that fit: the graphed step's measured img/s (less 10%, 25% beside the tests),
  # before the deadline less ~110 s for ingest, capture and evaluate.
  EPOCHS_FIT=$(python3 - "$WORK" "$(left)" "$(want tests && echo 0.75 || echo 0.9)" <<'PY'
import glob, json, sys
rate = 22000.0  # the graphed step measured on 2026-11-29 (H200), if `speed` gave no figure
for path in glob.glob(f"{sys.argv[1]}/pretrain_throughput-*.json"):
    for row in json.load(open(path))["results"]:
        if (row.get("config"), row.get("px"), row.get("lever")) == ("r18-w1-bf16", 28, "graph") \
                and "images_per_sec" in row:
            rate = row["images_per_sec"]  # the step pretraining runs
print(max(1, min(100, int((int(sys.argv[2]) - 110) * rate * float(sys.argv[3]) / 60000))))
PY
  )
  echo "recipe epochs: $EPOCHS_FIT of 100"
  if [ "$EPOCHS_FIT" -lt 100 ]; then export EPOCHS=$EPOCHS_FIT; fi
  ( export OMP_NUM_THREADS=$threads; OUT=$WORK/recipe timeout $(( $(left) - 5 )) bash benchmarks/gpu_recipe.sh \
      >"$WORK/recipe.log" 2>&1 ) &
  RECIPE=$!
  if ! want tests; then wait $RECIPE; RECIPE_RC=$?; RECIPE=""; fi
fi

if want pipeline; then
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
  pipeline_threads=$threads
  if want tests; then pipeline_threads=4; fi
  ( export OMP_NUM_THREADS=$pipeline_threads; \
    timeout $(( $(left) - 10 )) bash -c "$(declare -f default_pipeline); WORK=$WORK; default_pipeline" ) &
  PIPELINE=$!
fi

if want tests; then
  echo "== tests (device: auto) [$(el) s]"
  ignore=()  # the tests that need dvc or Dagster (pipelines/), which the machine lacks
  for f in dvc code_deps pipelines serve tether ui; do ignore+=(--ignore "tests/test_$f.py"); done
  workers=5
  if want recipe; then workers=3; fi
  xdist=()
  python3 -c "import xdist" 2>/dev/null && xdist=(-n "$workers" --dist loadfile)
  echo "tests: ${ignore[*]} left out; ${xdist[*]}, OMP_NUM_THREADS=2 each"
  # SIGINT at the deadline: pytest then still prints its summary and writes the JUnit file.
  OMP_NUM_THREADS=2 timeout -s INT -k 20 $(( $(left) - 25 )) python3 -m pytest -v -p no:cacheprovider -rfE \
    --junit-xml="$WORK/tests.xml" "${xdist[@]}" "${ignore[@]}" tests >"$WORK/tests.txt" 2>&1
  echo "tests exit $? [$(el) s]"
  grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$WORK/tests.txt" | tail -n 40
  grep -E "test_kill_resume|test_graphed" "$WORK/tests.txt" | grep -E "PASSED|FAILED|ERROR" | sed 's/^\[gw[0-9]*\] //' | head -n 30
  pack
fi

if want pipeline; then
  echo "-- the default pipeline (params.yaml, device: auto) [$(el) s]"
  wait $PIPELINE
  tail -n 16 "$WORK/pipeline.txt"
  pack
fi

if want recipe; then
  echo "-- the recipe [$(el) s]"
  if [ -n "$RECIPE" ]; then wait $RECIPE; RECIPE_RC=$?; fi
  echo "recipe exit $RECIPE_RC [$(el) s]"
  grep -v "^epoch" "$WORK/recipe.log" | tail -n 20
  mkdir -p "$WORK/recipe-metrics" && cp .recipe/metrics/*.json .recipe/metrics/*.csv "$WORK/recipe-metrics/" 2>/dev/null
  pack
fi
echo "== done [$(el) s]"
