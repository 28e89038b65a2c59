#!/usr/bin/env bash
# The Redis side of publishing, in instructions per event: a redis-server under `valgrind --tool=callgrind`, every
# session's channel subscribed (so each publish is delivered, as on an edge), every session published to once
# (its state exists, as in a steady stream), then EVENTS events over SESSIONS sessions in batches of BATCH through
# ingest's own publisher (services/ingest/examples/publish_cost.rs). Prints Redis's instructions per event for the
# measured events alone: repeatable to a fraction of a percent, where CPU time on a shared machine is not.
#
#   scripts/redis-cost.sh [EVENTS=20000] [SESSIONS=2000] [BATCH=25]   (REDIS_COST_PROFILE=1 adds a profile by function)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-20000} sessions=${2:-2000} batch=${3:-25}
source scripts/lib.sh
tag=redis-cost
command -v valgrind >/dev/null || { say "installing valgrind (apt)"; apt-get install -y -q valgrind >/dev/null; }
say "building the driver (the release build of scripts/build-release.sh, and the example)"
cargo build --release --locked -q -p ces-ingest -p ces-edge -p ces-ctl -p ces-loadtest --example publish_cost
driver="${CARGO_TARGET_DIR:-target}/release/examples/publish_cost"
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" redis-server --port "$port" --bind 127.0.0.1 \
  --save "" --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
vg=$!
subscriber=""
cleanup() { [[ -n $subscriber ]] && kill "$subscriber" 2>/dev/null; kill "$vg" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 300); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
channels=$(for ((i = 0; i < sessions; i++)); do printf 'ces:{cost-%05d}:ch ' "$i"; done)
# shellcheck disable=SC2086 # one argument per channel
redis-cli -p "$port" SSUBSCRIBE $channels >/dev/null &
subscriber=$!
say "warming up: one event per session ($sessions)"
"$driver" "redis://127.0.0.1:$port" "$sessions" "$sessions" "$batch" 1000000000 >/dev/null
callgrind_control -z "$vg" >/dev/null
say "measuring: $events events over $sessions sessions in batches of $batch"
"$driver" "redis://127.0.0.1:$port" "$events" "$sessions" "$batch" 0
callgrind_control -d "$vg" >/dev/null
sleep 1
total=$(cat "$dir"/callgrind.out.* | awk '/^(summary|totals):/ {print $2}' | sort -n | tail -1)
calls=$(redis-cli -p "$port" INFO commandstats | tr -d '\r' | grep -E '^cmdstat_(fcall|evalsha)' || true)
say "redis: $total instructions for $events events: $((total / events)) per event"
say "commandstats (the warm-up included): $calls"
# REDIS_COST_PROFILE=1: where they went, inclusive, by function.
if [[ -n "${REDIS_COST_PROFILE:-}" ]]; then
  callgrind_annotate ${REDIS_COST_INCLUSIVE:+--inclusive=yes} "$(ls "$dir"/callgrind.out.* | tail -1)" 2>/dev/null | sed -n '1,80p'
fi
