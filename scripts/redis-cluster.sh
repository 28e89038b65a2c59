#!/usr/bin/env bash
# A local Redis Cluster on 127.0.0.1 for `make up REDIS=cluster`, tests and operators. Each node is a process of
# its own, run in the foreground by whoever supervises it (scripts/up.sh starts each with lib.sh's `start`), so
# stopping the supervisor stops the cluster; this script only runs, joins, describes and resets nodes:
#
#   redis-cluster.sh run-node DIR PORT       exec one cluster-enabled redis-server on 127.0.0.1:PORT (bus PORT+10000),
#                                            its node table in DIR/nodes-PORT.conf and working directory DIR/PORT
#   redis-cluster.sh create DIR PORT...      join running nodes (6 or more, an even number) into a cluster of
#                                            primaries with one replica each, then wait until every node reports
#                                            cluster_state:ok and all 16384 slots ok (CES_REDIS_CLUSTER_TIMEOUT, 30 s)
#   redis-cluster.sh url PORT...             print the CES_REDIS_URL for those nodes as seeds (fred's format):
#                                            redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002&node=...
#   redis-cluster.sh reset DIR               forget a previous cluster: delete DIR's node tables and node dirs
#                                            (refuses while a node of DIR still answers)
#
# The nodes keep no data (no RDB, no AOF), as the single Redis of `make up` does. A node restarted with the same DIR
# and PORT keeps its identity (nodes-PORT.conf) and rejoins its cluster, as a replica if it was failed over; a new
# cluster needs `reset` first, or `create` finds the nodes not empty and says so.
set -euo pipefail

host=127.0.0.1
# How long `create` waits for the nodes to answer and then for the cluster to agree.
timeout=${CES_REDIS_CLUSTER_TIMEOUT:-30}

die() { printf '[redis-cluster] %s\n' "$*" >&2; exit 1; }
usage() { sed -n '/^#   redis-cluster.sh run-node/,/^#$/s/^# \{0,1\}//p' "$0" >&2; exit 64; }

check_port() {
  if ! [[ "$1" =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > 55535)); then
    die "port '$1' is not a number from 1 to 55535 (a node also listens on port + 10000 for the cluster bus)"
  fi
}

cli() { # port, redis-cli arguments...
  local port=$1
  shift
  redis-cli -h "$host" -p "$port" "$@" 2>/dev/null | tr -d '\r'
}

field() { # name, text of `cluster info` or `info`: the value of name:value
  sed -n "s/^$1://p" <<<"$2"
}

run_node() { # dir, port
  local dir=$1 port=$2
  check_port "$port"
  mkdir -p "$dir/$port"
  dir=$(cd "$dir" && pwd)
  exec redis-server --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
    --cluster-node-timeout 2000 --bind "$host" --port "$port" --dir "$dir/$port" \
    --save '' --appendonly no --daemonize no
}

# Empty when the node on port is a full member of a healthy cluster of `total` nodes with `primaries` primaries,
# otherwise what it reports instead.
node_not_ready() { # port, total, primaries
  local port=$1 total=$2 primaries=$3 info nodes masters slaves bad repl
  info=$(cli "$port" cluster info) || true
  [[ -n "$info" ]] || { echo "does not answer"; return; }
  if [[ $(field cluster_state "$info") != ok || $(field cluster_slots_ok "$info") != 16384 ||
    $(field cluster_known_nodes "$info") != "$total" ]]; then
    echo "cluster_state:$(field cluster_state "$info") cluster_slots_ok:$(field cluster_slots_ok "$info")" \
      "cluster_known_nodes:$(field cluster_known_nodes "$info")"
    return
  fi
  # Fields of `cluster nodes`: id, address, flags (myself,master / slave / fail? / handshake ...), ...
  nodes=$(cli "$port" cluster nodes)
  masters=$(awk '$3 ~ /master/ && $3 !~ /fail|handshake|noaddr/' <<<"$nodes" | wc -l)
  slaves=$(awk '$3 ~ /slave/ && $3 !~ /fail|handshake|noaddr/' <<<"$nodes" | wc -l)
  bad=$(awk '$3 ~ /fail|handshake|noaddr/ {print $2 " " $3}' <<<"$nodes" | xargs)
  if ((masters != primaries || slaves != total - primaries)) || [[ -n "$bad" ]]; then
    echo "sees $masters primaries and $slaves replicas${bad:+, flagged: $bad}"
    return
  fi
  # A replica counts once it has its primary's data: a primary stopped right after `create` then fails over.
  repl=$(cli "$port" info replication)
  if [[ $(field role "$repl") == slave && $(field master_link_status "$repl") != up ]]; then
    echo "is a replica whose link to its primary is $(field master_link_status "$repl")"
  fi
}

