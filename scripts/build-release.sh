#!/usr/bin/env bash
# The release build of CES's three binaries, one command for every place that makes them: the container image
# (Dockerfile) and `make bench` run this script, so what ships is built the way it is measured.
#
#   scripts/build-release.sh [--out DIR] [cargo build arguments...]
#
# Builds ces-ingest, ces-edge and cesctl with `cargo build --release --locked` (plus any further arguments, e.g.
# `-q -p ces-loadtest`) into ${CARGO_TARGET_DIR:-target}/release. With --out, then copies the three binaries to DIR:
# the image build keeps its target directory in a cache mount, which is not part of any layer.
set -euo pipefail
cd "$(dirname "$0")/.."

out=""
if [[ "${1:-}" == --out ]]; then
  [[ -n "${2:-}" ]] || { echo "build-release.sh: --out needs a directory" >&2; exit 64; }
  out=$2
  shift 2
fi

cargo build --release --locked -p ces-ingest -p ces-edge -p ces-ctl "$@"

if [[ -n "$out" ]]; then
  built="${CARGO_TARGET_DIR:-target}/release"
  mkdir -p "$out"
  cp "$built/ces-ingest" "$built/ces-edge" "$built/cesctl" "$out/"
fi
