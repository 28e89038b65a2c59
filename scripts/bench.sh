#!/usr/bin/env bash
# `make bench`: starts its own CES stack on loopback (ports 18xxx/19092-19093/16379, so it can run beside `make up`),
# runs the standard load-test set against it, and tears it down. Results: loadtest/out/<name>.json and .svg.
#
# Knobs (environment): BENCH_SCENARIOS (default "micro broker latency cost receipts throughput raw-ws ingest idle storm hold
# storm-wide; "saturation" on request), BENCH_SATURATION_RATES ("2000 4000 6000 8000 10000 14000 20000": the steps of
# `saturation`), BENCH_SESSIONS (10000), BENCH_RATE (40000), BENCH_DURATION (20), BENCH_IDLE_CONNECTIONS (15000),
# BENCH_STORM_SESSIONS (10000), BENCH_INGEST_RECORDS (300000), BENCH_WARMUP (30: seconds of load that warm the
# broker's JVM up before anything is measured), BENCH_WIDE_EDGES (6: the edges `hold` and `storm-wide` start, on
# 18081 and up with their internal listeners on 18181 and up, at most 9), BENCH_HOLD_CONNECTIONS (100000: `hold` spreads them over those edges),
# BENCH_STORM_WIDE_SESSIONS (40000) and BENCH_STORM_WIDE_STOP (3: `storm-wide` kills that many edges at once, so
# their 20,000 sessions move; one edge holds at most its open-files limit of sockets). Every other scenario
# starts two edges. BENCH_HOLD=1 keeps a stack running after the scenarios until Ctrl-C, for profiling by hand
# (BENCH_SCENARIOS=none BENCH_HOLD=1 make bench).
# A scenario that fails is reported and the rest still run; the summary prints, then the exit status is 1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
data="$root/.ces/bench"
logs="$data/logs"
out="$root/loadtest/out"

tag=bench
source scripts/lib.sh

scenarios=${BENCH_SCENARIOS:-micro broker latency cost receipts throughput raw-ws ingest idle storm hold storm-wide}
sessions=${BENCH_SESSIONS:-10000}
rate=${BENCH_RATE:-40000}
duration=${BENCH_DURATION:-20}
idle_connections=${BENCH_IDLE_CONNECTIONS:-15000}
storm_sessions=${BENCH_STORM_SESSIONS:-10000}
ingest_records=${BENCH_INGEST_RECORDS:-300000}
warmup=${BENCH_WARMUP:-30}
wide_edges=${BENCH_WIDE_EDGES:-6}
hold_connections=${BENCH_HOLD_CONNECTIONS:-100000}
storm_wide_sessions=${BENCH_STORM_WIDE_SESSIONS:-40000}
storm_wide_stop=${BENCH_STORM_WIDE_STOP:-3}
saturation_rates=${BENCH_SATURATION_RATES:-2000 4000 6000 8000 10000 14000 20000}
# Edge ports are 18081 and up, below ingest's 18090; their internal listeners (probes and metrics) 18181 and up.
[[ $wide_edges =~ ^[2-9]$ ]] || { echo "BENCH_WIDE_EDGES=$wide_edges: 2 to 9 edges" >&2; exit 64; }
edge_names=(a b c d e f g h i)
edges=() edge_addrs="" edge_urls=""

scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
edge_ports=()
for ((i = 0; i < wide_edges; i++)); do
  edge_ports+=("edge-${edge_names[i]}=$((18081 + i))" "edge-${edge_names[i]}-internal=$((18181 + i))")
done
check_ports broker=19092 controller=19093 redis=16379 ingest=18090 bench-ingest=18091 "${edge_ports[@]}" || exit 1

say "building release binaries (scripts/build-release.sh: cargo build --release, as the container image does)"
scripts/build-release.sh -q -p ces-loadtest
built="${CARGO_TARGET_DIR:-$root/target}/release"

rm -rf "$data"
mkdir -p "$logs" "$data/redis" "$data/bin" "$out"
# The binaries just built from this tree, copied: another work tree sharing CARGO_TARGET_DIR may build its own
# over them while the scenarios run (and an edge started from a binary being replaced fails to start).
cp "$built/ces-ingest" "$built/ces-edge" "$built/cesctl" "$built/ces-loadtest" "$data/bin/"
bin="$data/bin"
# One file descriptor per socket, in the edge and in the load generator alike.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
say "file-descriptor limit $(ulimit -n) (every process here holds at most that many sockets)"

