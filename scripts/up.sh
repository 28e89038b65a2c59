#!/usr/bin/env bash
# Starts a whole local CES stack in the foreground: broker, Redis, ingest, two edges, HAProxy and Prometheus.
# Ctrl-C stops everything it started. A process that dies is reported; the others keep running.
# REDIS=single (the default) runs one redis-server on 6379; REDIS=cluster a Redis Cluster of 3 primaries and 3
# replicas on 7001-7006 (scripts/redis-cluster.sh), which ingest and both edges reach through one cluster URL.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tag=up
source scripts/lib.sh
# A shell that starts with SIGINT ignored (`make up` launched in the background by another script) cannot trap
# it, so Ctrl-C or `kill -INT` to the process group would leave this script waiting. Start again without that.
if [[ -z "${CES_UP_SIGNALS:-}" ]]; then
  CES_UP_SIGNALS=default exec "${default_signals[@]}" "$root/scripts/up.sh" "$@"
fi
# CES_UP_DIR: where data and logs go (default .ces); CES_UP_PROFILE: the cargo profile to run (default release;
# scripts/test-up-stop.sh uses dev to reuse the test build).
data="${CES_UP_DIR:-$root/.ces}"
profile=${CES_UP_PROFILE:-release}
logs="$data/logs"
redis_mode=${REDIS:-single}
if [[ "$redis_mode" != single && "$redis_mode" != cluster ]]; then
  warn "REDIS=$redis_mode: expected single (one redis-server) or cluster (a Redis Cluster)"
  exit 64
fi
cluster_ports=(7001 7002 7003 7004 7005 7006)

scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

if [[ "$redis_mode" == cluster ]]; then
  redis_ports=()
  # Each node also listens on its port + 10000 for the cluster bus.
  for port in "${cluster_ports[@]}"; do redis_ports+=("redis-$port=$port" "redis-$port-bus=$((port + 10000))"); done
else
  redis_ports=(redis=6379)
fi
check_ports broker=9092 controller=9093 "${redis_ports[@]}" edge-a=8081 edge-b=8082 edge-a-internal=9181 \
  edge-b-internal=9182 haproxy=8080 ingest=8090 prometheus=9090 || exit 1

say "building $profile binaries (cargo build --profile $profile)"
cargo build --profile "$profile" --locked -q -p ces-ingest -p ces-edge -p ces-ctl
bin="${CARGO_TARGET_DIR:-$root/target}/$([[ $profile == dev ]] && echo debug || echo "$profile")"

# The demo page, served by both edges at /demo/ (CES_DEMO_DIR) and so through HAProxy: the page and the TypeScript
# client's browser build, staged in $data/demo. Built before anything starts, so a broken build stops here.
demo_url=""
if [[ ! -f clients/js/package.json ]]; then
  warn "clients/js is not in this checkout: no demo page (/demo answers 404)"
elif ! command -v npm >/dev/null 2>&1; then
  warn "npm not found: no demo page (/demo answers 404); install Node.js to get it"
