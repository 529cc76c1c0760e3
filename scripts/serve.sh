#!/usr/bin/env bash
# The production shape on one machine, all on 127.0.0.1:
#   PostgreSQL  run history, schedules, sensor cursors and automation state (dagster-postgres);
#               a cluster of its own in $STATE/postgres (initdb on first use, port $BYOL_PG_PORT),
#               unless DAGSTER_PG_HOST names an existing server
#   code server        `dagster code-server start` of pipelines.definitions on port $BYOL_CODE_PORT:
#                      one process loads the definitions and launches the runs (their workers are
#                      its children); the daemon and the webserver both talk to it through
#                      $STATE/workspace.yaml, so neither spawns short-lived servers of its own
#   figure server      the asset pages' pictures on http://127.0.0.1:$BYOL_FIGURE_PORT (pipelines/figures.py)
#   dagster-daemon     schedules, sensors, declarative automation, the run queue, run monitoring
#   dagster-webserver  the UI on http://127.0.0.1:$BYOL_UI_PORT
# DAGSTER_HOME is $STATE/home; its dagster.yaml is written from scripts/serve-dagster.yaml.
#
# With BYOL_WORKERS=N (N >= 1) the steps run on Celery workers instead of inside the run's
# process (BYOL_EXECUTOR=celery, pipelines/workers.py), and this script also starts:
#   Redis       the broker, on 127.0.0.1:$BYOL_REDIS_PORT (default 6379), unless
#               BYOL_CELERY_BROKER names an existing one
#   N workers   each in a clone of its own ($STATE/workers/worker-K: `git clone` of the
#               project's committed code, with its .dvc/config.local), sharing
#               nothing but the DVC remote that BYOL_DVC_REMOTE names (required) and the resume
#               store (paths.resume); worker-1 takes the gpu queue (pretraining), the others the
#               cpu queue (N=1: one worker takes both). The cpu workers' clones link the source
#               files (data.source_dir) from this checkout: ingest reads them.
# docs/machines.md says how to run workers on other machines instead.
#
#   scripts/serve.sh start   (make serve)   start what is not running; idempotent
#   scripts/serve.sh stop    (make stop)    stop the webserver, the daemon (each with every process
#                                           below it) and the local PostgreSQL
#   scripts/serve.sh status                 what runs, with pids
#   scripts/serve.sh destroy                stop, then delete the state and the cluster
#
# An existing PostgreSQL: export DAGSTER_PG_HOST, DAGSTER_PG_PORT, DAGSTER_PG_USERNAME,
# DAGSTER_PG_PASSWORD and DAGSTER_PG_DB before `make serve`; nothing is written to a file.
# BYOL_SERVE_STATE moves $STATE (default .dagster/serve); BYOL_PROJECT_DIR points the code
# location at another checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=$(realpath -m "${BYOL_SERVE_STATE:-.dagster/serve}")
PG_PORT=${BYOL_PG_PORT:-54329}
UI_PORT=${BYOL_UI_PORT:-3000}
CODE_PORT=${BYOL_CODE_PORT:-4266}
FIGURE_PORT=${BYOL_FIGURE_PORT:-3001}
BIN=$ROOT/.venv/bin
WORKERS=${BYOL_WORKERS:-0}
REDIS_PORT=${BYOL_REDIS_PORT:-6379}
mkdir -p "$STATE/home" "$STATE/logs"
case "$WORKERS" in
  ''|*[!0-9]*) echo "serve: error: BYOL_WORKERS=$WORKERS is not a number of workers: set it to 0 (steps run in the run's process) or more" >&2; exit 2 ;;
esac
if [ "$WORKERS" -gt 0 ] && [ "${1:-start}" = start ] && [ -z "${BYOL_DVC_REMOTE:-}" ]; then
  echo "serve: error: BYOL_WORKERS=$WORKERS needs BYOL_DVC_REMOTE, the DVC remote the workers share: add one with \`dvc remote add --local NAME URL\` and set BYOL_DVC_REMOTE=NAME (docs/machines.md)" >&2
  exit 1
fi

