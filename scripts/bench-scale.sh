#!/usr/bin/env bash
# Horizontal scale: K resgate-rs instances on one nats-server, one resbench per instance (each
# with its own service name and its own eight 127.0.0.x source addresses), all at once.
#
#   scripts/bench-scale.sh                      # 6 x 16,700 = 100,200 connections, fanout at 5 events/s
#   MODE=connections scripts/bench-scale.sh     # idle connections, RSS per connection, alive check
#
# Each process may hold at most 20,000 file descriptors here (hard limit, not raisable), and a
# gateway needs a few for itself, so 100,000 connections take six instances, not five.
#
# Environment: K [6]  N [16700] clients per instance  MODE [fanout|connections]  RATE [5] events/s
# per instance over its 10 resources  DURATION [10]  OUT [/tmp/resbench-scale-<time>]
# RESGATE_RS_BIN / RESBENCH_BIN [$CARGO_TARGET_DIR/release/..., built here when unset]
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
K=${K:-6}; N=${N:-16700}; MODE=${MODE:-fanout}; RATE=${RATE:-5}; DURATION=${DURATION:-10}
OUT=${OUT:-/tmp/resbench-scale-$(date -u +%Y%m%dT%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
if [[ -z "${RESGATE_RS_BIN:-}" || -z "${RESBENCH_BIN:-}" ]]; then
  cargo build --release -p resgate-rs -p resbench --quiet
fi
GW=${RESGATE_RS_BIN:-$TARGET/release/resgate-rs}; RB=${RESBENCH_BIN:-$TARGET/release/resbench}
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
np=$(free_port)
nats-server -a 127.0.0.1 -p "$np" >"$OUT/nats.log" 2>&1 &
NATS_PID=$!
GW_PIDS=(); PORTS=()
stop() {
  # Gateways first, while NATS is still there to drain to; then NATS.
  for p in "${GW_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${GW_PIDS[@]}"; do timeout 10 tail --pid="$p" -f /dev/null || kill -9 "$p" 2>/dev/null || true; done
  kill "$NATS_PID" 2>/dev/null || true
}
trap stop EXIT
sleep 0.5
for k in $(seq 0 $((K - 1))); do
  p=$(free_port)
  "$GW" --nats "nats://127.0.0.1:$np" --addr 127.0.0.1 --port "$p" >"$OUT/gateway$k.log" 2>&1 &
  GW_PIDS+=($!); PORTS+=("$p")
done
sleep 1
case $MODE in
  fanout) args=(fanout -n "$N" -r 10 --rate "$RATE" --duration "$DURATION") ;;
  connections) args=(connections -n "$N" -r 10 --settle 10) ;;
  *) echo "MODE must be fanout or connections" >&2; exit 1 ;;
esac
TOOLS=()
for k in $(seq 0 $((K - 1))); do
  "$RB" "${args[@]}" --service "bench$k" --source-first $((2 + 8 * k)) --source-count 8 --connect-timeout 120 \
    --json --nats "nats://127.0.0.1:$np" --gateway "127.0.0.1:${PORTS[$k]}" --gateway-pid "${GW_PIDS[$k]}" \
    --nats-pid "$NATS_PID" >"$OUT/tool$k.json" 2>"$OUT/tool$k.err" &
  TOOLS+=($!)
done
echo "==> $K instances x $N clients ($MODE); results in $OUT"
wait "${TOOLS[@]}"
python3 - "$OUT" "$K" "$MODE" <<'PY'
import json, sys
out, K, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conns = lost = 0; dps = 0.0
for k in range(K):
    r = json.load(open(f"{out}/tool{k}.json"))["result"]
    c = r["connect"]; s = r["step"] if mode == "fanout" else r["alive_check"]
    conns += c["connected"]; lost += s["lost"]; dps += s["deliveries_per_second"]
    rss = c["gateway"]["peak_rss_bytes"] / 2**20 if mode == "fanout" else r["gateway_rss_after_bytes"] / 2**20
    line = f"instance {k}: {c['connected']} connected ({c['per_second']:.0f}/s), gateway RSS {rss:.0f} MiB, delivered {s['delivered']}/{s['expected']}"
    if mode == "fanout":
        line += f", {s['deliveries_per_second']:.0f}/s, p99 {s['latency']['p99_us'] / 1000:.1f} ms, gateway CPU {s['gateway_cpu_us_per_delivery']:.1f} µs/delivery"
    else:
        line += f", RSS per connection {r['gateway_rss_per_connection_bytes'] / 1024:.2f} KiB"
    print(line)
print(f"total: {conns} connections, lost {lost}" + (f", {dps:.0f} deliveries/s" if mode == "fanout" else ""))
PY
