#!/usr/bin/env bash
# Runs the whole platform on this machine, no Docker: nats-server, PostgreSQL, Redis, the local
# OpenID Provider, resgate-rs, every booking service of the workspace and the web app.
#
#   ./setup.sh && ./run.sh            then open the printed URL; Ctrl-C stops everything
#   ./run.sh & ... kill -TERM $!      from a script: stop it with SIGTERM (a shell starts
#                                     background jobs with SIGINT ignored, and that cannot be undone)
#   ./run.sh --release                use release builds
#   ./run.sh --no-build               do not run cargo build / npm run build first
#
# Data lives in $RUN_DIR (default .local/): pg/ (initdb on first run), redis/, nats/ (JetStream),
# oidc/, logs/, pids/.
# Ports (env): NATS_PORT 4222, PG_PORT 5432, REDIS_PORT 6379, OIDC_PORT 8180, GATEWAY_PORT 8080,
# WEB_PORT 8000, ADMIN_PORT_BASE 9101 (service admin endpoints: base, base+1, ...).
# Other env is passed through to the services, e.g. BOOKING_HOLD_TTL_SECS=5, OIDC_ACCESS_TOKEN_TTL.
# Scale (env): SERVICE_INSTANCES (1) instances of every booking service and identity-auth (the
# second is named e.g. seats-2), GATEWAYS (1) gateways on GATEWAY_PORT, GATEWAY_PORT+1, ...
# (named gateway, gateway-2, ...). OIDC_TEST_ADMIN=1 enables the issuer's token minting (benchmarks).
# A crashed process is restarted after a second (its log says so); a second ./run.sh on the same
# RUN_DIR refuses to start; processes left over by a killed run.sh are stopped on the next start.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD

PROFILE=debug
BUILD=1
for arg in "$@"; do
  case $arg in
    --release) PROFILE=release ;;
    --no-build) BUILD=0 ;;
    -h | --help)
      sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown option: $arg (see ./run.sh --help)" >&2
      exit 2
      ;;
  esac
done

NATS_PORT=${NATS_PORT:-4222}
PG_PORT=${PG_PORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}
OIDC_PORT=${OIDC_PORT:-8180}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
WEB_PORT=${WEB_PORT:-8000}
ADMIN_PORT_BASE=${ADMIN_PORT_BASE:-9101}
SERVICE_INSTANCES=${SERVICE_INSTANCES:-1}
GATEWAYS=${GATEWAYS:-1}
[[ $SERVICE_INSTANCES =~ ^[1-9][0-9]?$ ]] || { echo "[run] error: SERVICE_INSTANCES must be 1..99" >&2; exit 2; }
[[ $GATEWAYS =~ ^[1-9][0-9]?$ ]] || { echo "[run] error: GATEWAYS must be 1..99" >&2; exit 2; }
RUN_DIR=${RUN_DIR:-$ROOT/.local}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/$PROFILE
HOST=127.0.0.1
ISSUER=http://$HOST:$OIDC_PORT/realms/booking
DB_URL=postgres://postgres@$HOST:$PG_PORT/booking

