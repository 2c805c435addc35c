#!/usr/bin/env bash
# The real local stack: Prefect server (SQLite, or PostgreSQL with --db postgres) + UI, a process work pool with a worker, an S3
# endpoint on loopback (moto) with a bucket, and the nightly deployment on its schedule.
#   infra/stack.sh up      start everything (idempotent), print the URLs
#   infra/stack.sh deploy  (re)deploy the nightly schedule from params.yaml
#   infra/stack.sh down    stop what `up` started
#   infra/stack.sh env     print the export lines a shell needs to talk to the stack (eval them):
#                          the ports it started with, wherever this shell's variables point
#   infra/stack.sh rotate-auth  stop, replace the credential, start again
#   infra/stack.sh up --db postgres  (or MODELPRESS_DB=postgres) the server's database is a local
#       PostgreSQL: initdb'd once into a data directory, started by pg_ctl on a free loopback port,
#       stopped by `down`. A managed Postgres instead: see infra/README.md. Needs PostgreSQL's
#       server binaries (Debian: apt-get install postgresql).
# Ports: PREFECT_PORT (default 4200), S3_PORT (9000), MODELPRESS_PG_PORT (a free one, then the
# same one on every later `up`). The ports a running stack started with are kept in $STATE/ports
# and win over the variables: `env` and `down` from another shell find the stack.
# Prefect's own state (its SQLite database, profiles, local results) is $STATE/prefect-home, mode
# 700: not ~/.prefect, which any other Prefect server of this user shares.
# The server is closed: HTTP basic auth (PREFECT_SERVER_API_AUTH_STRING) on the API, its
# websockets and the UI's login, and CSRF tokens on every state-changing request. The credential
# is generated on first `up` into $STATE/auth (mode 600, under the git-ignored .modelpress/).
set -euo pipefail
cd "$(dirname "$0")/.."
HOME_DIR=$(pwd)
# overridable for the tests, which run the real script with their own venv and state directory
BIN=${MODELPRESS_BIN:-"$HOME_DIR/.venv/bin"}
STATE=${MODELPRESS_STACK_STATE:-"$HOME_DIR/.modelpress/stack"}
PORTS_FILE="$STATE/ports"
if [[ -s "$PORTS_FILE" && -f "$STATE/prefect-server.pid" ]] && kill -0 "$(cat "$STATE/prefect-server.pid")" 2>/dev/null; then
  # shellcheck source=/dev/null
  source "$PORTS_FILE"  # the running stack's ports, whatever this shell says
fi
PREFECT_PORT=${PREFECT_PORT:-4200}
S3_PORT=${S3_PORT:-9000}
POOL=modelpress-local
FLEET_POOL=modelpress-fleet  # the fleet run waits for nightlies: never on their pool
export PREFECT_HOME="$STATE/prefect-home"
BUCKET=${MODELPRESS_BUCKET:-modelpress}
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"
export PREFECT_UI_API_URL="$PREFECT_API_URL"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false
# API calls retry (bounded, with backoff) on 429/502/503 and connection errors; add 500/504 too
export PREFECT_CLIENT_RETRY_EXTRA_CODES=500,504
AUTH_FILE="$STATE/auth"
COMMAND=${1:-up}; [[ $# -gt 0 ]] && shift
DB=${MODELPRESS_DB:-sqlite}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --db) DB=${2:-}; shift 2 || { echo "error: --db needs sqlite or postgres" >&2; exit 2; } ;;
    *) echo "error: unknown option $1 (expected --db sqlite|postgres)" >&2; exit 2 ;;
  esac
done
if [[ "$DB" != sqlite && "$DB" != postgres ]]; then
  echo "error: --db / MODELPRESS_DB: expected sqlite or postgres, got '$DB'" >&2; exit 2
fi
PG_PASSWORD_FILE="$STATE/postgres-password"
mkdir -p "$STATE" "$PREFECT_HOME"
chmod 700 "$STATE" "$PREFECT_HOME"  # logs, the credential, Prefect's database: the user's only

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

ensure_auth() {  # the credential, generated once; exported for this script's clients and workers
  if [[ ! -s "$AUTH_FILE" ]]; then
    # umask first: the file is never readable by others, not even between create and chmod
    (umask 077 && "$BIN/python" -c 'import secrets; print("modelpress:" + secrets.token_urlsafe(32))' >"$AUTH_FILE.new")
    mv "$AUTH_FILE.new" "$AUTH_FILE"
    echo "  generated the stack's credential (user 'modelpress') in $AUTH_FILE"
  fi
  chmod 600 "$AUTH_FILE"
  PREFECT_API_AUTH_STRING=$(<"$AUTH_FILE")
  export PREFECT_API_AUTH_STRING
}

# ---- PostgreSQL (--db postgres) -----------------------------------------------------------------
pg_bin() {  # the directory of Debian's postgresql binaries (initdb is not on PATH there)
  local initdb
  initdb=$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)
  [[ -n "$initdb" ]] || { echo "error: --db postgres: initdb not found (apt-get install postgresql)" >&2; exit 1; }
  dirname "$initdb"
}

