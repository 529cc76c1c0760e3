#!/usr/bin/env bash
# `make ui`: `dg dev` (webserver, daemon, code server) with a persistent DAGSTER_HOME, so run
# history, check results and the schedule and sensor switches survive a restart.
#
# dg dev runs in a process group of its own: Ctrl-C, SIGTERM or SIGHUP to this script stops
# that whole group (its children outlive a signal to dg dev alone). Dagster does not end a
# run in progress when it shuts down, so after 10 s the group is killed; each step's
# `dvc repro` and the byol command below it then stop with their step (pipelines/tether.py),
# releasing DVC's lock, and this script waits for them. When the UI starts again, the run
# whose worker is gone is marked failed (pipelines/monitor.py); the next run reruns what was
# cut short, and pretraining resumes from its last checkpoint.
#
# DAGSTER_HOME defaults to .dagster/home, its dagster.yaml copied from the project's.
# Arguments go to `dg dev` (e.g. --port 3002). The asset pages' pictures come from a figure
# server on 127.0.0.1:$BYOL_FIGURE_PORT (default 3001; pipelines/figures.py), stopped with the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
export DAGSTER_HOME=${DAGSTER_HOME:-$(pwd)/.dagster/home}
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
export BYOL_FIGURE_DIR=$DAGSTER_HOME/figures
export BYOL_FIGURE_URL=${BYOL_FIGURE_URL:-http://127.0.0.1:${BYOL_FIGURE_PORT:-3001}}
.venv/bin/python -m pipelines.figures "$BYOL_FIGURE_DIR" --port "${BYOL_FIGURE_PORT:-3001}" &
figures=$!
trap 'kill "$figures" 2>/dev/null || true' EXIT

# Job control: dg dev gets a process group of its own, and (unlike a plain background job)
# keeps SIGINT and SIGQUIT, so it can be stopped as if from its own terminal.
set -m
.venv/bin/dg dev "$@" &
group=$!
set +m

# The tethers (pipelines/tether.py) of the steps running in the group: they stop each
# step's dvc and byol when the step dies, from a session of their own.
tethers() {
  local members t parent
  members=$(ps -o pid= -g "$group" | tr -d ' ')
  for t in $(pgrep -f "pipelines/tether.py" || true); do
    parent=$(tr '\0' ' ' < "/proc/$t/cmdline" 2>/dev/null | awk '{print $3}')
    if [ -n "$parent" ] && echo "$members" | grep -qx "$parent"; then echo "$t"; fi
  done
}

stop() {
  trap - INT TERM HUP
  echo "ui: stopping dg dev and every process it started (group $group)" >&2
  local left
  left=$(tethers)
  kill -INT -- "-$group" 2>/dev/null || exit 0
  for _ in $(seq 1 20); do  # 10 s for Dagster to shut down; a run in progress does not end by itself
    kill -0 -- "-$group" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$group" 2>/dev/null || true
  for _ in $(seq 1 20); do  # a killed process is gone only once the kernel has torn it down (zombies aside)
    ps -o stat= -g "$group" 2>/dev/null | grep -q '^[^Z]' || break
    sleep 0.25
  done
  for _ in $(seq 1 60); do  # each step's dvc and byol stop after their step: up to 30 s
    left=$(for t in $left; do kill -0 "$t" 2>/dev/null && echo "$t"; done)
    [ -z "$left" ] && break
    sleep 0.5
  done
  echo "ui: stopped; a run that was in progress is marked failed when the UI starts again" >&2
  exit 0
}
trap stop INT TERM HUP
wait "$group" || true
