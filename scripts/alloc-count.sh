#!/usr/bin/env bash
# Heap allocations per delivered event, counted with uprobes on the allocator while the reference load runs:
# the edges' (glibc malloc, calloc, realloc) per frame they wrote, then ingest's (mimalloc's entry points for Rust,
# glibc's for librdkafka) per record it read. Counts, not times: repeatable from run to run, unlike CPU figures,
# though each probe hit costs a trap, so the stack runs slower while it is counted.
#
#   BENCH_SCENARIOS=none BENCH_HOLD=1 make bench &   # a stack on the bench ports, left running
#   scripts/alloc-count.sh [SECONDS]                 # SECONDS counted per process group (10 by default)
#
# Needs perf with uprobes (root, tracefs) and the held stack: edges on :18181/:18182 (internal), ingest on :18090.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
[[ $secs =~ ^[0-9]+$ ]] && ((secs >= 2 && secs <= 60)) || { echo "alloc-count.sh: SECONDS is 2 to 60" >&2; exit 64; }
command -v perf >/dev/null || { echo "alloc-count.sh: needs perf (Debian package linux-perf)" >&2; exit 1; }
bin=.ces/bench/bin

pid_on() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
edge_pids=$(for p in 18181 18182; do pid_on "$p"; done | paste -sd, -)
ingest_pid=$(pid_on 18090)
[[ -n $ingest_pid && $edge_pids == *,* ]] || {
  echo "alloc-count.sh: no held stack (run BENCH_SCENARIOS=none BENCH_HOLD=1 make bench first)" >&2
  exit 1
}
libc=$(awk '$6 ~ /libc\.so/ {print $6; exit}' "/proc/${edge_pids%%,*}/maps")
ingest_exe=$(readlink "/proc/$ingest_pid/exe")

# Probes of our own group, removed on the way out.
probes=()
probe() { # name binary function
  perf probe -q -x "$2" -a "cesalloc:$1=$3"
  probes+=("cesalloc:$1")
}
cleanup() { perf probe -q -d 'cesalloc:*' 2>/dev/null || true; }
trap cleanup EXIT
cleanup
probe libc_malloc "$libc" malloc
probe libc_calloc "$libc" calloc
probe libc_realloc "$libc" realloc
probe mi_malloc "$ingest_exe" mi_malloc_aligned
probe mi_zalloc "$ingest_exe" mi_zalloc_aligned
probe mi_realloc "$ingest_exe" mi_realloc_aligned

sum_metric() { # port name: the metric's sum over its series
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s += $2} END {printf "%d\n", s}'
}
delivered() { echo $(($(sum_metric 18181 ces_edge_delivered_total) + $(sum_metric 18182 ces_edge_delivered_total))); }
records() { sum_metric 18090 ces_ingest_records_total; }

count() { # label pids events-function unit probes...
  local label=$1 pids=$2 events=$3 unit=$4
  shift 4
  local before after out
  before=$($events)
  out=$(perf stat -x, -e "$(
    IFS=,
    echo "$*"
  )" -p "$pids" -- sleep "$secs" 2>&1 >/dev/null)
  after=$($events)
  awk -F, -v n=$((after - before)) -v label="$label" -v unit="$unit" '
    $3 ~ /cesalloc:/ { total += $1; sub(/cesalloc:/, "", $3); parts = parts sprintf("  %s %.2f", $3, $1 / n) }
    END { printf "%s: %.2f allocations per %s (%d %ss in the window;%s)\n", label, total / n, unit, n, unit, parts }
  ' <<<"$out"
}

duration=$((2 * secs + 14))
echo "[alloc-count] cost load for ${duration}s: 2,000 sessions at 5,000 events/s; counting the edges, then ingest, ${secs}s each"
"$bin/ces-loadtest" throughput --name alloc-count --topic ces.bench.in.manual --sessions 2000 --rate 5000 \
  --duration "$duration" --target http://127.0.0.1:18081,http://127.0.0.1:18082 --brokers 127.0.0.1:19092 \
  --edges 127.0.0.1:18181,127.0.0.1:18182 --ingest-metrics http://127.0.0.1:18090/metrics --redis 127.0.0.1:16379 \
  --out "$(mktemp -d)" >/dev/null 2>&1 &
load=$!
sleep 6
count edges "$edge_pids" delivered frame cesalloc:libc_malloc cesalloc:libc_calloc cesalloc:libc_realloc
sleep 2
count ingest "$ingest_pid" records record cesalloc:mi_malloc cesalloc:mi_zalloc cesalloc:mi_realloc \
  cesalloc:libc_malloc cesalloc:libc_calloc cesalloc:libc_realloc
wait "$load" || echo "[alloc-count] the load run reported a problem (status $?): counts above may be partial" >&2
