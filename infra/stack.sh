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
# The stack is closed, and knows who is asking: Caddy (Debian's, `make caddy`) is its front door
# on PREFECT_PORT and checks each person's and worker's own credential (bcrypt, HTTP basic auth);
# the review guard (tasks/stack_guard.py) decides the requests where the principal matters (a
# worker cannot resume or cancel a paused run; a reviewer approves as their login); the Prefect
# server behind them listens on a port of its own with an auth string only Caddy and the guard
# hold, and CSRF tokens on every state-changing request.
#   infra/stack.sh user add NAME --role reviewer|worker   a credential for NAME (new password if
#       NAME exists) in $STATE/credentials/NAME, mode 600; Caddy restarts to know it
#   infra/stack.sh user remove NAME | user list
# `up` creates the `worker` credential (the workers', the deployments', the operator's scripts').
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
SERVER_PORT=${SERVER_PORT:-}  # the Prefect server's own port (behind Caddy): a free one
GUARD_PORT=${GUARD_PORT:-}
CADDY=${MODELPRESS_CADDY:-$(command -v caddy || echo "$HOME_DIR/.tools/caddy/usr/bin/caddy")}
POOL=modelpress-local
FLEET_POOL=modelpress-fleet  # the fleet run waits for nightlies: never on their pool
export PREFECT_HOME="$STATE/prefect-home"
BUCKET=${MODELPRESS_BUCKET:-modelpress}
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"
export PREFECT_UI_API_URL="$PREFECT_API_URL"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false
# API calls retry (bounded, with backoff) on 429/502/503 and connection errors; add 500/504 too
export PREFECT_CLIENT_RETRY_EXTRA_CODES=500,504
UPSTREAM_AUTH="$STATE/upstream-auth"  # the Prefect server's own auth string: Caddy and the guard
PROXY_SECRET="$STATE/proxy-secret"    # what Caddy shows the guard
WORKER_CREDENTIAL="$STATE/credentials/worker"
COMMAND=${1:-up}; [[ $# -gt 0 ]] && shift
if [[ "$COMMAND" == user ]]; then
  mkdir -p "$STATE"; chmod 700 "$STATE"
  action=${1:-}; shift || true
  case "$action" in
    add|remove|list) "$BIN/python" -m tasks.stack_users "$action" "$@" --state "$STATE" ;;
    *) echo "usage: infra/stack.sh user add NAME --role reviewer|worker | user remove NAME | user list" >&2; exit 2 ;;
  esac
  # a running front door learns the change now: Caddy restarts with the new Caddyfile
  if [[ "$action" != list && -f "$STATE/caddy.pid" ]] && kill -0 "$(cat "$STATE/caddy.pid")" 2>/dev/null; then
    exec "$HOME_DIR/infra/stack.sh" restart-caddy
  fi
  exit 0
