#!/usr/bin/env bash
# Gateway comparison with resbench: Resgate (Go, optional) against the workspace's resgate-rs.
#
#   RESGATE_BIN=/path/to/resgate scripts/bench.sh          # both gateways
#   scripts/bench.sh                                         # resgate-rs only
#
# Builds resbench and resgate-rs (release) with cargo; never builds Resgate: RESGATE_BIN must name a
# binary built beforehand. Every gateway runs ROUNDS rounds; each round starts a fresh nats-server
# and gateway on loopback and runs each scenario once. Results (one JSON file per run) go to OUT;
# the summary prints the median of the rounds per metric, and the ratio resgate-rs / Resgate. Each
# round also measures the floor (`resbench floor`: the CPU of one write per delivery, no gateway)
# with the fanout scenarios' clients and rates: the "floor" column.
#
# Environment (defaults in brackets):
#   RESGATE_BIN     Resgate binary [unset: skip Resgate]
#   RESGATE_RS_BIN  resgate-rs binary [$CARGO_TARGET_DIR/release/resgate-rs, built here]
#   RESBENCH_BIN    resbench binary [$CARGO_TARGET_DIR/release/resbench, built here]; with both
#                   pinned nothing is built, so a build elsewhere cannot swap a binary mid-run
#   ROUNDS [3]  OUT [/tmp/resbench-<time>]
#   SCENARIOS [fanout1k fanout10k saturate saturate10k connections connections_max get call http]
#   CONNECTIONS [10000]  CONNECTIONS_MAX [19500: near the 20,000 fd hard limit]
#   FANOUT_RATE_1K [50]  FANOUT_RATE_10K [30]  DURATION [10]
#   QUIET_LOAD [0.5]  QUIET_WAIT [0]: before each run, wait up to QUIET_WAIT seconds for the
#                     1-minute load average to drop below QUIET_LOAD (the run goes ahead anyway)
# The machine has few cores: numbers taken while other work runs are noisy. The summary records
# the load average seen before each run; prefer CPU-per-message and RSS metrics to raw rates.
set -euo pipefail
cd "$(dirname "$0")/.."

summarize() {
python3 - "$1" <<'EOF'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
METRICS = {
    "fanout1k": [("deliveries/s", "step.deliveries_per_second"), ("lost", "step.lost"),
                 ("p50 ms", "step.latency.p50_us", 1e-3), ("p99 ms", "step.latency.p99_us", 1e-3),
                 ("p99.9 ms", "step.latency.p999_us", 1e-3), ("gateway CPU µs/delivery", "step.gateway_cpu_us_per_delivery"),
                 ("gateway peak RSS MiB", "step.gateway.peak_rss_bytes", 1 / 2**20),
                 ("tool CPU µs/delivery", "step.tool_cpu_us_per_delivery")],
    "saturate": [("max events/s (no loss, p99<100ms)", "best.target_rate"),
                 ("max deliveries/s", "best.deliveries_per_second"), ("p99 ms at max", "best.latency.p99_us", 1e-3),
                 ("gateway CPU µs/delivery at max", "best.gateway_cpu_us_per_delivery"),
                 ("tool CPU µs/delivery at max", "best.tool_cpu_us_per_delivery")],
    "connections": [("connections open", "connect.connected"), ("connect/s", "connect.per_second"),
                    ("gateway RSS KiB/connection", "gateway_rss_per_connection_bytes", 1 / 1024),
                    ("gateway CPU µs/connection", "gateway_cpu_us_per_connection"), ("alive-check lost", "alive_check.lost")],
    "get": [("req/s", "ok_per_second"), ("p50 ms", "latency.p50_us", 1e-3), ("p99 ms", "latency.p99_us", 1e-3),
            ("errors", "@errors"), ("gateway CPU µs/request", "gateway_cpu_us_per_request"),
            ("tool CPU µs/request", "tool_cpu_us_per_request")],
    "http": [("req/s", "ok_per_second"), ("p50 ms", "latency.p50_us", 1e-3), ("p99 ms", "latency.p99_us", 1e-3),
             ("gateway CPU µs/request", "gateway_cpu_us_per_request"), ("tool CPU µs/request", "tool_cpu_us_per_request")],
}
METRICS["fanout10k"] = METRICS["fanout1k"]
METRICS["saturate10k"] = METRICS["saturate"]
METRICS["call"] = METRICS["get"]
METRICS["connections_max"] = METRICS["connections"]

def get(doc, path):
    if path == "@errors":
        return sum(doc["errors"].values())
    for k in path.split("."):
        if doc is None:
            return None
        doc = doc.get(k)
    return doc

gateways = sorted(p.name for p in out.iterdir() if p.is_dir())
print(f"\nmedians over rounds ({out})\n")
for g in gateways:
    loads = [float(f.read_text().split()[0]) for f in (out / g).glob("*/*.load")]
    if loads:
        print(f"{g}: 1-minute load average before its runs: min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}")
print()
for scenario, metrics in METRICS.items():
    vals = {}
    for g in gateways:
        for f in sorted((out / g).glob(f"*/{scenario}.json")):
            if not f.read_text().strip():
                continue  # still running
            doc = json.loads(f.read_text())["result"]
            for m in metrics:
                v = get(doc, m[1])
                if v is not None:
                    vals.setdefault((g, m[0]), []).append(v * (m[2] if len(m) > 2 else 1))
    if not vals:
        continue
    print(f"### {scenario}\n")
    # Columns: the gateways (and the floor) with data for this scenario; ratios against Resgate.
    cols = [g for g in gateways if any(k[0] == g for k in vals)]
    ratios = [g for g in cols if g != "resgate"] if "resgate" in cols else []
    # Where the floor ran too: each gateway read against it (its CPU per delivery is the bound).
    over_floor = [g for g in cols if g != "floor"] if "floor" in cols else []
    print("| metric | " + " | ".join(cols) + "".join(f" | {g} / resgate" for g in ratios)
          + "".join(f" | {g} / floor" for g in over_floor) + " |")
    print("|---|" + "---|" * (len(cols) + len(ratios) + len(over_floor)))
    fmt = lambda v: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    for m in metrics:
        meds = {g: statistics.median(vals[(g, m[0])]) for g in cols if (g, m[0]) in vals}
        cells = []
        for g in cols:
            got = vals.get((g, m[0]), [])
            cells.append("n/a" if g not in meds else fmt(meds[g]) + (f" ({fmt(min(got))}–{fmt(max(got))})" if len(got) > 1 else ""))
        for base, over in [("resgate", ratios), ("floor", over_floor)]:
            for g in over:
                a, b = meds.get(base), meds.get(g)
                cells.append(f"{b / a:.2f}" if a and b is not None else "n/a")
        print(f"| {m[0]} | " + " | ".join(cells) + " |")
    print()
EOF
}

