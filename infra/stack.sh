#!/usr/bin/env bash
# The real local stack: Prefect server (SQLite) + UI, a process work pool with a worker, an S3
# endpoint on loopback (moto) with a bucket, and the nightly deployment on its schedule.
#   infra/stack.sh up      start everything (idempotent), print the URLs
#   infra/stack.sh deploy  (re)deploy the nightly schedule from params.yaml
#   infra/stack.sh down    stop what `up` started
set -euo pipefail
cd "$(dirname "$0")/.."
HOME_DIR=$(pwd)
BIN="$HOME_DIR/.venv/bin"
STATE="$HOME_DIR/.modelpress/stack"
PREFECT_PORT=${PREFECT_PORT:-4200}
S3_PORT=${S3_PORT:-9000}
POOL=modelpress-local
BUCKET=${MODELPRESS_BUCKET:-modelpress}
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"
export PREFECT_UI_API_URL="$PREFECT_API_URL"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false
# API calls retry (bounded, with backoff) on 429/502/503 and connection errors; add 500/504 too
export PREFECT_CLIENT_RETRY_EXTRA_CODES=500,504
mkdir -p "$STATE"

start() {  # name, command...
  local name=$1; shift
  if [[ -f "$STATE/$name.pid" ]] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
    echo "  $name already running (pid $(cat "$STATE/$name.pid"))"; return
  fi
  # its own process group (setsid), so `down` also stops what it spawned (flow-run processes)
  nohup setsid "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  echo "  $name started (log: $STATE/$name.log)"
}

wait_for() {  # url, what
  for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 1; done
  echo "error: $2 did not come up at $1 (see $STATE/*.log)" >&2; exit 1
}

deploy() {
  eval "$("$BIN/python" - <<'PY'
from tasks.config import load_params
s = load_params("params.yaml").schedule
print(f"export MODELPRESS_CRON='{s.cron}' MODELPRESS_TIMEZONE='{s.timezone}'")
PY
)"
  export MODELPRESS_HOME="$HOME_DIR"
  # Prefect 3.8.8's CLI registers the deployment, then fails a follow-up "active workers" query
  # (422: limit=None) against its own server; judge success by reading the deployment back.
  # One deployment per call: the failing query would otherwise end `--all` after the first one.
  : >"$STATE/deploy.log"
  for deployment in nightly/nightly benchmark/cloud-cpu benchmark/edge-cpu benchmark/cuda; do
    "$BIN/prefect" --no-prompt deploy --prefect-file infra/prefect.yaml --name "${deployment#*/}" >>"$STATE/deploy.log" 2>&1 || true
    if ! "$BIN/prefect" deployment inspect "$deployment" >/dev/null 2>&1; then
      echo "error: deploying $deployment from infra/prefect.yaml failed (see $STATE/deploy.log)" >&2; exit 1
    fi
    echo "  deployment $deployment"
  done
  echo "  nightly schedule: cron '$MODELPRESS_CRON' ($MODELPRESS_TIMEZONE), work pool $POOL"
}

case "${1:-up}" in
  up)
    echo "starting the ModelPress stack"
    if [[ -z "${AWS_ACCESS_KEY_ID:-}" || -z "${AWS_SECRET_ACCESS_KEY:-}" ]]; then
      cat <<MSG
  note: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set. The workers started now inherit
        this environment, so flow runs could not publish to the S3 endpoint. To publish there:
        infra/stack.sh down; export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...; infra/stack.sh up
MSG
    fi
    start prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    wait_for "$PREFECT_API_URL/health" "Prefect server"
    start s3 "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT"
    wait_for "http://127.0.0.1:${S3_PORT}/moto-api/" "S3 endpoint"
    AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-local} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-local} \
      "$BIN/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:${S3_PORT}', region_name='us-east-1').create_bucket(Bucket='$BUCKET')" 2>/dev/null || true
    for pool in "$POOL" modelpress-cloud-cpu modelpress-edge-cpu modelpress-cuda; do
      "$BIN/prefect" work-pool inspect "$pool" >/dev/null 2>&1 || "$BIN/prefect" work-pool create "$pool" --type process >/dev/null
    done
    start worker "$BIN/prefect" worker start --pool "$POOL"
    # local stand-ins for the cloud and edge runners (on a device: `pip install .[edge]` and
    # `prefect worker start --pool modelpress-edge-cpu` there); no cuda worker unless you start one
    start worker-cloud-cpu "$BIN/prefect" worker start --pool modelpress-cloud-cpu
    start worker-edge-cpu "$BIN/prefect" worker start --pool modelpress-edge-cpu
    deploy
    cat <<MSG

ModelPress stack is up:
  Prefect UI:   http://127.0.0.1:${PREFECT_PORT}
  S3 endpoint:  http://127.0.0.1:${S3_PORT} (bucket '$BUCKET'; any credentials)
  Run tonight's flow now:  PREFECT_API_URL=$PREFECT_API_URL $BIN/prefect deployment run nightly/nightly
  Publish to S3 instead of ./registry: set registry.uri: s3://$BUCKET/registry and
      registry.endpoint_url: http://127.0.0.1:${S3_PORT} in params.yaml
  Stop:  infra/stack.sh down
MSG
    ;;
  deploy) deploy ;;
  down)
    for name in worker worker-cloud-cpu worker-edge-cpu s3 prefect-server; do
      if [[ -f "$STATE/$name.pid" ]]; then
        pid=$(cat "$STATE/$name.pid")
        # the whole process group: a worker's flow-run processes too (a stack started before
        # `start` used setsid has no group of its own: then the process alone)
        group=-$pid; kill -0 -- "$group" 2>/dev/null || group=$pid
        kill -TERM -- "$group" 2>/dev/null || true
        # workers shut down gracefully but may wait on a server that is already gone
        for _ in $(seq 1 10); do kill -0 -- "$group" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "$group" 2>/dev/null || true
        rm -f "$STATE/$name.pid"; echo "  $name stopped"
      fi
    done ;;
  *) echo "usage: infra/stack.sh [up|deploy|down]" >&2; exit 2 ;;
esac
