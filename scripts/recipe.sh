#!/usr/bin/env bash
# Run a recipe (a file of `dotted.key: value` overrides of params.yaml) as one DVC
# experiment: `scripts/recipe.sh recipes/fashion-mnist-gpu.yaml [extra dvc exp run args]`.
# The experiment's params, metrics and outputs are then in `dvc exp show`.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:?usage: scripts/recipe.sh RECIPE.yaml [dvc exp run args...]}
shift
name=$(basename "$recipe" .yaml)
mapfile -t sets < <(.venv/bin/python - "$recipe" <<'PY'
import json, sys, yaml
for key, value in yaml.safe_load(open(sys.argv[1])).items():
    print(f"{key}={json.dumps(value)}")
PY
)
args=()
for s in "${sets[@]}"; do args+=(-S "$s"); done
exec .venv/bin/dvc exp run -n "$name" "${args[@]}" "$@"