as_db() {  # PostgreSQL refuses to run as root: as root, its tools run as the postgres user
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_dir() {  # the data directory; as root, one the postgres user can reach (not under $STATE, 700)
  if [[ -n "${MODELPRESS_PG_DIR:-}" ]]; then echo "$MODELPRESS_PG_DIR"
  elif [[ $(id -u) == 0 ]]; then echo "/var/lib/postgresql/modelpress-$(printf %s "$STATE" | sha256sum | cut -c1-12)"
  else echo "$STATE/postgres"; fi
}

start_postgres() {  # initdb once, pg_ctl start on a free loopback port, the prefect database
  local bin dir port password
  bin=$(pg_bin); dir=$(pg_dir)
  echo "$dir" >"$STATE/postgres.dir"
  if [[ ! -s "$dir/data/PG_VERSION" ]]; then
    mkdir -p "$dir"; [[ $(id -u) == 0 ]] && chown postgres: "$dir"; chmod 700 "$dir"
    (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$PG_PASSWORD_FILE")
    # the password reaches initdb through a file only the database user can read, deleted after
    (umask 077 && cp "$PG_PASSWORD_FILE" "$dir/.pwfile")
    [[ $(id -u) == 0 ]] && chown postgres: "$dir/.pwfile"
    as_db "$bin/initdb" -D "$dir/data" -U modelpress --pwfile="$dir/.pwfile" -A scram-sha-256 \
      -E UTF8 --no-instructions >"$STATE/postgres-initdb.log" 2>&1 \
      || { rm -f "$dir/.pwfile"; echo "error: initdb failed (see $STATE/postgres-initdb.log)" >&2; exit 1; }
    rm -f "$dir/.pwfile"
    echo "  initialised PostgreSQL in $dir/data (user modelpress, password in $PG_PASSWORD_FILE)"
  fi
  if as_db "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    port=$(cat "$STATE/postgres.port")
    echo "  postgres already running (port $port)"
  else
    # MODELPRESS_PG_PORT, else the port of the last `up` (a firewall rule or a client's config
    # stays right), else a free one
    port=${MODELPRESS_PG_PORT:-$(cat "$STATE/postgres.port" 2>/dev/null || true)}
    [[ -n "$port" ]] || port=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo "$port" >"$STATE/postgres.port"
    # loopback TCP only, no unix socket: nothing but this stack's server connects
    as_db "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null \
      || { echo "error: PostgreSQL did not start (see $dir/postgres.log)" >&2; exit 1; }
    echo "  postgres started on 127.0.0.1:$port (log: $dir/postgres.log)"
  fi
  password=$(<"$PG_PASSWORD_FILE")
  PGPASSWORD=$password PGPORT=$port "$BIN/python" - <<'PY'
import asyncio, os
import asyncpg

async def main() -> None:
    kw = dict(host="127.0.0.1", port=int(os.environ["PGPORT"]), user="modelpress",
              password=os.environ["PGPASSWORD"])
    conn = await asyncpg.connect(database="postgres", **kw)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'prefect'"):
            await conn.execute("CREATE DATABASE prefect")
    finally:
        await conn.close()

asyncio.run(main())
PY
  # the server alone gets it (the URL holds the password): see `start prefect-server` below
  DATABASE_URL="postgresql+asyncpg://modelpress:${password}@127.0.0.1:${port}/prefect"
}

stop_postgres() {
  [[ -f "$STATE/postgres.dir" ]] || return 0
  local dir; dir=$(cat "$STATE/postgres.dir")
  if [[ -s "$dir/data/PG_VERSION" ]] && as_db "$(pg_bin)/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_db "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    echo "  postgres stopped (data kept in $dir/data)"
  fi
}

deploy() {
  eval "$("$BIN/python" - <<'PY'
from tasks.params_file import load_params
s = load_params("params.yaml").schedule
print(f"export MODELPRESS_CRON='{s.cron}' MODELPRESS_TIMEZONE='{s.timezone}'")
PY
)"
  export MODELPRESS_HOME="$HOME_DIR"
  if ! "$BIN/prefect" --no-prompt deploy --prefect-file infra/prefect.yaml --all >"$STATE/deploy.log" 2>&1; then
    echo "error: prefect deploy --all from infra/prefect.yaml failed (see $STATE/deploy.log)" >&2; exit 1
  fi
  for deployment in nightly/nightly fleet/fleet benchmark/cloud-cpu benchmark/edge-cpu benchmark/cuda; do
    if ! "$BIN/prefect" deployment inspect "$deployment" >/dev/null 2>&1; then
      echo "error: deployment $deployment is not on the server after deploy (see $STATE/deploy.log)" >&2; exit 1
    fi
    echo "  deployment $deployment"
  done
  echo "  nightly schedule: cron '$MODELPRESS_CRON' ($MODELPRESS_TIMEZONE), work pool $POOL"
}

case "$COMMAND" in
  up)
    echo "starting the ModelPress stack (database: $DB)"
    if [[ -z "${AWS_ACCESS_KEY_ID:-}" || -z "${AWS_SECRET_ACCESS_KEY:-}" ]]; then
      cat <<MSG
  note: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set. The workers started now inherit
        this environment, so flow runs could not publish to the S3 endpoint. To publish there:
        infra/stack.sh down; export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...; infra/stack.sh up