create() { # dir, ports...
  local dir=$1 port addrs=() total primaries deadline started=$SECONDS not_ready=""
  shift
  total=$#
  ((total >= 6 && total % 2 == 0)) || die "create needs an even number of ports, at least 6 (3 primaries, 3 replicas)"
  primaries=$((total / 2))
  mkdir -p "$dir"
  deadline=$((SECONDS + timeout))
  for port in "$@"; do
    check_port "$port"
    addrs+=("$host:$port")
    until [[ $(cli "$port" ping) == PONG ]]; do
      ((SECONDS < deadline)) || die "no redis-server answers on $host:$port after $timeout s; start it first (run-node)"
      sleep 0.1
    done
    [[ $(field cluster_enabled "$(cli "$port" info cluster)") == 1 ]] ||
      die "the redis-server on $host:$port is not cluster-enabled (start it with run-node)"
  done
  if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >"$dir/create.log" 2>&1 </dev/null; then
    tail -5 "$dir/create.log" >&2
    die "redis-cli --cluster create failed (full output in $dir/create.log); leftovers of an earlier cluster need" \
      "the nodes stopped, 'reset $dir' and the nodes started again"
  fi
  # redis-cli returns once the nodes' configurations agree; slots are served only once every node has learnt every
  # other through the cluster bus.
  while :; do
    not_ready=""
    for port in "$@"; do
      not_ready=$(node_not_ready "$port" "$total" "$primaries")
      [[ -z "$not_ready" ]] || { not_ready="$host:$port $not_ready"; break; }
    done
    [[ -n "$not_ready" ]] || break
    ((SECONDS < deadline)) || die "the cluster of $host:${1}-${!#} did not settle in $timeout s: $not_ready" \
      "(redis-cli's output in $dir/create.log)"
    sleep 0.2
  done
  printf '[redis-cluster] %d primaries and %d replicas agree on all 16384 slots after %d s\n' \
    "$primaries" "$((total - primaries))" "$((SECONDS - started))"
}

url() { # ports...
  local port out="" sep="?"
  for port in "$@"; do
    check_port "$port"
    if [[ -z "$out" ]]; then
      out="redis-cluster://$host:$port"
    else
      out+="${sep}node=$host:$port"
      sep="&"
    fi
  done
  echo "$out"
}

reset() { # dir
  local dir=$1 conf port
  [[ -d "$dir" ]] || return 0
  shopt -s nullglob
  for conf in "$dir"/nodes-*.conf; do
    port=${conf##*/nodes-}
    port=${port%.conf}
    [[ "$port" =~ ^[0-9]+$ ]] || continue
    [[ $(cli "$port" ping) != PONG ]] || die "a node still answers on $host:$port; stop it before reset $dir"
    rm -f "$conf"
    [[ ! -d "$dir/$port" ]] || rm -rf "${dir:?}/$port"
  done
  rm -f "$dir/create.log"
}

command -v redis-cli >/dev/null 2>&1 ||
  die "redis-cli is missing (Debian package redis-tools; scripts/deps.sh installs it)"
case "${1:-}" in
  run-node) (($# == 3)) || usage; run_node "$2" "$3" ;;
  create) (($# >= 3)) || usage; shift; create "$@" ;;
  url) (($# >= 2)) || usage; shift; url "$@" ;;
  reset) (($# == 2)) || usage; reset "$2" ;;
  *) usage ;;
esac
