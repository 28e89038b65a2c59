#!/usr/bin/env bash
# Keeps ces-protocol pure: fails if its normal (non-dev) dependency tree contains a runtime or I/O crate.
# `make test` runs it, and runs it once against ces-runtime to prove the check still detects one.
# Usage: scripts/check-protocol-deps.sh [package]   (default ces-protocol)
set -euo pipefail
cd "$(dirname "$0")/.."
package=${1:-ces-protocol}
# Async runtimes, network and TLS stacks, and the clients of every system CES talks to.
forbidden='^(tokio|tokio-[a-z-]+|mio|async-std|smol|fred|redis|rdkafka|rdkafka-sys|opentelemetry|opentelemetry[_-][a-z_-]+|rustls|rustls-[a-z-]+|ring|hyper|hyper-[a-z-]+|reqwest|axum|tungstenite|tokio-tungstenite|socket2|metrics-exporter-prometheus)$'
# One "name version" line per crate.
tree=$(cargo tree --locked -q -p "$package" -e normal --prefix none --format '{p}' | awk '{print $1, $2}' | sort -u)
found=$(awk -v re="$forbidden" '$1 ~ re {print $1 "@" substr($2, 2)}' <<<"$tree")
if [[ -n "$found" ]]; then
  echo "$package depends on runtime or I/O crates (it must stay pure; see protocol/src/lib.rs):" >&2
  for crate in $found; do
    echo "  $crate, required by $(cargo tree --locked -q -p "$package" -e normal -i "$crate" --prefix none | sed -n 2p | awk '{print $1, $2}')" >&2
  done
  exit 1
fi
echo "$package: $(wc -l <<<"$tree") crates in its dependency tree, none of them a runtime or I/O crate"
