#!/usr/bin/env bash
# `make test`: one Apache Kafka broker for the whole run, then every test with cargo-nextest.
# A JVM takes seconds to start on 2 cores, so the tests share this broker (its address is in CES_TEST_KAFKA) and keep
# apart by unique topic and group names; the few tests that stop the broker start one of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=test
source scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"

mkdir -p .ces
logs=.ces
dir=$(mktemp -d "${TMPDIR:-/tmp}/ces-test-kafka.XXXXXX")
trap 'stop_all >/dev/null; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM

# Ports below the kernel's ephemeral range (32768 and up, where the tests' own free ports come from), so the
# run's broker and the tests never race for one.
pick_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}
port=$(pick_port)
ctrl=$(pick_port)
while [[ "$ctrl" == "$port" ]]; do ctrl=$(pick_port); done

say "starting Apache Kafka for this run on 127.0.0.1:$port (log: .ces/test-kafka.log)"
started=$SECONDS
CES_KAFKA_HEAP="-Xms256m -Xmx1g" start test-kafka scripts/kafka.sh run "$dir" "$port" "$ctrl"
wait_log test-kafka "Kafka Server started" 120
say "broker up in $((SECONDS - started)) s"

export CES_TEST_KAFKA="127.0.0.1:$port"
# Arguments go to nextest (e.g. `scripts/test.sh -E 'package(ces-ctl)'`); with none, the whole workspace runs.
(($#)) || set -- --workspace
say "cargo nextest run --locked $*"
cargo nextest run --locked "$@"