say() { printf '[run] %s\n' "$*"; }
die() {
  printf '[run] error: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- prerequisites
need() { command -v "$1" >/dev/null || die "$1 not found: run ./setup.sh first"; }
need nats-server
need redis-server
need node
need curl
PG_BIN=
for d in /usr/lib/postgresql/17/bin /usr/lib/postgresql/16/bin /usr/lib/postgresql/15/bin; do
  [[ -x $d/postgres ]] && PG_BIN=$d && break
done
[[ -n $PG_BIN ]] || die "PostgreSQL server not found under /usr/lib/postgresql: run ./setup.sh first"
[[ -d identity/oidc-issuer/node_modules ]] || die "identity/oidc-issuer/node_modules missing: run ./setup.sh first"

AS_ROOT=0
[[ $(id -u) -eq 0 ]] && AS_ROOT=1
as_pg() { if ((AS_ROOT)); then runuser -u postgres -- "$@"; else "$@"; fi; }

# ---------------------------------------------------------------- one run per RUN_DIR
PIDS_DIR=$RUN_DIR/pids
LOG_DIR=$RUN_DIR/logs
mkdir -p "$PIDS_DIR" "$LOG_DIR"
if [[ -f $RUN_DIR/run.pid ]]; then
  old=$(cat "$RUN_DIR/run.pid" 2>/dev/null || true)
  if [[ -n $old && $old != "$$" ]] && kill -0 "$old" 2>/dev/null && grep -q 'run.sh' "/proc/$old/cmdline" 2>/dev/null; then
    die "the platform is already running from $RUN_DIR (run.sh pid $old); stop it with Ctrl-C or kill $old"
  fi
  say "removing stale $RUN_DIR/run.pid (previous run did not stop cleanly)"
fi
echo $$ >"$RUN_DIR/run.pid"

# ---------------------------------------------------------------- process supervision
declare -A PID=()
NAMES=()
STOPPING=0

AWK_LINE=()
awk -W interactive 'BEGIN{}' </dev/null >/dev/null 2>&1 && AWK_LINE=(-W interactive)
# prefix NAME: "[name] line" on stdout and into logs/NAME.log.
prefix() {
  local tag
  tag=$(printf '[%s]' "$1")
  # mawk reads pipes in blocks unless interactive; gawk flushes per line anyway.
  awk "${AWK_LINE[@]}" -v tag="$tag" -v lf="$LOG_DIR/$1.log" '{ printf "%-10s %s\n", tag, $0; fflush(); print $0 >> lf; fflush(lf) }'
}

# launch NAME CMD...: runs CMD in the background with prefixed output; remembers how to restart.
declare -A CMD=()
launch() {
  local name=$1
  shift
  CMD[$name]=$(printf '%q ' "$@")
  [[ " ${NAMES[*]} " == *" $name "* ]] || NAMES+=("$name")
  start_proc "$name"
}
start_proc() {
  local name=$1
  eval "exec_cmd() { exec ${CMD[$name]}; }"
  exec_cmd > >(prefix "$name") 2>&1 </dev/null &
  PID[$name]=$!
  # The pid file records the executable so a later run only ever stops its own processes.
  sleep 0.05
  echo "${PID[$name]} $(readlink "/proc/${PID[$name]}/exe" 2>/dev/null || echo none)" >"$PIDS_DIR/$name.pid"
}

stop_all() {
  ((STOPPING)) && return
  STOPPING=1
  trap - INT TERM
  say "stopping…"
  local i name pid
  for ((i = ${#NAMES[@]} - 1; i >= 0; i--)); do
    name=${NAMES[$i]}
    pid=${PID[$name]:-}
    [[ -n $pid ]] || continue
    if [[ $name == postgres ]]; then
      as_pg "$PG_BIN/pg_ctl" stop -D "$RUN_DIR/pg/data" -m fast -w -t 20 >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    else
      kill -TERM "$pid" 2>/dev/null || true
    fi
    # Stop in reverse start order: each gets up to 10 s before the next.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name did not stop in 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    rm -f "$PIDS_DIR/$name.pid"
  done
  rm -f "$RUN_DIR/run.pid"
  say "stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT


# Processes a killed run.sh left behind: stop them (only ours: pid file + matching executable).
for f in "$PIDS_DIR"/*.pid; do
  [[ -e $f ]] || continue
  name=$(basename "$f" .pid)
  read -r pid exe <"$f" || true
  if [[ -n ${pid:-} ]] && kill -0 "$pid" 2>/dev/null && [[ $(readlink "/proc/$pid/exe" 2>/dev/null || true) == "${exe:-none}" ]]; then
    say "stopping $name (pid $pid) left over from a previous run"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
if [[ -f $RUN_DIR/pg/data/postmaster.pid ]]; then
  pgpid=$(head -1 "$RUN_DIR/pg/data/postmaster.pid")
  if kill -0 "$pgpid" 2>/dev/null && grep -q postgres "/proc/$pgpid/cmdline" 2>/dev/null; then
    say "stopping PostgreSQL (pid $pgpid) left over from a previous run"
    as_pg "$PG_BIN/pg_ctl" stop -D "$RUN_DIR/pg/data" -m fast -w -t 20 >/dev/null || true
  fi
fi

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
busy=()
for p in NATS_PORT PG_PORT REDIS_PORT OIDC_PORT GATEWAY_PORT WEB_PORT; do
  port_busy "${!p}" && busy+=("$p=${!p}")
done
for ((g = 1; g < GATEWAYS; g++)); do
  port_busy $((GATEWAY_PORT + g)) && busy+=("GATEWAY_PORT+$g=$((GATEWAY_PORT + g))")
done
if ((${#busy[@]})); then
  rm -f "$RUN_DIR/run.pid"
  die "port(s) already in use: ${busy[*]}. Stop what uses them (ss -ltnp) or choose others, e.g. ${busy[0]%%=*}=$((${busy[0]#*=} + 1000)) ./run.sh"
fi

# ---------------------------------------------------------------- build
WANTED=(catalog seats pricing tickets reports identity-auth resgate-rs web)
mapfile -t MEMBERS < <(cargo metadata --no-deps --format-version 1 2>/dev/null |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const p of JSON.parse(s).packages)if(p.targets.some(t=>t.kind.includes("bin")))console.log(p.name)})')
PACKAGES=()
for w in "${WANTED[@]}"; do
  for m in "${MEMBERS[@]}"; do [[ $m == "$w" ]] && PACKAGES+=("$w"); done
done
((${#PACKAGES[@]})) || die "no service packages found (cargo metadata failed?)"
APP=services/web/app
if ((BUILD)); then
  say "building ${PACKAGES[*]} ($PROFILE)"
  flags=()
  [[ $PROFILE == release ]] && flags+=(--release)
  for p in "${PACKAGES[@]}"; do flags+=(-p "$p"); done
  cargo build --quiet "${flags[@]}" || die "cargo build failed"
  if [[ -d $APP/node_modules ]]; then
    if [[ ! -f $APP/dist/index.html ]] || [[ -n $(find "$APP/src" "$APP/index.html" "$APP/public" -newer "$APP/dist/index.html" -print -quit) ]]; then
      say "building the front end"
      (cd "$APP" && npm run --silent build >/dev/null) || die "npm run build failed in $APP"
    fi
  fi
fi
for p in "${PACKAGES[@]}"; do [[ -x $BIN/$p ]] || die "$BIN/$p missing: run ./setup.sh (or drop --no-build)"; done
[[ -f $APP/dist/index.html ]] || die "$APP/dist missing: run ./setup.sh"
has() { [[ " ${PACKAGES[*]} " == *" $1 "* ]]; }

# wait_for NAME what TIMEOUT_S CHECK...: polls CHECK until it succeeds (bounded).
wait_for() {
  local name=$1 what=$2 timeout=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      die "$name exited during start-up; see the [$name] lines above or $LOG_DIR/$name.log"
    fi
    ((SECONDS < deadline)) || die "$name: $what not ready after ${timeout}s; see $LOG_DIR/$name.log"
    sleep 0.2
  done
}
healthy() { curl -fsS --max-time 2 "$1" >/dev/null; }

# ---------------------------------------------------------------- infrastructure
# JetStream keeps the BOOKING_EVENTS stream (created by the services) in $RUN_DIR/nats.
mkdir -p "$RUN_DIR/nats"
launch nats nats-server -a "$HOST" -p "$NATS_PORT" -js -sd "$RUN_DIR/nats"
wait_for nats "port $NATS_PORT" 20 port_busy "$NATS_PORT"

PG_DIR=$RUN_DIR/pg
if [[ ! -f $PG_DIR/data/PG_VERSION ]]; then
  say "initializing PostgreSQL in $PG_DIR/data (first run)"
  rm -rf "$PG_DIR/data"
  mkdir -p "$PG_DIR/data"
  if ((AS_ROOT)); then chown -R postgres:postgres "$PG_DIR"; fi
  as_pg "$PG_BIN/initdb" -A trust -U postgres -E UTF8 --no-sync -D "$PG_DIR/data" >"$LOG_DIR/initdb.log" 2>&1 ||
    die "initdb failed; see $LOG_DIR/initdb.log"
fi
if ((AS_ROOT)); then chown -R postgres:postgres "$PG_DIR"; fi
if ((AS_ROOT)); then
  launch postgres runuser -u postgres -- "$PG_BIN/postgres" -D "$PG_DIR/data" -h "$HOST" -p "$PG_PORT" -c unix_socket_directories= -c fsync=off -c max_connections=200
else
  launch postgres "$PG_BIN/postgres" -D "$PG_DIR/data" -h "$HOST" -p "$PG_PORT" -c unix_socket_directories= -c fsync=off -c max_connections=200
fi
PSQL=(psql -h "$HOST" -p "$PG_PORT" -U postgres -qtA)
wait_for postgres "port $PG_PORT" 60 "${PSQL[@]}" -c 'SELECT 1'
if [[ $("${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'booking'") != 1 ]]; then
  "${PSQL[@]}" -c 'CREATE DATABASE booking' || die "could not create the booking database"
fi

mkdir -p "$RUN_DIR/redis"
# Append-only file, fsynced every second (docs/API.md says why not `always`): a crash loses at
# most the last second of holds, and the seats service resets every seat map when it sees Redis
# restarted, so the maps show what survived.
launch redis redis-server --bind "$HOST" --port "$REDIS_PORT" --dir "$RUN_DIR/redis" --save 60 1 \
  --appendonly yes --appendfsync everysec --protected-mode yes
wait_for redis "port $REDIS_PORT" 20 port_busy "$REDIS_PORT"

# The realm allows redirects to port 8000; for another WEB_PORT a local copy adds that port.
mkdir -p "$RUN_DIR/oidc"
REALM=$RUN_DIR/oidc/realm-booking.json
node - "$ROOT/identity/keycloak/realm-booking.json" "$REALM" "$WEB_PORT" <<'EOF'
const fs = require('fs');
const [src, dst, port] = process.argv.slice(2);
const realm = JSON.parse(fs.readFileSync(src, 'utf8'));
const origins = [`http://127.0.0.1:${port}`, `http://localhost:${port}`];
for (const c of realm.clients || []) {
  if (c.clientId !== 'booking-web') continue;
  c.redirectUris = [...new Set([...(c.redirectUris || []), ...origins.map((o) => `${o}/*`)])];
  c.webOrigins = [...new Set([...(c.webOrigins || []), ...origins])];
  c.attributes = c.attributes || {};
  const post = (c.attributes['post.logout.redirect.uris'] || '').split('##').filter(Boolean);
  c.attributes['post.logout.redirect.uris'] = [...new Set([...post, ...origins.map((o) => `${o}/*`)])].join('##');
}
fs.writeFileSync(dst, JSON.stringify(realm, null, 2));
EOF
launch oidc node identity/oidc-issuer/bin/oidc-issuer.js --host "$HOST" --port "$OIDC_PORT" --realm-file "$REALM" --data-dir "$RUN_DIR/oidc"
wait_for oidc "discovery" 30 healthy "$ISSUER/.well-known/openid-configuration"

# ---------------------------------------------------------------- services
export BOOKING_NATS_URL=nats://$HOST:$NATS_PORT
export BOOKING_DATABASE_URL=$DB_URL
export BOOKING_REDIS_URL=redis://$HOST:$REDIS_PORT/
export RUST_LOG=${RUST_LOG:-info}
admin_port=$ADMIN_PORT_BASE
declare -A HEALTH=()
# start_service NAME BINARY [VAR=value...]: one instance (NAME is seats, seats-2, ...).
start_service() {
  local name=$1 bin=$2
  shift 2
  local addr=$HOST:$admin_port
  admin_port=$((admin_port + 1))
  port_busy "${addr#*:}" && die "admin port ${addr#*:} of $name is in use; set ADMIN_PORT_BASE"
  launch "$name" env BOOKING_ADMIN_ADDR="$addr" IDENTITY_ADMIN_ADDR="$addr" "$@" "$BIN/$bin"
  HEALTH[$name]=http://$addr/healthz
}
# instance_name SERVICE K: the first instance keeps the service's name.
instance_name() { if (($2 == 1)); then echo "$1"; else echo "$1-$2"; fi; }
# catalog first: it migrates the schema and seeds the departures the others read.
if has catalog; then
  start_service catalog catalog
  wait_for catalog /healthz 90 healthy "${HEALTH[catalog]}"
  for ((k = 2; k <= SERVICE_INSTANCES; k++)); do start_service "catalog-$k" catalog; done
fi
STARTED=()
for ((k = 1; k <= SERVICE_INSTANCES; k++)); do
  if has identity-auth; then
    start_service "$(instance_name identity-auth $k)" identity-auth IDENTITY_NATS_URL="$BOOKING_NATS_URL" IDENTITY_ISSUER_URL="$ISSUER"
    STARTED+=("$(instance_name identity-auth $k)")
  fi
  for s in seats pricing tickets reports; do
    if has "$s"; then
      start_service "$(instance_name "$s" $k)" "$s"
      STARTED+=("$(instance_name "$s" $k)")
    fi
  done
done
if has catalog; then for ((k = 2; k <= SERVICE_INSTANCES; k++)); do STARTED+=("catalog-$k"); done; fi
for s in "${STARTED[@]}"; do wait_for "$s" /healthz 60 healthy "${HEALTH[$s]}"; done

# ---------------------------------------------------------------- gateway and web app
GW_FLAGS=(-n "nats://$HOST:$NATS_PORT" -i "$HOST")
has identity-auth && GW_FLAGS+=(--headauth identity.session.header --wsheadauth identity.session.wsheader)
for ((g = 0; g < GATEWAYS; g++)); do
  name=$(instance_name gateway $((g + 1)))
  launch "$name" "$BIN/resgate-rs" "${GW_FLAGS[@]}" -p $((GATEWAY_PORT + g))
  wait_for "$name" "port $((GATEWAY_PORT + g))" 30 port_busy $((GATEWAY_PORT + g))
done

launch web env WEB_ADDR="$HOST:$WEB_PORT" WEB_GATEWAY_URL="ws://$HOST:$GATEWAY_PORT" WEB_OIDC_ISSUER="$ISSUER" \
  WEB_OIDC_CLIENT_ID="${WEB_OIDC_CLIENT_ID:-booking-web}" WEB_STATIC_DIR="$ROOT/$APP/dist" "$BIN/web"
wait_for web /healthz 20 healthy "http://$HOST:$WEB_PORT/healthz"

cat <<EOF
[run] ================================================================
[run]  Platform ready:  http://$HOST:$WEB_PORT
[run]  Demo users:      alice / alice, bob / bob (customers), olivia / olivia (operator)
[run]  Test cards:      4242 4242 4242 4242 (approved), 4000 0000 0000 0002 (declined)
[run]  Gateway ws://$HOST:$GATEWAY_PORT · issuer $ISSUER · logs $LOG_DIR
[run]  Services: ${PACKAGES[*]}$(has identity-auth || echo ' (no identity-auth in this workspace: sign-in to RES is unavailable)')
[run]  Press Ctrl-C to stop everything.
[run] ================================================================
EOF
echo "PLATFORM_READY http://$HOST:$WEB_PORT"

# ---------------------------------------------------------------- supervise
declare -A RESTARTS=()
while true; do
  sleep 1 &
  wait $! || true
  for name in "${NAMES[@]}"; do
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      ((STOPPING)) && break 2
      wait "${PID[$name]}" 2>/dev/null && code=0 || code=$?
      RESTARTS[$name]=$((${RESTARTS[$name]:-0} + 1))
      say "$name exited (status $code); restarting (restart #${RESTARTS[$name]})"
      start_proc "$name"
    fi
  done
done
