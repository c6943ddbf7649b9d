#!/usr/bin/env bash
# The booking platform under load (`resbench sale`, issue 15). Each scenario starts the whole
# platform with run.sh (release builds, SERVICE_INSTANCES of every booking service and of
# identity-auth, one or two gateways) in a fresh data directory on its own ports, runs the load
# through the gateway(s) as distinct signed-in users, audits PostgreSQL and Redis, and stops it.
#
#   scripts/bench-sale.sh                         # a a2 b c, as issue 15 sets them
#   SCENARIOS="a" scripts/bench-sale.sh           # sale day only
#   DURATION=120 SCENARIOS="b c" scripts/bench-sale.sh
#
# Scenarios:
#   a   sale day: BUYERS_A buyers and WATCHERS_A watchers on one departure (254 seats), until sold out
#   a2  the same through two gateways
#   b   steady state: DEPARTURES_B departures, BUYERS_B buyers, WATCHERS_B watchers, DURATION s;
#       buyers cancel CANCEL_PCT_B % of their orders, so the departures do not sell out
#   c   b with one seats instance killed (SIGKILL) at half time (run.sh restarts it after ~1 s)
#
# Environment (defaults in brackets):
#   SCENARIOS [a a2 b c]  OUT [/tmp/bench-sale-<time>]  PORT_BASE [31000]  THREADS [2]
#   BUYERS_A [2000] WATCHERS_A [10000] SALE_LIMIT [600]: the sale day's upper bound in seconds
#   BUYERS_B [1000] WATCHERS_B [20000] DEPARTURES_B [50] DURATION [600] CANCEL_PCT_B [100]
#   THINK_A [200,1000] THINK_B [100,400]: think times in ms; SERVICE_INSTANCES [2]
#   BUILD [1]: 0 = use the release binaries as they are
# Results: OUT/<scenario>.json (resbench --json), OUT/<scenario>.platform.log and
# OUT/<scenario>.pg_commits (PostgreSQL's commit count before and after); the summary
# table is printed at the end. A run prints its audit: it must say "clean".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SCENARIOS=${SCENARIOS:-a a2 b c}
OUT=${OUT:-/tmp/bench-sale-$(date +%Y%m%d-%H%M%S)}
PORT_BASE=${PORT_BASE:-31000}
THREADS=${THREADS:-2}
BUYERS_A=${BUYERS_A:-2000}
WATCHERS_A=${WATCHERS_A:-10000}
SALE_LIMIT=${SALE_LIMIT:-600}
BUYERS_B=${BUYERS_B:-1000}
WATCHERS_B=${WATCHERS_B:-20000}
DEPARTURES_B=${DEPARTURES_B:-50}
DURATION=${DURATION:-600}
CANCEL_PCT_B=${CANCEL_PCT_B:-100}
THINK_A=${THINK_A:-200,1000}
THINK_B=${THINK_B:-100,400}
SERVICE_INSTANCES=${SERVICE_INSTANCES:-2}
BUILD=${BUILD:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESBENCH=$TARGET_DIR/release/resbench
mkdir -p "$OUT"

say() { printf '[bench-sale] %s\n' "$*"; }

if ((BUILD)); then
  say "building (release)"
  cargo build --release --quiet -p catalog -p seats -p pricing -p tickets -p reports -p identity-auth \
    -p resgate-rs -p web -p resbench
fi

# 20,000 watchers and 1,000 buyers are 21,000 sockets on each side of loopback.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

NATS_PORT=$PORT_BASE PG_PORT=$((PORT_BASE + 1)) REDIS_PORT=$((PORT_BASE + 2)) OIDC_PORT=$((PORT_BASE + 3))
WEB_PORT=$((PORT_BASE + 4)) GATEWAY_PORT=$((PORT_BASE + 10)) ADMIN_PORT_BASE=$((PORT_BASE + 100))
RUN_PID=

stop_platform() {
  if [[ -n $RUN_PID ]] && kill -0 "$RUN_PID" 2>/dev/null; then
    kill -TERM "$RUN_PID" 2>/dev/null || true
    for _ in $(seq 600); do kill -0 "$RUN_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  RUN_PID=
}
trap stop_platform EXIT

# start_platform NAME GATEWAYS: a fresh platform; returns once it is ready.
start_platform() {
  local name=$1 gateways=$2
  RUN_DIR=$(mktemp -d "/tmp/bench-sale-run.XXXXXX")
  chmod 755 "$RUN_DIR"
  LOG=$OUT/$name.platform.log
  RUN_DIR=$RUN_DIR NATS_PORT=$NATS_PORT PG_PORT=$PG_PORT REDIS_PORT=$REDIS_PORT OIDC_PORT=$OIDC_PORT \
    WEB_PORT=$WEB_PORT GATEWAY_PORT=$GATEWAY_PORT ADMIN_PORT_BASE=$ADMIN_PORT_BASE \
    SERVICE_INSTANCES=$SERVICE_INSTANCES GATEWAYS=$gateways OIDC_TEST_ADMIN=1 RUST_LOG=${RUST_LOG:-warn} \
    ./run.sh --release --no-build >"$LOG" 2>&1 &
  RUN_PID=$!
  for _ in $(seq 1800); do
    grep -q PLATFORM_READY "$LOG" && return 0
    kill -0 "$RUN_PID" 2>/dev/null || { tail -20 "$LOG" >&2; say "run.sh exited before ready"; exit 1; }
    sleep 0.1
  done
  say "the platform was not ready within 180 s (see $LOG)"
  exit 1
}

# proc_args: --proc NAME=PID for every process run.sh started.
proc_args() {
  local f
  for f in "$RUN_DIR"/pids/*.pid; do
    [[ $(basename "$f" .pid) == web ]] && continue
    printf -- '--proc %s=%s ' "$(basename "$f" .pid)" "$(cut -d' ' -f1 "$f")"
  done
}

# run_resbench NAME GATEWAYS ARGS...
run_resbench() {
  local name=$1 gateways=$2
  shift 2
  local extra=() g
  for ((g = 1; g < gateways; g++)); do extra+=(--also-gateway "127.0.0.1:$((GATEWAY_PORT + g))"); done
  local commits0
  commits0=$(pg_commits)
  # shellcheck disable=SC2046
  "$RESBENCH" --json --threads "$THREADS" --nats "nats://127.0.0.1:$NATS_PORT" --gateway "127.0.0.1:$GATEWAY_PORT" \
    sale --issuer "http://127.0.0.1:$OIDC_PORT/realms/booking" \
    --database-url "postgres://postgres@127.0.0.1:$PG_PORT/booking" --redis-url "redis://127.0.0.1:$REDIS_PORT/" \
    --started-file "$OUT/$name.started" $(proc_args) "${extra[@]}" "$@" >"$OUT/$name.json"
  echo "$commits0 $(pg_commits)" >"$OUT/$name.pg_commits"
}

# Transactions committed in the booking database so far (PostgreSQL's own count).
pg_commits() {
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qtA -d booking \
    -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'booking'"
}

scenario() {
  local s=$1
  case $s in
    a | a2)
      local gws=1
      [[ $s == a2 ]] && gws=2
      start_platform "$s" "$gws"
      say "$s: sale day, $BUYERS_A buyers, $WATCHERS_A watchers, $gws gateway(s)"
      run_resbench "$s" "$gws" --buyers "$BUYERS_A" --watchers "$WATCHERS_A" --departures 1 --until-sold-out \
        --duration "$SALE_LIMIT" --think-ms "$THINK_A" --cancel-pct 0
      ;;
    b | c)
      start_platform "$s" 1
      say "$s: steady state, $DEPARTURES_B departures, $BUYERS_B buyers, $WATCHERS_B watchers, ${DURATION} s"
      local killer=
      if [[ $s == c ]]; then
        # Half way through the run: the tool's set-up (tokens, 21,000 connections) comes first.
        (
          until [[ -s $OUT/$s.started ]]; do sleep 0.5; done
          sleep "$((DURATION / 2))"
          pid=$(cut -d' ' -f1 "$RUN_DIR/pids/seats.pid")
          say "c: kill -9 seats (pid $pid)"
          kill -9 "$pid"
        ) &
        killer=$!
      fi
      run_resbench "$s" 1 --buyers "$BUYERS_B" --watchers "$WATCHERS_B" --departures "$DEPARTURES_B" \
        --duration "$DURATION" --think-ms "$THINK_B" --cancel-pct "$CANCEL_PCT_B"
      if [[ -n $killer ]]; then kill "$killer" 2>/dev/null || true; fi
      ;;
    *)
      say "unknown scenario $s"
      exit 2
      ;;
  esac
  stop_platform
  rm -rf "$RUN_DIR"
}

for s in $SCENARIOS; do scenario "$s"; done

python3 - "$OUT" $SCENARIOS <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
ms = lambda us: f"{us / 1000:.1f}"
for s in sys.argv[2:]:
    f = out / f"{s}.json"
    if not f.exists():
        continue
    r = json.loads(f.read_text())["result"]
    a = r["actions"]
    print(f"\n== {s}: {r['mode']}, {r['buyers_signed_in']} buyers, {r['watchers']} watchers, {r['gateways']} gateway(s), {r['seconds']:.1f} s")
    print(f"bookings {r['bookings']} ({r['bookings_per_second']:.1f}/s), holds {r['holds']} ({r['holds_per_second']:.1f}/s), "
          f"hold-or-release {r['hold_or_release_per_second']:.1f}/s, sold out after {r['sold_out_after_seconds']}")
    for k in ("hold", "release", "purchase", "search", "open_map", "my_tickets", "cancel"):
        l = a[k]
        print(f"  {k:<10} n={l['count']:<7} p50 {ms(l['p50_us'])} ms  p99 {ms(l['p99_us'])} ms  max {ms(l['max_us'])} ms")
    w = r["watcher_event_latency"]
    print(f"watchers: {r['watcher_events']} events, p50 {ms(w['p50_us'])} ms, p99 {ms(w['p99_us'])} ms, max {ms(w['max_us'])} ms")
    print(f"timeouts {r['timeouts']}; errors {r['errors']}")
    au = r["audit"]
    print(f"audit clean: {r['audit_clean']}; orphan holds {len(au['orphan_holds'])}, sold twice {len(au['sold_twice'])}, "
          f"views wrong {len(au['views_wrong'])}, sold out {au['sold_out']}")
    pc = out / f"{s}.pg_commits"
    if pc.exists():
        c0, c1 = map(int, pc.read_text().split())
        print(f"PostgreSQL commits: {c1 - c0} ({(c1 - c0) / r['seconds']:.0f}/s over the run, set-up and audit included)")
    if r["bookings"]:
        cpu = ", ".join(f"{n} {p['cpu_ms_per_booking']:.2f}" for n, p in sorted(r["processes"].items()) if p["cpu_ms_per_booking"] is not None)
        print(f"CPU ms per booking: {cpu}")
EOF
say "results in $OUT"