# `scripts/bench.sh --summary DIR` prints the medians of an earlier run again.
if [[ ${1:-} == --summary ]]; then
  summarize "$2"
  exit
fi

ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/resbench-$(date -u +%Y%m%dT%H%M%S)}
SCENARIOS=${SCENARIOS:-"fanout1k fanout10k saturate saturate10k connections connections_max get call http"}
CONNECTIONS=${CONNECTIONS:-10000}
CONNECTIONS_MAX=${CONNECTIONS_MAX:-19500}
FANOUT_RATE_1K=${FANOUT_RATE_1K:-50}
FANOUT_RATE_10K=${FANOUT_RATE_10K:-30}
DURATION=${DURATION:-10}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
QUIET_LOAD=${QUIET_LOAD:-0.5}
QUIET_WAIT=${QUIET_WAIT:-0}

# Raise the fd limit for the gateways and the tool (the hard limit cannot be raised here).
ulimit -n "$(ulimit -Hn)"

# One cargo invocation for both binaries: building them separately would unify dependency
# features differently and compile the shared dependencies twice.
declare -A GATEWAYS=()
if [[ -n "${RESGATE_BIN:-}" ]]; then
  [[ -x $RESGATE_BIN ]] || { echo "RESGATE_BIN=$RESGATE_BIN is not an executable" >&2; exit 1; }
  GATEWAYS[resgate]=$RESGATE_BIN
fi
packages=(-p resbench)
if [[ -n "${RESGATE_RS_BIN:-}" ]]; then
  GATEWAYS[resgate-rs]=$RESGATE_RS_BIN
elif cargo metadata --format-version 1 --no-deps | grep -q '"name":"resgate-rs"'; then
  packages+=(-p resgate-rs)
  GATEWAYS[resgate-rs]=$TARGET/release/resgate-rs
else
  echo "note: the workspace has no resgate-rs package yet: measuring Resgate only"
fi
if [[ -n "${RESBENCH_BIN:-}" && -n "${RESGATE_RS_BIN:-}" ]]; then
  RESBENCH=$RESBENCH_BIN # both pinned: nothing to build
else
  echo "==> cargo build --release ${packages[*]}"
  cargo build --release "${packages[@]}" --quiet
  RESBENCH=${RESBENCH_BIN:-$TARGET/release/resbench}