export CES_TOKEN_SECRET
CES_TOKEN_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export CES_LOG_FORMAT=text CES_LOG=warn CES_REDIS_URL=redis://127.0.0.1:16379 CES_KAFKA_BROKERS=127.0.0.1:19092
# The load comes from a handful of loopback addresses: per-address limits would measure themselves.
export CES_LIMIT_REGISTRATIONS_PER_MIN=1000000 CES_LIMIT_CONNECTS_PER_MIN=1000000
# The load generator holds thousands of connections per source address, many of them mid-handshake in a storm.
export CES_HTTP_MAX_CONNECTIONS_PER_IP=1000000 CES_REGISTER_OPEN=true
export CES_HTTP_MAX_CONNECTIONS=50000

trap 'stop_all; exit 130' INT TERM
trap 'stop_all' EXIT

# One Apache Kafka broker for the whole run (a JVM start costs seconds), on a fresh data directory.
kafka_up() {
  say "starting Apache Kafka $(scripts/kafka.sh version) on 127.0.0.1:19092 (controller :19093), data in $data/kafka"
  start broker scripts/kafka.sh run "$data/kafka" 19092 19093
  wait_log broker "Kafka Server started" 120
  "$bin/cesctl" topics create --brokers 127.0.0.1:19092 --partitions 8 ces.events ces.events.dlq ces.bench.ingest \
    ces.bench.broker ces.bench.broker.cost ces.bench.warmup >/dev/null
  # A cold JVM interprets before it compiles: its first half-minute under load measures the JIT (p90 of seconds
  # in the first scenario), not the broker. A production broker is warm, so the run starts with one. Its consumer
  # fetches as ingest's does (a fetch held up to 3 ms for 256 KiB), so the broker's delayed-fetch path, which every
  # CES scenario uses, is compiled too.
  say "warming the broker up: ${warmup}s of produce and fetch at 5,000/s, fetches held as ingest's are (not reported)"
  # A topic just created may not have its leader yet (NotLeaderForPartition): try again shortly.
  local try
  for try in 1 2 3; do
    "$bin/ces-loadtest" broker --brokers 127.0.0.1:19092 --topic ces.bench.warmup --sessions 1000 --rate 5000 \
      --duration "$warmup" --fetch-wait-ms 3 --fetch-min-bytes 262144 --out "$data/warmup" >"$logs/warmup.log" 2>&1 \
      && return 0
    sleep 2
  done
  warn "the warm-up run failed (the first scenario measures a cold broker):"
  tail -3 "$logs/warmup.log" >&2
}

# Every scenario gets the rest of the stack fresh: an empty Redis, ingest and edges with no history, and an input
# topic of its own (a backlog one scenario leaves in Kafka is never read by the next), so a scenario never
# measures the one before it. Sets `edges` (their names), `edge_addrs` (host:port,... of their internal listeners,
# where the load generator reads their metrics and finds their processes) and `edge_urls` (where clients go).
stack_up() { # scenario [number of edges, 2 by default]
  input="ces.bench.in.$1"
  local n=${2:-2} i name port
  edges=() edge_addrs="" edge_urls=""
  for ((i = 0; i < n; i++)); do
    edges+=("edge-${edge_names[i]}")
    edge_addrs+="${edge_addrs:+,}127.0.0.1:$((18181 + i))"
    edge_urls+="${edge_urls:+,}http://127.0.0.1:$((18081 + i))"
  done
  say "starting a fresh stack: redis :16379, ingest :18090 on topic $input, $n edges :18081-:$((18080 + n))" \
    "(internal :18181-:$((18180 + n)))"
  rm -rf "$data/redis" && mkdir -p "$data/redis"
  start redis redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no --dir "$data/redis"
  wait_port redis 16379
  "$bin/cesctl" topics create --brokers 127.0.0.1:19092 --partitions 8 "$input" >/dev/null
  CES_KAFKA_TOPICS="$input" CES_INGEST_HTTP_ADDR=127.0.0.1:18090 start ingest "$bin/ces-ingest"
  # The receipts scenario is the latency one with delivery receipts on: its edges produce one per event.
  if [[ $1 == receipts ]]; then
    "$bin/cesctl" topics create --brokers 127.0.0.1:19092 --partitions 8 ces.bench.receipts >/dev/null
    export CES_RECEIPTS_TOPIC=ces.bench.receipts
  fi
  for ((i = 0; i < n; i++)); do
    name=${edges[i]} port=$((18081 + i))
    CES_NODE_ID=$name CES_EDGE_LISTEN=127.0.0.1:$port CES_EDGE_INTERNAL_LISTEN=127.0.0.1:$((port + 100)) \
      start "$name" "$bin/ces-edge"
  done
  unset CES_RECEIPTS_TOPIC
  wait_port ingest 18090
  for ((i = 0; i < n; i++)); do wait_port "${edges[i]}" $((18081 + i)); done
  for port in 18090 $(seq 18181 $((18180 + n))); do
    for _ in $(seq 1 100); do
      http_ok "$port" /readyz && break
      sleep 0.2
    done
  done
}