else
  if [[ ! -d clients/js/node_modules || clients/js/package-lock.json -nt clients/js/node_modules ]]; then
    say "installing the TypeScript client's dependencies (npm ci in clients/js)"
    (cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
  fi
  say "building the TypeScript client's browser bundle (npm run build in clients/js)"
  (cd clients/js && npm run --silent build)
  say "staging the demo page and clients/js/dist/ces-client.browser.js in $data/demo"
  mkdir -p "$data/demo"
  cp clients/demo/index.html "$data/demo/index.html"
  cp clients/js/dist/ces-client.browser.js "$data/demo/ces-client.js"
  # Both edges read it; the page registers its own session, which the open registration below allows.
  export CES_DEMO_DIR="$data/demo"
  demo_url=http://127.0.0.1:8080/demo/
fi

mkdir -p "$logs"
[[ "$redis_mode" == cluster ]] || mkdir -p "$data/redis"
# Every WebSocket is a file descriptor in the edge and two in HAProxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ ! -s "$data/token-secret" ]]; then
  umask 077
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$data/token-secret"
fi
export CES_TOKEN_SECRET
chmod 600 "$data/token-secret"
CES_TOKEN_SECRET=$(cat "$data/token-secret")
if [[ "$redis_mode" == cluster ]]; then
  # Every node is a seed, so a service that starts while one node is down still finds the cluster.
  CES_REDIS_URL=$(scripts/redis-cluster.sh url "${cluster_ports[@]}")
else
  CES_REDIS_URL=redis://127.0.0.1:6379
fi
export CES_LOG_FORMAT=text CES_REDIS_URL CES_KAFKA_BROKERS=127.0.0.1:9092
# A local stack stops within seconds: the edges close their sockets over 1 s instead of production's 1 + 5 s.
export CES_DRAIN_DELAY_MS=${CES_DRAIN_DELAY_MS:-0} CES_DRAIN_WINDOW_MS=${CES_DRAIN_WINDOW_MS:-1000}

trap 'stop_all; exit 0' INT TERM
# Any failure (set -e) after processes started must not leave them running.
trap 'stop_all' EXIT

say "starting Apache Kafka $(scripts/kafka.sh version) (broker and KRaft controller) on 127.0.0.1:9092, data in $data/kafka"
started=$SECONDS
start broker scripts/kafka.sh run "$data/kafka" 9092 9093
wait_log broker "Kafka Server started" 120
say "Apache Kafka is up after $((SECONDS - started)) s"

if [[ "$redis_mode" == cluster ]]; then
  cluster_dir="$data/redis-cluster"
  redis_where="127.0.0.1:${cluster_ports[0]}-${cluster_ports[-1]}"
  say "starting a Redis Cluster of 3 primaries and 3 replicas on $redis_where, data in $cluster_dir"
  started=$SECONDS
  # Nothing is persisted, as with the single Redis: a node table left by an earlier run would only keep the nodes
  # from forming a new cluster. The check_ports above made sure no node of that run still listens.
  scripts/redis-cluster.sh reset "$cluster_dir"
  redis_names=()
  for port in "${cluster_ports[@]}"; do
    start "redis-$port" scripts/redis-cluster.sh run-node "$cluster_dir" "$port"
    redis_names+=("redis-$port")
  done
  for port in "${cluster_ports[@]}"; do wait_port "redis-$port" "$port"; done
  say "creating the cluster (redis-cli --cluster create) and waiting until every node reports all 16384 slots ok"
  if ! scripts/redis-cluster.sh create "$cluster_dir" "${cluster_ports[@]}"; then
    warn "the Redis Cluster did not form; node logs are $logs/redis-<port>.log"
    stop_all
    exit 1
  fi
  say "Redis Cluster is up after $((SECONDS - started)) s; CES_REDIS_URL=$CES_REDIS_URL"
  redis_where+="   Redis Cluster, 3 primaries + 3 replicas ($CES_REDIS_URL)"
else
  say "starting redis-server on 127.0.0.1:6379"
  start redis redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --dir "$data/redis"
  wait_port redis 6379
  redis_names=(redis)
  redis_where="127.0.0.1:6379"
fi

say "creating topics ces.events and ces.events.dlq"
"$bin/cesctl" topics create --partitions 8 ces.events ces.events.dlq

say "starting ingest (health and metrics on 127.0.0.1:8090, schemas from schemas/, reloaded by kill -HUP)"
CES_INGEST_HTTP_ADDR=127.0.0.1:8090 CES_SCHEMA_DIR="$PWD/schemas" start ingest "$bin/ces-ingest"
wait_port ingest 8090

say "starting edge-a on 127.0.0.1:8081 and edge-b on 127.0.0.1:8082 (health and metrics on 127.0.0.1:9181 and :9182)"
# HAProxy (127.0.0.1) adds X-Forwarded-For; the edges believe it from there only.
export CES_TRUSTED_PROXIES=127.0.0.1
# A local stack: anyone on this machine may register sessions. A deployment sets API keys or a JWT key instead
# (docs/security.md); the edges log a warning at start while registration is open.
say "registration is open (CES_REGISTER_OPEN=true): for local use only"
export CES_REGISTER_OPEN=true
# Each edge serves clients on its public port and probes and metrics on an internal one (dev/haproxy.cfg checks
# /readyz there, dev/prometheus.yml scrapes it).
CES_NODE_ID=edge-a CES_EDGE_LISTEN=127.0.0.1:8081 CES_EDGE_INTERNAL_LISTEN=127.0.0.1:9181 start edge-a "$bin/ces-edge"
CES_NODE_ID=edge-b CES_EDGE_LISTEN=127.0.0.1:8082 CES_EDGE_INTERNAL_LISTEN=127.0.0.1:9182 start edge-b "$bin/ces-edge"
wait_port edge-a 8081
wait_port edge-b 8082

say "starting haproxy on 127.0.0.1:8080 (round-robin over both edges)"
haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)
start haproxy "$haproxy_bin" -db -f dev/haproxy.cfg
wait_port haproxy 8080

say "starting prometheus on 127.0.0.1:9090 (scrapes ingest and both edges, evaluates deploy/prometheus/alerts.yml)"
start prometheus prometheus --config.file=dev/prometheus.yml --storage.tsdb.path="$data/prometheus" \
  --web.listen-address=127.0.0.1:9090 --log.level=warn
wait_port prometheus 9090

cat <<MSG

CES is running (Ctrl-C stops everything):
  Apache Kafka        127.0.0.1:9092   topics ces.events, ces.events.dlq (controller on :9093)
  Redis               $redis_where
  ingest              http://127.0.0.1:8090/metrics
  edge-a              http://127.0.0.1:8081   (metrics: http://127.0.0.1:9181/metrics)
  edge-b              http://127.0.0.1:8082   (metrics: http://127.0.0.1:9182/metrics)
  load balancer       http://127.0.0.1:8080   (clients connect here)
$(if [[ -n "$demo_url" ]]; then
  echo "  demo page           $demo_url   (open it in a browser; it shows the command that sends it events)"
else
  echo "  demo page           not served (see the warning above)"
fi)
  Prometheus          http://127.0.0.1:9090   (try ces_e2e_latency_seconds_count; alerts at /alerts)
  logs                $logs/

Watch a session (in a second terminal; it prints the command to send it events):
  $bin/cesctl watch

Or send a test event to any session id right away:
  $bin/cesctl produce --session demo-session --type demo.ping --data '{"hello":"world"}'

Kill an edge by hand to watch clients move to the other (PIDs below), e.g. kill <edge-a pid>:
MSG
for name in broker "${redis_names[@]}" ingest edge-a edge-b haproxy prometheus; do
  printf '  %-10s pid %s\n' "$name" "${pids[$name]}"
done
echo

while ((${#names[@]})); do
  finished=""
  set +e
  wait -n -p finished
  code=$?
  set -e
  ((stopping)) && break
  [[ -z "$finished" ]] && continue
  name=${names[$finished]:-?}
  unset "names[$finished]"
  warn "$name (pid $finished) exited with status $code; the other processes keep running. Log: $logs/$name.log"
done