fi
[[ ${#GATEWAYS[@]} -gt 0 ]] || { echo "no gateway to measure: set RESGATE_BIN or add resgate-rs" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

NATS_PID=""; GW_PID=""
stop_servers() {
  [[ -n $GW_PID ]] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
  [[ -n $NATS_PID ]] && kill "$NATS_PID" 2>/dev/null && wait "$NATS_PID" 2>/dev/null || true
  GW_PID=""; NATS_PID=""
}
trap stop_servers EXIT

start_servers() { # gateway-binary log-dir
  local np gp
  np=$(free_port); gp=$(free_port)
  nats-server -a 127.0.0.1 -p "$np" >"$2/nats.log" 2>&1 &
  NATS_PID=$!
  wait_port "$np"
  "$1" --nats "nats://127.0.0.1:$np" --addr 127.0.0.1 --port "$gp" >"$2/gateway.log" 2>&1 &
  GW_PID=$!
  wait_port "$gp"
  COMMON=(--json --nats "nats://127.0.0.1:$np" --gateway "127.0.0.1:$gp" --gateway-pid "$GW_PID" --nats-pid "$NATS_PID")
}

scenario_args() {
  case $1 in
    fanout1k) echo "fanout -n 1000 -r 1 --rate $FANOUT_RATE_1K --duration $DURATION" ;;
    fanout10k) echo "fanout -n 10000 -r 10 --rate $FANOUT_RATE_10K --duration $DURATION" ;;
    saturate) echo "saturate -n 1000 -r 1 --start-rate 20 --factor 1.5 --max-rate 2000 --step-duration 5 --refine 3" ;;
    saturate10k) echo "saturate -n 10000 -r 10 --start-rate 10 --factor 1.5 --max-rate 1000 --step-duration 5 --refine 3" ;;
    connections) echo "connections -n $CONNECTIONS -r 10 --settle 3" ;;
    connections_max) echo "connections -n $CONNECTIONS_MAX -r 10 --settle 3" ;;
    get) echo "requests --op get -c 50 -w 8 -r 10 --duration $DURATION" ;;
    call) echo "requests --op call -c 50 -w 8 -r 10 --duration $DURATION" ;;
    http) echo "http -c 50 --duration $DURATION" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac
}

mkdir -p "$OUT"
{
  echo "date: $(date -u +%FT%TZ)"; echo "nproc: $(nproc)"; echo "kernel: $(uname -r)"
  echo "memory: $(free -m | awk '/Mem:/{print $2" MiB"}')"; echo "nats-server: $(nats-server --version)"
  for g in "${!GATEWAYS[@]}"; do echo "$g: ${GATEWAYS[$g]} ($("${GATEWAYS[$g]}" --version 2>&1 | head -1 || true))"; done
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"

for round in $(seq 1 "$ROUNDS"); do
  for g in "${!GATEWAYS[@]}"; do
    for s in $SCENARIOS; do
      dir=$OUT/$g/$round; mkdir -p "$dir"
      start_servers "${GATEWAYS[$g]}" "$dir"
      read -r -a args <<<"$(scenario_args "$s")"
      for _ in $(seq 1 "$QUIET_WAIT"); do
        awk -v q="$QUIET_LOAD" '{exit !($1 < q)}' /proc/loadavg && break
        sleep 1
      done
      load=$(cut -d' ' -f1-3 /proc/loadavg)
      echo "==> round $round $g $s (load $load): resbench ${args[*]}"
      echo "$load" >"$dir/$s.load"
      if ! timeout 600 "$RESBENCH" "${args[@]}" "${COMMON[@]}" >"$dir/$s.json" 2>"$dir/$s.err"; then
        echo "    FAILED (see $dir/$s.err)"; rm -f "$dir/$s.json"
      fi
      stop_servers
    done
  done
  # The floor: the tool's own writer thread in place of a gateway, one write per delivery and
  # nothing else, with the clients and rate of the fanout scenarios (no gateway, no NATS).
  for s in $SCENARIOS; do
    case $s in fanout1k | fanout10k) ;; *) continue ;; esac
    dir=$OUT/floor/$round; mkdir -p "$dir"
    read -r -a args <<<"$(scenario_args "$s")"
    args[0]=floor
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "==> round $round floor $s (load $load): resbench ${args[*]}"
    echo "$load" >"$dir/$s.load"
    if ! timeout 600 "$RESBENCH" "${args[@]}" --json >"$dir/$s.json" 2>"$dir/$s.err"; then
      echo "    FAILED (see $dir/$s.err)"; rm -f "$dir/$s.json"
    fi
  done
done

summarize "$OUT"