stack_down() { # SIGTERM to all at once (the edges drain in parallel), then wait for each
  local name pid
  for name in bench-ingest "${edges[@]}" ingest redis; do
    pid=${pids[$name]:-}
    [[ -n "$pid" ]] && { kill -TERM "$pid" 2>/dev/null || true; }  # storm may have killed it already
  done
  for name in bench-ingest "${edges[@]}" ingest redis; do stop_one "$name"; done
}

lt() { # scenario args...: runs ces-loadtest against this stack; a failed scenario is reported, the rest go on
  say "ces-loadtest $*"
  "$bin/ces-loadtest" "$@" --brokers 127.0.0.1:19092 --edges "$edge_addrs" --out "$out" \
    --ingest-metrics "${ingest_metrics:-http://127.0.0.1:18090/metrics}" --redis 127.0.0.1:16379 \
    || {
      local status=$?
      failed+=("$s")
      case $status in
        1) warn "ces-loadtest $1 could not run (status 1; its error is above)" ;;
        2) warn "ces-loadtest $1: bad arguments (status 2; the usage error is above)" ;;
        3) warn "ces-loadtest $1: events were lost or duplicated (status 3; see its summary above)" ;;
        4) warn "ces-loadtest $1 missed a target of its scenario (status 4; TARGET MISSED above)" ;;
        *) warn "ces-loadtest $1 exited with status $status" ;;
      esac
    }
}
# Scenarios that failed: the rest still run and the summary still prints, then make bench exits 1.
failed=()

