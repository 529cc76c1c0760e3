#!/usr/bin/env bash
# Warm start against scratch, as DVC experiments (pretrain.init: previous, docs/pipeline.md, "Warm start"):
#   1. `base`: the default run on the first 90% of the train split (data.max_train), pretrain only;
#   2. its full state becomes the start (as `byol promote` would: a copy at paths.start, its
#      sha256 as pretrain.init_sha256), and `warm-N`: all 100%, init previous, warm_epochs N;
#   3. the table: warm against the scratch run on 100%, which is the workspace's current
#      outputs (`dvc repro` of params.yaml), by linear, kNN and pretrain seconds.
#
#   benchmarks/warm_start.sh [N ...]      # default: 1
# Each experiment runs in a temporary copy (--temp), so params.yaml and the workspace's outputs
# are left as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
dvc=.venv/bin/dvc
py=.venv/bin/python
read -r raw start n_train < <($py - <<'PY'
import yaml
p = yaml.safe_load(open("params.yaml"))
print(p["data"]["source_dir"], p["paths"]["start"], 60000)
PY
)
base_n=$(( n_train * 9 / 10 ))
tag=$(date +%H%M%S)

echo "warm_start: base, the default run on the first $base_n train images"
"$dvc" exp run --temp -n "warm-base-$tag" -C "$raw" -S "data.max_train=$base_n" pretrain

md5=$("$dvc" exp show --json -n 50 | $py -c '
import json, sys
name = sys.argv[1]
for row in json.load(sys.stdin):
    for exp in row.get("experiments") or []:
        for rev in exp.get("revs") or []:
            if rev.get("name") == name:
                print(rev["data"]["outs"]["models/checkpoint.pt"]["hash"])
' "warm-base-$tag")
mkdir -p "$(dirname "$start")"
cp ".dvc/cache/files/md5/${md5:0:2}/${md5:2}" "$start"
sha=$(sha256sum "$start" | cut -d' ' -f1)
echo "warm_start: start $start (sha256 $sha)"

for n in "${@:-1}"; do
  echo "warm_start: warm-$n, all $n_train images from the start, $n epochs"
  "$dvc" exp run --temp -n "warm-$n-$tag" -C "$raw" -C "$(dirname "$start")" -S pretrain.init=previous \
    -S "pretrain.init_sha256=\"$sha\"" -S "pretrain.warm_epochs=$n" evaluate
done
$py benchmarks/sweep_table.py --commits 50 --record $(for n in "${@:-1}"; do echo "warm-$n-$tag"; done)
echo "scratch (the workspace's outputs):"
$py - <<'PY'
import json
pre, ev = json.load(open("metrics/pretrain.json")), json.load(open("metrics/eval.json"))
print(f"  pretrain {pre['train_seconds']:.0f} s, linear {ev['linear_top1']:.4f}, kNN {ev['knn_top1']:.4f}")
PY
