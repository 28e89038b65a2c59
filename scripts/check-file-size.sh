#!/usr/bin/env bash
# Fails if a Rust source file has more than LIMIT lines of non-test code (blank and comment lines not counted,
# unit tests at the bottom not counted) and does not say at its top why it is long, in a `//!` line starting with
# "Long file:". Test files (tests/, benches/) are not checked. `make test` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-500}
git rev-parse --git-dir >/dev/null 2>&1 || { echo "check-file-size.sh lists files with git; run it in a clone" >&2; exit 1; }
bad=0
while IFS= read -r f; do
  [[ -f "$f" ]] || continue  # deleted in the work tree, not yet in the index
  n=$(awk '/^#\[cfg\(test\)\]/{exit} {print}' "$f" | grep -cvE '^\s*(//|$)' || true)
  ((n > LIMIT)) || continue
  if head -40 "$f" | grep -q '^//! Long file:'; then
    echo "$f: $n lines of non-test code (says why at its top)"
  else
    echo "$f: $n lines of non-test code, over $LIMIT; split it or say why at its top (//! Long file: ...)" >&2
    bad=1
  fi
done < <(git ls-files -co --exclude-standard '*.rs' | grep -vE '(^|/)(tests|benches|fuzz)/')
exit "$bad"