fi
DB=${MODELPRESS_DB:-sqlite}
ARG=""  # env's NAME
if [[ "$COMMAND" == env && $# -gt 0 && "$1" != --* ]]; then ARG=$1; shift; fi
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

secret() {  # file: a random secret, generated once, never printed
  if [[ ! -s "$1" ]]; then
    # umask first: the file is never readable by others, not even between create and chmod
    (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$1.new")
    mv "$1.new" "$1"
  fi
  chmod 600 "$1"
}

ensure_auth() {  # the server's and the proxy's secrets, the worker credential; exported for
  # this script's own clients (work pools, deployments) and the workers it starts
  secret "$UPSTREAM_AUTH"
  secret "$PROXY_SECRET"
  if [[ ! -s "$WORKER_CREDENTIAL" ]]; then
    "$BIN/python" -m tasks.stack_users add worker --role worker --state "$STATE" >/dev/null
    echo "  created the workers' credential (user 'worker') in $WORKER_CREDENTIAL"
  fi
  PREFECT_API_AUTH_STRING=$(<"$WORKER_CREDENTIAL")
  export PREFECT_API_AUTH_STRING
}

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_front_door() {  # the Caddyfile from users.json, then Caddy on PREFECT_PORT
  [[ -x "$CADDY" ]] || { echo "error: caddy not found at $CADDY: run make caddy (Debian's caddy, unpacked into .tools/) or set MODELPRESS_CADDY" >&2; exit 1; }
  "$BIN/python" -m tasks.stack_users caddyfile --state "$STATE" --port "$PREFECT_PORT" \
    --upstream-port "$SERVER_PORT" --guard-port "$GUARD_PORT"
  "$CADDY" validate --config "$STATE/Caddyfile" --adapter caddyfile >"$STATE/caddy-validate.log" 2>&1 \
    || { echo "error: the generated Caddyfile does not validate (see $STATE/caddy-validate.log)" >&2; exit 1; }
  # Caddy autosaves its running config (the secrets in it) under XDG_CONFIG_HOME: keep it in $STATE
  XDG_CONFIG_HOME="$STATE/caddy" XDG_DATA_HOME="$STATE/caddy" \
    start caddy "$CADDY" run --config "$STATE/Caddyfile" --adapter caddyfile
}

stop_one() {  # name: its whole process group, TERM then KILL
  [[ -f "$STATE/$1.pid" ]] || return 0
  local pid group; pid=$(cat "$STATE/$1.pid")
  # the whole process group: a worker's flow-run processes too (a stack started before
  # `start` used setsid has no group of its own: then the process alone)
  group=-$pid; kill -0 -- "$group" 2>/dev/null || group=$pid
  kill -TERM -- "$group" 2>/dev/null || true
  # workers shut down gracefully but may wait on a server that is already gone
  for _ in $(seq 1 10); do kill -0 -- "$group" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "$group" 2>/dev/null || true
  rm -f "$STATE/$1.pid"; echo "  $1 stopped"
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
    SERVER_PORT=${SERVER_PORT:-$(free_port)}
    GUARD_PORT=${GUARD_PORT:-$(free_port)}
    # the server alone gets the server-side settings (workers and flow runs need only the
    # client's); without a database URL, Prefect's default SQLite file under PREFECT_HOME. Its
    # UI calls the API through the front door.
    (
      if [[ -n "$DATABASE_URL" ]]; then export PREFECT_API_DATABASE_CONNECTION_URL=$DATABASE_URL; fi
      PREFECT_SERVER_API_AUTH_STRING=$(<"$UPSTREAM_AUTH") PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED=true \
        start prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$SERVER_PORT"
    )
    wait_for "http://127.0.0.1:${SERVER_PORT}/api/health" "Prefect server"
    printf 'PREFECT_PORT=%q\nS3_PORT=%q\nSERVER_PORT=%q\nGUARD_PORT=%q\n' \
      "$PREFECT_PORT" "$S3_PORT" "$SERVER_PORT" "$GUARD_PORT" >"$PORTS_FILE"
    start guard "$BIN/python" -m tasks.stack_guard --state "$STATE" --port "$GUARD_PORT" --upstream-port "$SERVER_PORT"
    start_front_door
    wait_for "$PREFECT_API_URL/health" "the front door (Caddy)"
    # a server left running by a stack.sh from before auth would still be open: don't go on with it
    for url in "$PREFECT_API_URL/admin/version" "http://127.0.0.1:${SERVER_PORT}/api/admin/version"; do
      if [[ $(curl -s -o /dev/null -w '%{http_code}' "$url") != 401 ]]; then
        echo "error: $url answers without a credential: run infra/stack.sh down, then up" >&2; exit 1
      fi
    done
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
  Prefect UI:   http://127.0.0.1:${PREFECT_PORT}  (log in with your own credential: one line
                "name:password" in $STATE/credentials/<name>, never printed)
  People:       infra/stack.sh user add NAME --role reviewer   (then hand over that file)
  S3 endpoint:  http://127.0.0.1:${S3_PORT} (bucket '$BUCKET'; any credentials)
  This shell's clients (prefect, modelpress):  eval "\$(infra/stack.sh env [NAME])"
  Run tonight's flow now:  eval "\$(infra/stack.sh env)" && $BIN/prefect deployment run nightly/nightly
  Publish to S3 instead of ./registry: set registry.uri: s3://$BUCKET/registry and
      registry.endpoint_url: http://127.0.0.1:${S3_PORT} in params.yaml
  Stop:  infra/stack.sh down    New secrets for the server and workers:  infra/stack.sh rotate-auth
MSG
    ;;
  deploy) ensure_auth; deploy ;;
  restart-caddy)
    stop_one caddy >/dev/null
    start_front_door >/dev/null
    wait_for "$PREFECT_API_URL/health" "the front door (Caddy)"
    echo "  caddy restarted with $(grep -c . <("$BIN/python" -m tasks.stack_users list --state "$STATE")) users" ;;
  env)
    who=${ARG:-worker}
    credential="$STATE/credentials/$who"
    if [[ ! -s "$credential" ]]; then
      echo "error: no credential at $credential: start the stack first (infra/stack.sh up) or add the user (infra/stack.sh user add $who --role reviewer)" >&2; exit 1
    fi
    # the secret stays in the file: the printed line reads it when the shell evaluates it
    printf 'export PREFECT_API_URL=%q\n' "$PREFECT_API_URL"
    printf 'export PREFECT_HOME=%q\n' "$PREFECT_HOME"
    printf 'export PREFECT_API_AUTH_STRING="$(cat %q)"\n' "$credential"
    ;;
  rotate-auth)
    # the server reads its auth string at start and every worker holds the old one: stop all,
    # replace the server's, the proxy's and the workers' secrets, start all. People keep theirs
    # (`user add NAME` gives one a new password). A run waiting for review is stopped too.
    "$HOME_DIR/infra/stack.sh" down
    rm -f "$UPSTREAM_AUTH" "$PROXY_SECRET" "$WORKER_CREDENTIAL"
    exec "$HOME_DIR/infra/stack.sh" up --db "$DB" ;;
  down)
    for name in worker worker-fleet worker-cloud-cpu worker-edge-cpu caddy guard s3 prefect-server; do
      stop_one "$name"
    done
    rm -f "$PORTS_FILE"
    stop_postgres ;;
  *) echo "usage: infra/stack.sh [up|deploy|down|env [NAME]|rotate-auth|user ...] [--db sqlite|postgres]" >&2; exit 2 ;;
esac
