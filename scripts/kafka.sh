#!/usr/bin/env bash
# Apache Kafka for CES's local stack, tests and benchmarks: one combined broker + KRaft controller, run as a plain
# JVM process from the jars Apache Kafka publishes on Maven Central (dev/kafka/pom.xml pins the version).
#
#   scripts/kafka.sh libs                      fetch the jars once per machine; print their directory
#   scripts/kafka.sh version                   print the pinned version
#   scripts/kafka.sh run DIR PORT CTRL_PORT    format DIR (once) and run the broker in the foreground:
#                                              clients on 127.0.0.1:PORT, the controller on 127.0.0.1:CTRL_PORT
#
# The jars go to ${CES_CACHE:-~/.cache/ces}/kafka-<version>/libs, outside any clone, so every clone, CI run and
# test of the machine shares one copy. `run` execs java, so the caller's PID is the broker's and a signal to it
# reaches the JVM. Environment: CES_KAFKA_HEAP (JVM heap flags, default "-Xms256m -Xmx1g"), CES_KAFKA_LOG_LEVEL
# (default INFO), CES_KAFKA_PROPS (extra server.properties lines, newline-separated), JAVA_HOME.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
pom="$here/dev/kafka/pom.xml"
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
home="${CES_CACHE:-$HOME/.cache/ces}/kafka-$version"
libs="$home/libs"

say() { printf '\033[1;34m[kafka]\033[0m %s\n' "$*" >&2; }
java_bin() { # the java to run: $JAVA_HOME's, or the one on PATH
  if [[ -n "${JAVA_HOME:-}" ]]; then
    [[ -x "$JAVA_HOME/bin/java" ]] && echo "$JAVA_HOME/bin/java"
  else
    command -v java
  fi
}

# The jars of dev/kafka/pom.xml in $libs. The marker file is written last, so an interrupted copy is redone; a
# lock keeps concurrent callers (tests run outside `make test` on a fresh machine) from copying over each other.
fetch() {
  [[ -f "$home/complete" ]] && return 0
  mkdir -p "$home"
  # The lock lives on the subshell's descriptor, so it is released here and never inherited by the broker.
  (
    flock 9
    [[ -f "$home/complete" ]] && exit 0
    command -v mvn >/dev/null 2>&1 || { echo "[kafka] mvn not found; scripts/deps.sh installs it" >&2; exit 1; }
    say "fetching Apache Kafka $version's jars from Maven Central into $libs (once per machine)"
    started=$SECONDS
    rm -rf "$libs"
    mkdir -p "$libs"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" >&2
    touch "$home/complete"
    say "fetched $(ls "$libs" | wc -l) jars in $((SECONDS - started)) s"
  ) 9>"$home.lock"
}

# server.properties for a single node that is both broker and controller.
properties() { # dir, port, controller port
  cat <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$3
listeners=PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3
advertised.listeners=PLAINTEXT://127.0.0.1:$2
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$1/data
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer offset partitions than the default 50: created at the first group's first commit, and one node holds them.
offsets.topic.num.partitions=8
# A group's first member is assigned at once rather than after 3 s of waiting for others.
group.initial.rebalance.delay.ms=0
# Topics exist because someone created them (cesctl topics create, the tests); a typo is an error, not a topic.
auto.create.topics.enable=false
num.partitions=1
${CES_KAFKA_PROPS:-}
PROPS
}

run() { # dir, port, controller port
  local dir=$1 port=$2 ctrl=$3
  fetch
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  properties "$dir" "$port" "$ctrl" >"$dir/server.properties"
  local java major
  java=$(java_bin) || { echo "[kafka] java not found (JAVA_HOME=${JAVA_HOME:-unset}); scripts/deps.sh installs it" >&2; exit 1; }
  # Apache Kafka 4 brokers need Java 17 or newer ("1.8" for Java 8 reads as 1).
  major=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  if ((${major%%.*} < 17)); then
    echo "[kafka] $java is Java $major; Apache Kafka $version needs 17 or newer (set JAVA_HOME)" >&2
    exit 1
  fi
  local jvm=(${CES_KAFKA_HEAP:--Xms256m -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$here/dev/kafka/log4j2.properties" -cp "$libs/*")
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    # A cluster id is 16 random bytes in URL-safe base64 without padding, as `kafka-storage random-uuid` prints.
    # Like Kafka's own Uuid.randomUuid, never one that starts with '-': the tool would read it as an option
    # (one start in 64 failed with "argument --cluster-id/-t: expected one argument").
    local cluster=-
    while [[ $cluster == -* ]]; do
      cluster=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
    done
    CES_KAFKA_LOG_LEVEL=WARN "$java" "${jvm[@]}" kafka.tools.StorageTool format \
      --cluster-id "$cluster" --config "$dir/server.properties" --ignore-formatted >/dev/null
  fi
  exec "$java" "${jvm[@]}" kafka.Kafka "$dir/server.properties"
}

case "${1:-}" in
  libs) fetch && echo "$libs" ;;
  version) echo "$version" ;;
  run) (($# == 4)) || { echo "usage: $0 run DIR PORT CTRL_PORT" >&2; exit 64; }; run "$2" "$3" "$4" ;;
  *) echo "usage: $0 libs | version | run DIR PORT CTRL_PORT" >&2; exit 64 ;;
esac
