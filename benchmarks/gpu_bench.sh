#!/usr/bin/env bash
# The step benchmark against lightly and byol-pytorch on a lent GPU machine, in one call
# (about 4 minutes; no network there):
#   1. wheels: .whl/ (the project's missing packages, as gpu_check.sh) into /tmp/site, and
#      the peers from wheels/ (scripts/fetch_bench_wheels.sh; never torch) with
#      `pip install --no-index --find-links wheels`;
#   2. the same step with every framework on our LARS (--optimizer lars), 3 repeats;
#   3. the GPU config: ResNet-18 small stem width 1.0, 32 px, batch 512, paper-sized heads
#      4096/256/4096, ours bf16 autocast + channels_last, peers fp32, each framework with
#      its own example's optimizer; its table is printed last.
# JSON records and logs go to $OUT (default /tmp/byol-gpu-bench).
# Prepare here: scripts/fetch_bench_wheels.sh (wheels/, ~31 MB). Run there with
#   command: bash benchmarks/gpu_bench.sh, timeout_s 540, carry: ["wheels", ".whl",
#   "data/raw/fashion-mnist/train-images-idx3-ubyte.gz"] (all git-ignored; ~58 MiB in all).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/byol-gpu-bench}
mkdir -p "$OUT"
PEERS=("lightly>=1.6,<1.7" "byol-pytorch>=0.9,<0.10" "kornia>=0.9,<0.10")  # as pyproject's bench extra
pipq() { python3 -m pip -q --disable-pip-version-check --no-cache-dir "$@"; }

echo "== 1. wheels"
export PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  pipq install --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
ls wheels/*.whl >/dev/null 2>&1 || { echo "no wheels/: run scripts/fetch_bench_wheels.sh here first and carry wheels"; exit 1; }
if ! pipq install --no-index --find-links wheels "${PEERS[@]}"; then
  # Not writable, or a conflict: put only the distributions this machine lacks in /tmp/site.
  echo "pip into the environment failed; installing the missing wheels into /tmp/site instead"
  missing=$(python3 - <<'EOF'
import glob, importlib.metadata as md
for wheel in sorted(glob.glob("wheels/*.whl")):
    name = wheel.split("/")[-1].split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
EOF
)
  # shellcheck disable=SC2086
  pipq install --no-index --no-deps --no-compile --target /tmp/site $missing || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, torchvision, lightly, byol_pytorch, importlib.metadata as m; print("torch", torch.__version__, "| torchvision", torchvision.__version__, "| lightly", lightly.__version__, "| byol-pytorch", m.version("byol-pytorch"), "| CPUs", len(__import__("os").sched_getaffinity(0)))' \
  | tee -a "$OUT/gpu.txt" || exit 1

CONFIG=(--device cuda --width 1.0 --size 32 --batch 512 --proj-hidden 4096 --proj-out 256 --pred-hidden 4096
        --retries 1 --out "$OUT")

echo "== 2. all on our LARS (log: $OUT/step_vs_peers_lars.txt)"
timeout 150 python3 benchmarks/step_vs_peers.py "${CONFIG[@]}" --optimizer lars --steps 20 --warmup 5 --repeats 3 \
  >"$OUT/step_vs_peers_lars.txt" 2>&1
echo "exit $?"
sed -n '/^| framework/,$p' "$OUT/step_vs_peers_lars.txt"

echo "== 2b. one view: our batched augmentation against kornia's (batch 512, 32 px)"
timeout 90 python3 benchmarks/augment_vs_kornia.py --device cuda --batch 512 --rounds 7 --calls 20 2>&1 | tail -n 6 | tee "$OUT/augment_vs_kornia.txt"

echo "== 3. GPU config, each framework with its own optimizer (log: $OUT/step_vs_peers.txt)"
timeout 300 python3 benchmarks/step_vs_peers.py "${CONFIG[@]}" --steps 30 --warmup 10 --repeats 5 2>&1 \
  | tee "$OUT/step_vs_peers.txt"
echo "exit ${PIPESTATUS[0]}"
