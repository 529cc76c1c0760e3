#!/usr/bin/env bash
# The pictures of the Dagster UI in docs/, taken as a user sees them: start `make serve` on
# ports and a state folder of its own, materialize every asset once through the UI's API (after
# `make run` DVC skips each stage, and each asset shows the figures of the outputs in place),
# capture the pages with headless Chromium, then stop and delete that state.
#
#   scripts/screenshots.sh        needs Debian's chromium (apt-get install -y chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || {
  echo "screenshots: error: chromium is not installed: apt-get install -y chromium" >&2; exit 1; }
export BYOL_SERVE_STATE=${BYOL_SERVE_STATE:-$(pwd)/.dagster/screenshots}
export BYOL_UI_PORT=${BYOL_UI_PORT:-3300} BYOL_PG_PORT=${BYOL_PG_PORT:-54339}
export BYOL_CODE_PORT=${BYOL_CODE_PORT:-4366} BYOL_FIGURE_PORT=${BYOL_FIGURE_PORT:-3301}
trap 'scripts/serve.sh destroy >/dev/null' EXIT
scripts/serve.sh start

.venv/bin/python - "$BYOL_UI_PORT" <<'PY'
import sys, time
from dagster_graphql import DagsterGraphQLClient

import requests

# `serve.sh start` returns once the webserver is launched, before it answers: wait for it.
deadline = time.monotonic() + 300
while True:
    try:
        if requests.get(f"http://127.0.0.1:{sys.argv[1]}/server_info", timeout=5).ok:
            break
    except requests.ConnectionError:
        pass
    if time.monotonic() > deadline:
        sys.exit("screenshots: error: the webserver did not answer within 300 s (see its log under $BYOL_SERVE_STATE)")
    time.sleep(2)
client = DagsterGraphQLClient("127.0.0.1", port_number=int(sys.argv[1]))
run = client.submit_job_execution("retrain", repository_location_name="pipelines.definitions",
                                  repository_name="__repository__")
while (status := client.get_run_status(run).value) not in ("SUCCESS", "FAILURE", "CANCELED"):
    time.sleep(2)
print(f"screenshots: Materialize all: {status}")
sys.exit(status != "SUCCESS")
PY

shoot() {  # page, file, window
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$3" \
    --virtual-time-budget=30000 --screenshot="$2" "http://127.0.0.1:$BYOL_UI_PORT/$1" >/dev/null 2>&1
  echo "screenshots: $2 ($1)"
}
shoot asset-groups docs/asset-graph.png 1600,800
shoot assets/byol_encoder docs/byol-encoder.png 1600,1700
shoot "assets/linear_eval?view=events" docs/linear-eval-ui.png 1600,1500
shoot "assets/image_embeddings?view=events" docs/embeddings-ui.png 1600,2000
shoot automation docs/automation.png 1600,600