say() { echo "serve: $*"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$dir" ] || { echo "serve: error: PostgreSQL is not installed: run \`make setup\` (it installs Debian's postgresql)" >&2; exit 1; }
  echo "$dir"
}

# PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

local_pg() { [ -z "${DAGSTER_PG_HOST:-}" ]; }

# The cluster's folder: $STATE/postgres, unless run as root where the postgres user cannot
# reach it (a private folder above it); then a folder of the postgres user's own, named
# after $STATE, so each state folder keeps its own cluster.
pg_data() {
  if [ "$(id -u)" -ne 0 ] || runuser -u postgres -- test -x "$STATE"; then
    echo "$STATE/postgres"
  else
    echo "/var/lib/postgresql/byol-serve-$(echo -n "$STATE" | sha256sum | cut -c1-12)"
  fi
}

start_pg() {
  local bin data
  bin=$(pg_bin)
  data=$(pg_data)
  if [ ! -f "$data/PG_VERSION" ]; then
    say "creating a PostgreSQL cluster in $data"
    mkdir -p "$data"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$data"; chmod 700 "$data"; fi
    # trust, on loopback and the cluster's own socket only: no password to keep in a file.
    as_pg "$bin/initdb" -D "$data" -U dagster --auth=trust -E UTF8 >"$STATE/logs/initdb.log"
  fi
  if ! as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$data" -w -t 60 -l "$data/server.log" \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $data" start >/dev/null
    say "PostgreSQL on 127.0.0.1:$PG_PORT"
  fi
  if ! as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U dagster -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname='dagster'" | grep -q 1; then
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U dagster dagster
  fi
}

stop_pg() {
  local data
  data=$(pg_data)
  [ -f "$data/PG_VERSION" ] || return 0
  if as_pg "$(pg_bin)/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_pg "$(pg_bin)/pg_ctl" -D "$data" -w -m fast stop >/dev/null && say "PostgreSQL stopped"
  fi
}

# A process in a session of its own, so that stop can end it with everything it started.
launch() {
  local name=$1; shift
  if alive "$STATE/$name.pid"; then say "$name already runs (pid $(cat "$STATE/$name.pid"))"; return; fi
  setsid "$@" >>"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
  say "$name started (pid $!, log $STATE/logs/$name.log)"
}

stop_group() {
  local name=$1 pid
  alive "$STATE/$name.pid" || { rm -f "$STATE/$name.pid"; return 0; }
  pid=$(cat "$STATE/$name.pid")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$STATE/$name.pid"
  say "$name stopped"
}

env_for_dagster() {
  if local_pg; then
    export DAGSTER_PG_HOST=127.0.0.1 DAGSTER_PG_PORT=$PG_PORT DAGSTER_PG_USERNAME=dagster DAGSTER_PG_DB=dagster
    export DAGSTER_PG_PASSWORD=${DAGSTER_PG_PASSWORD:-}
  fi
  export DAGSTER_HOME=$STATE/home
  BYOL_PROJECT_DIR=$(realpath -m "${BYOL_PROJECT_DIR:-$ROOT}"); export BYOL_PROJECT_DIR
  # Where the pictures go and the URL the browser fetches them from (pipelines/figures.py);
  # BYOL_FIGURE_URL differs when the UI is reached through a tunnel or a proxy.
  export BYOL_FIGURE_DIR=$STATE/figures
  export BYOL_FIGURE_URL=${BYOL_FIGURE_URL:-http://127.0.0.1:$FIGURE_PORT}
  cp scripts/serve-dagster.yaml "$DAGSTER_HOME/dagster.yaml"
  cat >"$STATE/workspace.yaml" <<YAML
load_from:
  - grpc_server:
      host: 127.0.0.1
      port: $CODE_PORT
      location_name: pipelines.definitions
YAML
}

local_redis() { [ "$WORKERS" -gt 0 ] && [ -z "${BYOL_CELERY_BROKER:-}" ]; }

start_redis() {
  [ -x /usr/bin/redis-server ] || { echo "serve: error: Redis is not installed: run \`make setup\` (it installs Debian's redis-server) or set BYOL_CELERY_BROKER" >&2; exit 1; }
  mkdir -p "$STATE/redis"
  # No persistence: a queued step lives as long as the run that waits for it.
  launch redis /usr/bin/redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$STATE/redis"
  for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.2
  done
  echo "serve: error: Redis did not answer on 127.0.0.1:$REDIS_PORT; see $STATE/logs/redis.log" >&2
  exit 1
}

# Worker K's clone: the committed code of the project the code location serves
# (BYOL_PROJECT_DIR, default this checkout), its DVC remote settings and, for a cpu worker, a
# link to its source files.
worker_clone() {
  local k=$1 clone=$STATE/workers/worker-$1 source project=$BYOL_PROJECT_DIR
  if [ ! -d "$clone/.git" ]; then
    mkdir -p "$STATE/workers"
    git clone -q "$project" "$clone"
    say "worker-$k: cloned $project into $clone (update it with \`git -C $clone pull\`)" >&2
  fi
  [ -f "$project/.dvc/config.local" ] && cp "$project/.dvc/config.local" "$clone/.dvc/config.local"
  if [ "$k" -gt 1 ] || [ "$WORKERS" -eq 1 ]; then
    source=$(cd "$project" && "$BIN/python" -c 'import os; from byol_core.config import load_params; print(os.path.relpath(load_params().data.source_dir))')
    if [ "${source#../}" = "$source" ] && [ -e "$project/$source" ] && [ ! -e "$clone/$source" ]; then
      mkdir -p "$(dirname "$clone/$source")"
      ln -s "$(realpath "$project/$source")" "$clone/$source"
    fi
  fi
  echo "$clone"
}

start_workers() {
  local k clone queues
  for k in $(seq "$WORKERS"); do
    clone=$(worker_clone "$k")
    if [ "$WORKERS" -eq 1 ]; then queues=gpu,cpu; elif [ "$k" -eq 1 ]; then queues=gpu; else queues=cpu; fi
    (cd "$clone" && PYTHONPATH=$clone BYOL_PROJECT_DIR=$clone DAGSTER_HOME=$DAGSTER_HOME \
      launch "worker-$k" "$BIN/python" -m pipelines.workers --queues "$queues" --name "worker-$k")
  done
}

# The code server answers once it has loaded the definitions (a few seconds: torch imports).
wait_code_server() {
  for _ in $(seq 240); do
    "$BIN/dagster" api grpc-health-check -h 127.0.0.1 -p "$CODE_PORT" >/dev/null 2>&1 && return 0
    alive "$STATE/code-server.pid" || break
    sleep 0.5
  done
  echo "serve: error: the code server did not come up; see $STATE/logs/code-server.log" >&2
  exit 1
}

stop_all() {
  local pidfile
  stop_group webserver
  stop_group daemon
  stop_group code-server  # with the run workers it launched
  for pidfile in "$STATE"/worker-*.pid; do
    [ -e "$pidfile" ] && stop_group "$(basename "$pidfile" .pid)"
  done
  stop_group redis
  stop_group figures
}

case "${1:-start}" in
  start)
    local_pg && start_pg
    env_for_dagster
    cd "$ROOT"
    if [ "$WORKERS" -gt 0 ]; then
      local_redis && start_redis
      export BYOL_EXECUTOR=celery BYOL_CELERY_BROKER=${BYOL_CELERY_BROKER:-redis://127.0.0.1:$REDIS_PORT/0}
      # A run whose worker was lost fails at that step; the daemon runs it again once, from
      # the failure, on whichever worker is free (pretraining resumes from its checkpoint).
      printf 'run_retries:\n  enabled: true\n  max_retries: 1\n' >>"$DAGSTER_HOME/dagster.yaml"
      start_workers
    fi
    launch figures "$BIN/python" -m pipelines.figures "$BYOL_FIGURE_DIR" --host 127.0.0.1 --port "$FIGURE_PORT"
    launch code-server "$BIN/dagster" code-server start -m pipelines.definitions -h 127.0.0.1 -p "$CODE_PORT"
    wait_code_server
    launch daemon "$BIN/dagster-daemon" run -w "$STATE/workspace.yaml"
    launch webserver "$BIN/dagster-webserver" -h 127.0.0.1 -p "$UI_PORT" -w "$STATE/workspace.yaml"
    say "UI: http://127.0.0.1:$UI_PORT (DAGSTER_HOME=$DAGSTER_HOME); stop with \`make stop\`"
    ;;
  stop)
    stop_all
    local_pg && stop_pg
    ;;
  destroy)  # stop, then delete the state and the cluster (tests; a fresh start)
    stop_all
    if local_pg; then stop_pg; rm -rf "$(pg_data)"; fi
    rm -rf "$STATE"
    ;;
  status)
    for name in figures code-server daemon webserver $(cd "$STATE" && ls redis.pid worker-*.pid 2>/dev/null | sed 's/\.pid$//'); do
      if alive "$STATE/$name.pid"; then say "$name runs (pid $(cat "$STATE/$name.pid"))"; else say "$name is stopped"; fi
    done
    if local_pg; then as_pg "$(pg_bin)/pg_ctl" -D "$(pg_data)" status 2>/dev/null | head -1 || say "PostgreSQL is stopped"; fi
    ;;
  *) echo "usage: scripts/serve.sh start|stop|status|destroy" >&2; exit 2 ;;
esac
