#!/usr/bin/env bash
# Keeps ces-protocol pure: fails if its normal (non-dev) dependency tree contains a runtime or I/O crate.
# `make test` runs it, and runs it once against ces-runtime to prove the check still detects one.
# Usage: scripts/check-protocol-deps.sh [package]   (default ces-protocol)
set -euo pipefail
cd "$(dirname "$0")/.."
package=${1:-ces-protocol}
# Async runtimes, network and TLS stacks, HTTP clients, and the clients of every system CES talks to.
forbidden='^(tokio|tokio-[a-z-]+|mio|async-std|smol|fred|redis|rdkafka|rdkafka-sys|opentelemetry|opentelemetry[_-][a-z_-]+|rustls|rustls-[a-z-]+|ring|openssl|openssl-sys|native-tls|hyper|hyper-[a-z-]+|reqwest|ureq|curl|curl-sys|axum|tungstenite|tokio-tungstenite|socket2|metrics-exporter-prometheus)$'
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
# Nor I/O through the standard library: files, sockets, processes, the environment or the clock, in non-test code
# (unit tests sit at the bottom of each file, after `#[cfg(test)]`).
src=$(cargo metadata --locked --no-deps --format-version 1 \
  | python3 -c "import json,sys; print(next(p['manifest_path'] for p in json.load(sys.stdin)['packages'] if p['name']=='$package'))")
src=$(dirname "$src")/src
io=$(for f in $(find "$src" -name '*.rs' | sort); do
  awk -v f="$f" '/^#\[cfg\(test\)\]/{exit} /std::(fs|net|process|env)([:;,} ]|$)|SystemTime|Instant::now|File::/{print f ":" NR ": " $0}' "$f"
done)
if [[ -n "$io" ]]; then
  echo "$package performs I/O or reads the clock in non-test code (pass data and time in instead):" >&2
  echo "$io" >&2
  exit 1
fi
echo "$package: $(wc -l <<<"$tree") crates in its dependency tree, none of them a runtime or I/O crate; no std I/O or clock in its code"
