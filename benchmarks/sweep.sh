#!/usr/bin/env bash
# Queue a params sweep as DVC experiments and run it: the way a user tunes this pipeline.
#
#   benchmarks/sweep.sh benchmarks/sweeps/defaults.txt [jobs]     # queue every line, run the queue
#   .venv/bin/python benchmarks/sweep_table.py                     # the results as a Markdown table
#
# Each non-comment line of the sweep file is one experiment: a name, then `key=value` overrides of
# params.yaml (DVC's -S syntax). Each runs `dvc exp run --queue -n NAME -S ... evaluate` (ingest is
# restored from DVC's cache, so only pretrain and evaluate run) in a temporary copy of the
# workspace, with the raw files copied in (-C). With jobs > 1 the experiments run side by side,
# each torch process held to cores / jobs threads, so they share the cores instead of fighting.
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:?usage: benchmarks/sweep.sh SWEEP.txt [jobs]}
jobs=${2:-1}
dvc=.venv/bin/dvc
raw=$(.venv/bin/python -c 'import yaml; print(yaml.safe_load(open("params.yaml"))["data"]["source_dir"])')

while read -r name sets; do
  case "$name" in ''|'#'*) continue ;; esac
  args=()
  for s in $sets; do args+=(-S "$s"); done
  echo "sweep: queue $name ${sets}"
  "$dvc" exp run --queue -n "$name" -C "$raw" "${args[@]}" evaluate </dev/null  # not the sweep file
done < "$file"

threads=$(( $(nproc) / jobs ))
[ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
"$dvc" queue start -j "$jobs"
echo "sweep: queued; follow with \`$dvc queue status\` and \`$dvc queue logs NAME\`"
