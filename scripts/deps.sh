#!/usr/bin/env bash
# Installs what CES needs to run and test, reusing whatever is already there.
#   redis-server, haproxy, prometheus (Debian packages; prometheus brings promtool, which checks the alert rules)
#   redis-cli              (Debian package redis-tools, which redis-server brings; it forms `make up REDIS=cluster`)
#   java 17+ and maven     (Debian packages openjdk-17-jre-headless and maven, when missing)
#   Apache Kafka's jars    (scripts/kafka.sh: Maven Central into ~/.cache/ces/kafka-<version>, once per machine)
#   libssl-dev, pkg-config (Debian packages: librdkafka is built with OpenSSL, for Kafka over TLS and SCRAM)
#   cargo-nextest          (test runner; only with --test)
set -euo pipefail

want_nextest=0
[[ "${1:-}" == "--test" ]] && want_nextest=1

say() { printf '\033[1;34m[deps]\033[0m %s\n' "$*"; }
export PATH="$HOME/.cargo/bin:$PATH"

apt_missing=()
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
# redis-cli forms the cluster of `make up REDIS=cluster`; Debian's redis-server brings it (redis-tools), a Redis
# built by hand may not.
command -v redis-cli >/dev/null 2>&1 || [[ " ${apt_missing[*]} " == *" redis-server "* ]] || apt_missing+=(redis-tools)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || apt_missing+=(haproxy)
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || apt_missing+=(prometheus)
if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]] || command -v java >/dev/null 2>&1; then :; else apt_missing+=(openjdk-17-jre-headless); fi
command -v mvn >/dev/null 2>&1 || apt_missing+=(maven)
# librdkafka is built with the system's OpenSSL (rdkafka's `ssl` feature), found through pkg-config.
command -v pkg-config >/dev/null 2>&1 || apt_missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || apt_missing+=(libssl-dev)
# scripts/test-up-stop.sh watches processes and sockets with pgrep and ss.
command -v pgrep >/dev/null 2>&1 || apt_missing+=(procps)
command -v ss >/dev/null 2>&1 || apt_missing+=(iproute2)
if ((${#apt_missing[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "[deps] need root or sudo to install: ${apt_missing[*]}" >&2; exit 1; }
    sudo -n true 2>/dev/null || { echo "[deps] sudo asks for a password; install ${apt_missing[*]} by hand or run as root" >&2; exit 1; }
    sudo="sudo -n"
  fi
  say "installing ${apt_missing[*]} with apt-get"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  # The Debian package starts a system-wide redis on :6379; CES starts its own, so stop that one if it runs.
  if [[ " ${apt_missing[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
  if [[ " ${apt_missing[*]} " == *" haproxy "* ]] && command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now haproxy >/dev/null 2>&1 || true
  fi
  # Likewise the packaged Prometheus on :9090: `make up` runs its own with CES's scrape configuration.
  if [[ " ${apt_missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
else
  say "redis-server, redis-cli, haproxy, prometheus, java and maven already installed"
fi

libs=$("$(dirname "$0")/kafka.sh" libs)
say "Apache Kafka's jars are in $libs"

if ((want_nextest)); then
  if cargo nextest --version >/dev/null 2>&1; then
    say "cargo-nextest already installed"
  else
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked
  fi
fi
