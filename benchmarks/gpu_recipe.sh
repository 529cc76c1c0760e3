#!/usr/bin/env bash
# The Fashion-MNIST recipe (recipes/fashion-mnist-gpu.yaml) on a lent GPU machine, without
# DVC (the GPU machine has none): ingest -> pretrain -> evaluate on a copy of params.yaml
# with the recipe's overrides and every path under .recipe/ (so it can run beside the
# default pipeline), then the figures for the README's results table (linear, kNN, both
# baselines, wall time, card) and the retrieval and label-efficiency figures.
# EPOCHS=N overrides the recipe's epochs (for a shorter run that fits a device budget);
# OVERRIDES="key=value ..." (dotted keys, YAML values) any other key, after the recipe's
# (a dry run on a CPU: OVERRIDES="device=cpu model.width=0.125 data.max_train=2048 ...").
# benchmarks/gpu_check.sh runs it; alone: command `bash benchmarks/gpu_recipe.sh`, carry
#   ["data/raw/fashion-mnist", ".whl"] (.whl: wheels for packages the machine lacks).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
OUT=${OUT:-/tmp/byol-gpu-recipe}
mkdir -p "$OUT"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
python3 - recipes/fashion-mnist-gpu.yaml recipe-params.yaml "${EPOCHS:-}" "${OVERRIDES:-}" <<'PY'
import sys, yaml
raw = yaml.safe_load(open("params.yaml"))
extra = dict(item.split("=", 1) for item in sys.argv[4].split())
for dotted, value in [*yaml.safe_load(open(sys.argv[1])).items(), *((k, yaml.safe_load(v)) for k, v in extra.items())]:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value
if sys.argv[3]:
    raw["pretrain"]["epochs"] = int(sys.argv[3])
    raw["pretrain"]["warmup_epochs"] = max(1, int(sys.argv[3]) // 10)
for key in ("prepared", "models", "metrics", "resume", "cache", "embeddings"):
    raw["paths"][key] = f".recipe/{key}"
yaml.safe_dump(raw, open(sys.argv[2], "w"), sort_keys=False)
PY
start=$(date +%s)
for stage in ingest pretrain evaluate; do
  python3 -m byol_core.cli "$stage" --params recipe-params.yaml 2>&1 | grep -v "it/s\]$" | tee -a "$OUT/recipe.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "stage $stage failed"; exit 1; }
done
wall=$(( $(date +%s) - start ))
cp recipe-params.yaml .recipe/metrics/*.json .recipe/metrics/pretrain_curve.csv "$OUT/" 2>/dev/null
python3 - "$card" "$wall" <<'PY'
import json, sys, yaml
p = yaml.safe_load(open("recipe-params.yaml"))
e = json.load(open(".recipe/metrics/eval.json")); t = json.load(open(".recipe/metrics/pretrain.json"))
print(f"| Fashion-MNIST 60k/10k | ResNet-18 w{p['model']['width']} small stem | {p['pretrain']['epochs']} "
      f"| {p['pretrain']['batch_size']} | {sys.argv[1]} | {int(sys.argv[2])} s | {e['linear_top1']:.4f} "
      f"| {e['knn_top1']:.4f} | {e['random_init_linear_top1']:.4f} | {e['pixels_linear_top1']:.4f} |")
print(f"pretrain {t['images_per_sec']:.0f} img/s on {t['device']}")
r, le = e["retrieval"]["byol"], e["label_efficiency"]["byol"]
print(f"retrieval recall@1 {r['recall_at_1']:.4f}, recall@5 {r['recall_at_5']:.4f}, mAP@R {r['map_at_r']:.4f}; "
      f"linear with 1% / 10% / 100% of labels: {le['0.01']:.4f} / {le['0.1']:.4f} / {le['1.0']:.4f}")
PY