MSG
    fi
    ensure_auth
    DATABASE_URL=""
    if [[ "$DB" == postgres ]]; then start_postgres; fi
    # the server alone gets the server-side settings (workers and flow runs need only the
    # client's); without a database URL, Prefect's default SQLite file under PREFECT_HOME
    (
      if [[ -n "$DATABASE_URL" ]]; then export PREFECT_API_DATABASE_CONNECTION_URL=$DATABASE_URL; fi
      PREFECT_SERVER_API_AUTH_STRING=$PREFECT_API_AUTH_STRING PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED=true \
        start prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    )
    wait_for "$PREFECT_API_URL/health" "Prefect server"
    printf 'PREFECT_PORT=%q\nS3_PORT=%q\n' "$PREFECT_PORT" "$S3_PORT" >"$PORTS_FILE"
    # a server left running by a stack.sh from before auth would still be open: don't go on with it
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "$PREFECT_API_URL/admin/version") != 401 ]]; then
      echo "error: the Prefect server at $PREFECT_API_URL answers without the credential: run infra/stack.sh down, then up" >&2; exit 1
    fi
    start s3 "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT"
    wait_for "http://127.0.0.1:${S3_PORT}/moto-api/" "S3 endpoint"
    AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-local} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-local} \
      "$BIN/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:${S3_PORT}', region_name='us-east-1').create_bucket(Bucket='$BUCKET')" 2>/dev/null || true
    for pool in "$POOL" "$FLEET_POOL" modelpress-cloud-cpu modelpress-edge-cpu modelpress-cuda; do
      "$BIN/prefect" work-pool inspect "$pool" >/dev/null 2>&1 || "$BIN/prefect" work-pool create "$pool" --type process >/dev/null
    done
    start worker "$BIN/prefect" worker start --pool "$POOL"
    start worker-fleet "$BIN/prefect" worker start --pool "$FLEET_POOL"
    # local stand-ins for the cloud and edge runners (on a device: `pip install .[edge]` and
    # `prefect worker start --pool modelpress-edge-cpu` there); no cuda worker unless you start one
    start worker-cloud-cpu "$BIN/prefect" worker start --pool modelpress-cloud-cpu
    start worker-edge-cpu "$BIN/prefect" worker start --pool modelpress-edge-cpu
    deploy
    cat <<MSG

ModelPress stack is up:
  Prefect UI:   http://127.0.0.1:${PREFECT_PORT}  (login: the contents of $AUTH_FILE,
                "user:password" on one line; the file is the only copy, never printed)
  S3 endpoint:  http://127.0.0.1:${S3_PORT} (bucket '$BUCKET'; any credentials)
  This shell's clients (prefect, modelpress):  eval "\$(infra/stack.sh env)"
  Run tonight's flow now:  eval "\$(infra/stack.sh env)" && $BIN/prefect deployment run nightly/nightly
  Publish to S3 instead of ./registry: set registry.uri: s3://$BUCKET/registry and
      registry.endpoint_url: http://127.0.0.1:${S3_PORT} in params.yaml
  Stop:  infra/stack.sh down    New credential:  infra/stack.sh rotate-auth
MSG
    ;;
  deploy) ensure_auth; deploy ;;
  env)
    if [[ ! -s "$AUTH_FILE" ]]; then
      echo "error: no credential at $AUTH_FILE: start the stack first (infra/stack.sh up)" >&2; exit 1
    fi
    # the secret stays in the file: the printed line reads it when the shell evaluates it
    printf 'export PREFECT_API_URL=%q\n' "$PREFECT_API_URL"
    printf 'export PREFECT_HOME=%q\n' "$PREFECT_HOME"
    printf 'export PREFECT_API_AUTH_STRING="$(cat %q)"\n' "$AUTH_FILE"
    ;;
  rotate-auth)
    # the server reads its auth string at start and every worker holds the old one: stop all,
    # replace the credential, start all. A run waiting for review is stopped too (rerun it).
    "$HOME_DIR/infra/stack.sh" down
    rm -f "$AUTH_FILE"
    exec "$HOME_DIR/infra/stack.sh" up --db "$DB" ;;
  down)
    for name in worker worker-fleet worker-cloud-cpu worker-edge-cpu s3 prefect-server; do
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
    done
    rm -f "$PORTS_FILE"
    stop_postgres ;;
  *) echo "usage: infra/stack.sh [up|deploy|down|env|rotate-auth] [--db sqlite|postgres]" >&2; exit 2 ;;
esac
