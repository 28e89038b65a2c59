#!/usr/bin/env bash
# `make test` runs this: starts `make up` as a process group of its own, sends SIGINT to the whole group
# (`kill -INT -- -<pgid>`: every process of the group gets it, as with a terminal's Ctrl-C), and fails unless every
# process of the group has exited and no port of the stack is still listening within STOP_LIMIT seconds, with no
# process reported as crashed and none killed for being too slow.
#
# Started from a script, make finds SIGINT ignored and exits 0 once up.sh has stopped everything; in a terminal
# make itself is interrupted and exits 130 after waiting for up.sh. The stop path under test is the same.
#
# As root it runs in a network namespace of its own (`unshare --net`), so `make up`'s fixed ports never collide
# with a stack already running on this machine. Otherwise those ports must be free: when they are not (a developer's
# own Redis or `make up`), it says so and skips rather than fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=test-up-stop
source scripts/lib.sh

STOP_LIMIT=${STOP_LIMIT:-10}
ports=(9092 9093 6379 8090 8081 8082 9181 9182 8080 9090)

if [[ -z "${CES_UP_STOP_NETNS:-}" ]] && (($(id -u) == 0)) && unshare --net true 2>/dev/null; then
  say "running in a network namespace of its own (unshare --net)"
  CES_UP_STOP_NETNS=1 exec unshare --net "$0" "$@"
fi
[[ -n "${CES_UP_STOP_NETNS:-}" ]] && ip link set lo up

dir=$(mktemp -d "${TMPDIR:-/tmp}/ces-up-stop.XXXXXX")
out="$dir/make-up.out"
leader=""
cleanup() {
  [[ -z "$leader" ]] || kill -KILL -- "-$leader" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# The stack's ports that something listens on, space-separated (none: empty, and still success).
listening() {
  ss -Hltn | awk '{print $4}' | sed 's/.*://' | { grep -xE "$(IFS='|'; echo "${ports[*]}")" || true; } | sort -un | xargs
}

if [[ -n "$(listening)" ]]; then
  [[ -z "${CES_UP_STOP_NETNS:-}" ]] || { warn "ports $(listening) are taken inside a fresh network namespace"; exit 1; }
  warn "SKIPPED: ports $(listening) are taken (a stack or service of this machine); run as root, or free them"
  exit 0
fi

# The dev profile reuses the test build; the stop path is the same in release.
say "make up (CES_UP_PROFILE=dev, data in $dir), output in $out"
CES_UP_DIR="$dir/data" CES_UP_PROFILE=dev setsid make --no-print-directory up >"$out" 2>&1 </dev/null &
leader=$!
started=$SECONDS
until grep -q "CES is running" "$out"; do
  if ! kill -0 "$leader" 2>/dev/null; then
    warn "make up exited before the stack was up:"; tail -20 "$out" >&2; exit 1
  fi
  if ((SECONDS - started > 600)); then
    warn "make up did not come up in 600 s:"; tail -20 "$out" >&2; exit 1
  fi
  sleep 0.5
done
members=$(pgrep -g "$leader" | wc -l)
say "stack up after $((SECONDS - started)) s: $members processes in group $leader, listening on $(listening)"
((members >= 9)) || { warn "expected make, up.sh and 7 services in the group, found $members"; ps -o pid,comm -g "$leader" >&2; exit 1; }

say "kill -INT -- -$leader"
sent=$SECONDS
kill -INT -- "-$leader"
last=""
while pgrep -g "$leader" >/dev/null || [[ -n "$(listening)" ]]; do
  # What is still running, each time that changes: the log shows which process a slow stop waited for.
  now="$( (ps -o comm= -g "$leader" || true) | sort | xargs) / ports: $(listening)"
  [[ "$now" == "$last" ]] || say "after $((SECONDS - sent)) s still running: $now"
  last=$now
  if ((SECONDS - sent > STOP_LIMIT)); then
    warn "after ${STOP_LIMIT} s, still running:"; ps -o pid,stat,comm -g "$leader" >&2 || true
    warn "still listening: $(listening)"; tail -20 "$out" >&2; exit 1
  fi
  sleep 0.2
done
leader_status=0
wait "$leader" || leader_status=$?
took=$((SECONDS - sent))
leader=""
if grep -E "exited with status|did not stop within" "$out" >&2; then
  warn "a process was reported as crashed or had to be killed (above)"; exit 1
fi
((leader_status == 0)) || { warn "make up exited with status $leader_status"; tail -20 "$out" >&2; exit 1; }
grep -q "stopped; logs are in" "$out" || { warn "up.sh did not report an orderly stop"; tail -20 "$out" >&2; exit 1; }
say "every process exited and every port closed within $took s of SIGINT (limit $STOP_LIMIT s); make up exited 0"
