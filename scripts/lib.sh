# Process supervision shared by scripts/up.sh and scripts/bench.sh (sourced, not run).
# The caller sets `tag` (the prefix of every message) and `logs` (a directory for each process's output).

say() { printf '\033[1;34m[%s]\033[0m %s\n' "$tag" "$*"; }
warn() { printf '\033[1;31m[%s]\033[0m %s\n' "$tag" "$*" >&2; }

declare -A pids=()
declare -A names=()
stopping=0

# Refuses to start when any of the given name=port pairs is taken.
check_ports() {
  local taken=0 pair
  for pair in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/${pair#*=}") 2>/dev/null; then
      warn "port ${pair#*=} (for ${pair%%=*}) is already in use; stop whatever listens there and retry"
      taken=1
    fi
  done
  ((taken == 0))
}

# A command prefix that runs a command with SIGINT and SIGQUIT back to their default action: `env
# --default-signal` (coreutils 8.31 and later), or perl where env is older.
if env --default-signal=INT true 2>/dev/null; then
  default_signals=(env --default-signal=INT,QUIT)
else
  # shellcheck disable=SC2016 # perl's variables, not the shell's
  default_signals=(perl -e '$SIG{INT} = $SIG{QUIT} = "DEFAULT"; exec { $ARGV[0] } @ARGV or die "exec $ARGV[0]: $!\n"')
fi

start() { # name, command...
  local name=$1
  shift
  # A non-interactive shell starts background commands with SIGINT and SIGQUIT ignored, and programs that find
  # them ignored keep them so (HAProxy, the JVM): a Ctrl-C would then stop only some of the stack. Restore them.
  "${default_signals[@]}" "$@" >"$logs/$name.log" 2>&1 &
  pids[$name]=$!
  names[$!]=$name
}

stop_one() { # name
  local pid=${pids[$1]:-}
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "names[$pid]" "pids[$1]"
}

# Longest stop_all waits for a process to exit after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT=${STOP_TIMEOUT:-15}

stop_all() {
  ((stopping)) && return 0
  stopping=1
  say "stopping everything"
  local pid left deadline=$((SECONDS + STOP_TIMEOUT))
  for pid in "${!names[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  while :; do
    left=()
    for pid in "${!names[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    ((${#left[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
      for pid in "${left[@]}"; do
        warn "${names[$pid]} (pid $pid) did not stop within $STOP_TIMEOUT s of SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
      done
      break
    fi
    sleep 0.1
  done
  wait 2>/dev/null || true
  say "stopped; logs are in $logs"
}

wait_port() { # name, port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    kill -0 "${pids[$1]}" 2>/dev/null || { warn "$1 exited during start-up; see $logs/$1.log"; tail -5 "$logs/$1.log" >&2; stop_all; exit 1; }
    sleep 0.05
  done
  warn "$1 did not open port $2; see $logs/$1.log"
  stop_all
  exit 1
}

wait_log() { # name, text its log shows once it is up, seconds
  for _ in $(seq 1 $(($3 * 10))); do
    grep -qF "$2" "$logs/$1.log" 2>/dev/null && return 0
    kill -0 "${pids[$1]}" 2>/dev/null || { warn "$1 exited during start-up; see $logs/$1.log"; tail -5 "$logs/$1.log" >&2; stop_all; exit 1; }
    sleep 0.1
  done
  warn "$1 did not start in $3 s; see $logs/$1.log"
  stop_all
  exit 1
}

# True when GET http://127.0.0.1:<port><path> answers 200 (bash only: no curl on a bare machine).
http_ok() { # port, path
  local status
  # The braces keep `2>/dev/null` to the connect: on a bare `exec` it would silence the caller's stderr for good.
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
  read -r -t 2 _ status _ <&3 || true
  exec 3<&-
  [[ "$status" == 200 ]]
}