kafka_up
for s in $scenarios; do
  case $s in
    micro | none) ;;
    hold | storm-wide) stack_up "$s" "$wide_edges" ;;
    *) stack_up "$s" ;;
  esac
  case $s in
    micro)
      say "cargo bench -p ces-protocol (criterion; results in target/criterion/)"
      cargo bench --locked -q -p ces-protocol --bench hot_path -- --warm-up-time 1 --measurement-time 3 2>&1 \
        | grep -E '^hot_path|time:' || { warn "cargo bench failed"; failed+=(micro); }
      ;;
    broker) lt broker --topic ces.bench.broker --sessions 1000 --rate 5000 --duration "$duration" ;;
    latency)
      lt throughput --name latency --topic "$input" --sessions 1000 --rate 5000 --duration "$duration" --target "$edge_urls"
      ;;
    cost)
      # CPU per delivered event at the reference load: 2,000 sessions on two edges at 5,000 events/s, with the
      # floors of the same figures on the same stack while CES is idle: the broker alone first (producer -> bare
      # consumer latency, on a broker no CES run has loaded yet), then CES, then Redis's Pub/Sub alone (its CPU per event without the function) and a bare WebSocket server at the same
      # rate over as many connections (its CPU per frame, beside the edges').
      lt broker --name cost-broker --topic ces.bench.broker.cost --sessions 2000 --rate 5000 --duration "$duration"
      lt throughput --name cost --topic "$input" --sessions 2000 --rate 5000 --duration "$duration" --target "$edge_urls"
      lt redis-floor --name cost-redis --sessions 2000 --count 500000
      lt raw-ws --name cost-raw-ws --connections 2000 --rate 5000 --duration "$duration"
      python3 scripts/cost-summary.py "$out" | while IFS= read -r line; do say "$line"; done \
        || warn "no cost summary (a run above failed)"
      ;;
    saturation)
      # The highest offered rate at which 10,000 sessions on two edges receive everything with p99 <= 100 ms: the
      # rates of BENCH_SATURATION_RATES in turn on this stack (each run registers sessions of its own), stopping
      # after the first that misses. Each step's JSON is loadtest/out/saturation-<rate>.json.
      best=""
      for r in $saturation_rates; do
        lt throughput --name "saturation-$r" --topic "$input" --sessions 10000 --rate "$r" --duration "$duration" \
          --target "$edge_urls"
        verdict=$(python3 - "$out/saturation-$r.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ok = d["lost"] == 0 and d["duplicated"] == 0 and d["p99_ms"] <= 100
cpu = d.get("cpu_percent", {})
share = " ".join(f"{k} {v:.0f}%" for k, v in sorted(cpu.items()))
print(("ok" if ok else "missed"), f"{d['delivered_per_s']:.0f}/s delivered, p99 {d['p99_ms']:.1f} ms, lost {d['lost']},",
      f"CPU (% of a core): {share}")
PY
        ) || verdict="missed (no result)"
        say "saturation at $r/s: $verdict"
        [[ $verdict == ok* ]] || break
        best=$r
      done
      say "saturation: highest rate with p99 <= 100 ms and nothing lost on 10,000 sessions: ${best:-below the first step}/s"
      ;;
    receipts)
      lt throughput --name receipts --topic "$input" --sessions 1000 --rate 5000 --duration "$duration" --target "$edge_urls"
      ;;
    throughput)
      lt throughput --topic "$input" --sessions "$sessions" --rate "$rate" --duration "$duration" --target "$edge_urls"
      ;;
    raw-ws)
      # Both ends of every raw connection are in one process: at most half the file-descriptor limit.
      raw=$(( sessions < ($(ulimit -n) - 200) / 2 ? sessions : ($(ulimit -n) - 200) / 2 ))
      lt raw-ws --connections "$raw" --rate 0 --duration 10
      ;;
    ingest)
      lt produce --topic ces.bench.ingest --count "$ingest_records" --sessions 10000
      say "starting a second ingest (group ces-bench-ingest) on the prefilled topic ces.bench.ingest"
      CES_INGEST_HTTP_ADDR=127.0.0.1:18091 CES_KAFKA_TOPICS=ces.bench.ingest CES_KAFKA_GROUP=ces-bench-ingest \
        start bench-ingest "$bin/ces-ingest"
      wait_port bench-ingest 18091
      ingest_metrics=http://127.0.0.1:18091/metrics lt ingest --prefilled --count "$ingest_records" --sessions 10000
      stop_one bench-ingest
      ;;
    idle) lt idle --topic "$input" --connections "$idle_connections" --duration 15 --target http://127.0.0.1:18081 ;;
    storm)
      lt storm --topic "$input" --connections "$storm_sessions" --sessions "$storm_sessions" --rate 2000 --duration 30 \
        --kill-after 10 --target "$edge_urls"
      ;;
    hold)
      # More sockets than one process may hold: the load generator spreads them over worker processes by itself.
      lt hold --topic "$input" --connections "$hold_connections" --rate 2000 --duration 30 --target "$edge_urls"
      ;;
    storm-wide)
      lt storm --name storm-wide --topic "$input" --connections "$storm_wide_sessions" \
        --sessions "$storm_wide_sessions" --rate 2000 --duration 30 --kill-after 10 --stop-edges "$storm_wide_stop" \
        --target "$edge_urls"
      ;;
    none) ;;
    *) warn "unknown scenario $s"; failed+=("$s") ;;
  esac
  [[ $s == micro || $s == none ]] || stack_down
done

say "results in $out:"
ls -1 "$out"
if ((${#failed[@]})); then
  warn "failed: ${failed[*]} (see above)"
  status=1
fi
if [[ -n "${BENCH_HOLD:-}" ]]; then
  stack_up manual
  say "stack left running (BENCH_HOLD): broker 127.0.0.1:19092, redis 127.0.0.1:16379, ingest :18090, edges :18081 :18082" \
    "(metrics on :18181 :18182); Ctrl-C stops it"
  wait
fi
exit "${status:-0}"
