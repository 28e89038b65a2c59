#!/usr/bin/env bash
# Checks CES's deployment files, offline, in seconds; `make test` runs it. Every step says what it checks; a step
# that fails does not stop the others, and the script then exits 1 naming each failed step.
#
#   Dockerfile          hadolint
#   docker-compose.yml  the Compose specification's schema; the host ports and topics of `make up` (scripts/up.sh);
#                       the files it mounts exist; HAProxy's and Prometheus's configurations under deploy/compose/
#   YAML                yamllint (.yamllint) over docker-compose.yml, deploy/, k8s/ and helm/
#   helm/ces            helm lint and helm template with the default values and each ci/*-values.yaml, the output
#                       validated against Kubernetes' JSON schemas (kubernetes-validate, strict); a deliberately
#                       broken value (edge.replicas=two) must be refused
#   k8s/                kubectl kustomize of the base and each overlay, validated the same way
#   CES_* variables     scripts/check_deploy_env.py, when present, gives every rendered manifest and the compose
#                       file to the services' own configuration check (--check-config), and must refuse its
#                       fixture of mistakes, scripts/testdata/deploy-env-broken.yaml
#
# Steps whose files do not exist yet (helm/, k8s/, scripts/check_deploy_env.py) are skipped and say so; once the
# files exist, their steps run. The tools come from `scripts/deps.sh deploy-tools` (~/.cache/ces/tools), haproxy
# and promtool from `scripts/deps.sh`. K8S_VERSION (default 1.33.0, the kubectl the tools bring) is the Kubernetes
# version the manifests are rendered for and validated against.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1;34m[check-deploy]\033[0m %s\n' "$*"; }
warn() { printf '\033[1;31m[check-deploy]\033[0m %s\n' "$*" >&2; }

scripts/deps.sh deploy-tools
tools="${CES_CACHE:-$HOME/.cache/ces}/tools"
export PATH="$tools/bin:$HOME/.cargo/bin:$PATH"
python="$tools/venv/bin/python3"
k8s_version=${K8S_VERSION:-1.33.0}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Helm keeps its caches and settings under $work: the checks read nothing a developer's own Helm set up.
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"

failed=()
started=$SECONDS
# Runs one check and returns its status; a failure is remembered for the summary.
run_step() { # description, command...
  local what=$1
  shift
  say "$what"
  if "$@"; then return 0; fi
  warn "FAILED: $what"
  failed+=("$what")
  return 1
}
# The same for a check nothing else depends on: the next check runs whatever this one said.
step() { run_step "$@" || true; }
skip() { say "skipped: $*"; }

# Validates a multi-document YAML file (a rendered chart or overlay) against Kubernetes' schemas. Custom resources
# (ServiceMonitor, PrometheusRule) have no schema there: kubernetes-validate warns about them and goes on.
validate() { # file
  [[ -s "$1" ]] || { warn "$1 is empty: nothing rendered"; return 1; }
  kubernetes-validate --strict --quiet -k "$k8s_version" "$1"
}

# --- Dockerfile -------------------------------------------------------------------------------------------------
step "hadolint Dockerfile" hadolint Dockerfile

# --- docker-compose.yml -----------------------------------------------------------------------------------------
step "check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml" \
  check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

compose_matches_up() {
  "$python" - docker-compose.yml scripts/up.sh <<'PY'
"""docker-compose.yml publishes every port `make up` opens (on 127.0.0.1, as it does), creates the same topics with
the same command, and mounts only files that exist."""
import os, re, sys, yaml

compose_path, up_path = sys.argv[1], sys.argv[2]
compose = yaml.safe_load(open(compose_path))
up = open(up_path).read()
errors = []

# make up's ports: the name=port pairs of its `check_ports` command, and the single Redis of `redis_ports=(...)`.
# Its KRaft controller listens for the broker alone: the compose file keeps 9093 inside its network.
command = re.search(r"^check_ports (.*?[^\\])$", up, re.M | re.S)
single_redis = re.search(r"^\s*redis_ports=\((redis=\d+)\)", up, re.M)
if not command or not single_redis:
    sys.exit(f"{up_path}: found no `check_ports` command or single-Redis port; update this check with it")
pairs = dict(re.findall(r"\b([a-z][a-z-]*)=(\d+)\b", command.group(1) + " " + single_redis.group(1)))
wanted = {int(port): name for name, port in pairs.items() if name != "controller"}
if len(wanted) < 5:
    sys.exit(f"{up_path}: found only {pairs} in its check_ports command; update this check")

published = {}
for service, spec in compose["services"].items():
    for port in spec.get("ports", []):
        if isinstance(port, dict):
            ip, host = port.get("host_ip", ""), port.get("published")
        else:
            parts = str(port).split(":")
            ip, host = (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0] if len(parts) == 2 else None)
        if host is None:
            continue
        published[int(host)] = service
        if ip != "127.0.0.1":
            errors.append(f"service {service} publishes port {host} on {ip or 'every address'}; "
                          "make up listens on 127.0.0.1 only")
for port, name in sorted(wanted.items()):
    if port in published:
        print(f"  make up's {name} port {port}: published by {published[port]}")
    else:
        errors.append(f"make up's {name} listens on {port}, which no compose service publishes")

# make up's topics: the arguments of its `cesctl topics create`; the compose file must run the same command.
created = re.search(r"cesctl\"? topics create (.*)$", up, re.M)
if not created:
    sys.exit(f"{up_path}: found no `cesctl topics create` command; update this check")
want_args = created.group(1).split()
runs = [(service, spec["command"]) for service, spec in compose["services"].items()
        if isinstance(spec.get("command"), list) and spec["command"][1:3] == ["topics", "create"]]
if not runs:
    errors.append("no compose service runs `cesctl topics create`")
for service, cmd in runs:
    if cmd[3:] != want_args:
        errors.append(f"service {service} runs topics create {' '.join(cmd[3:])}; make up: {' '.join(want_args)}")
    else:
        print(f"  topics: service {service} runs `cesctl topics create {' '.join(want_args)}`, as make up does")

# Every file or directory a service mounts from the clone.
for service, spec in compose["services"].items():
    for volume in spec.get("volumes", []):
        source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
        if source and source.startswith(".") and not os.path.exists(os.path.join(os.path.dirname(compose_path), source)):
            errors.append(f"service {service} mounts {source}, which does not exist")

for error in errors:
    print(f"docker-compose.yml: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
}
step "docker-compose.yml publishes make up's ports, creates its topics, mounts files that exist" compose_matches_up

haproxy_config() {
  local haproxy out
  haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
  [[ -x "$haproxy" ]] || { warn "haproxy not found; scripts/deps.sh installs it"; return 1; }
  # The edges' names resolve inside the compose network only: HAProxy starts them disabled until Docker's DNS
  # answers, and says so here. Any other warning is shown.
  out=$("$haproxy" -c -f deploy/compose/haproxy.cfg 2>&1) || { echo "$out" >&2; return 1; }
  grep -E 'WARNING|ALERT' <<<"$out" | grep -v "could not resolve address 'edge-[ab]'" >&2 || true
}
step "haproxy -c deploy/compose/haproxy.cfg" haproxy_config
# --syntax-only: the rule file path is the container's; promtool checks the rules themselves in `make test`.
step "promtool check config --syntax-only deploy/compose/prometheus.yml" \
  promtool check config --syntax-only deploy/compose/prometheus.yml

# --- YAML -------------------------------------------------------------------------------------------------------
yaml_paths=(.yamllint docker-compose.yml deploy)
[[ -d k8s ]] && yaml_paths+=(k8s)
[[ -d helm ]] && yaml_paths+=(helm)
step "yamllint -s ${yaml_paths[*]}" yamllint -s "${yaml_paths[@]}"

# --- helm/ces ---------------------------------------------------------------------------------------------------
# Helm 4 logs every symbolic link a chart follows, on each command: the chart links the one copy of the alert
# rules, dashboard and schemas into its files/ on purpose, so those lines are dropped and everything else is shown.
helm() {
  local status=0
  command helm "$@" 2>"$work/helm.err" || status=$?
  grep -v 'msg="found symbolic link in path' "$work/helm.err" >&2 || true
  return "$status"
}
rendered=()
if [[ -d helm ]]; then
  chart=helm/ces
  if [[ ! -f "$chart/Chart.yaml" ]]; then
    step "helm/ holds the chart helm/ces" false
  else
    render_chart() { # output file, helm template arguments...
      local out=$1
      shift
      helm template ces "$@" >"$out"
    }
    values_files=("")
    for f in "$chart"/ci/*-values.yaml; do
      if [[ -e "$f" ]]; then values_files+=("$f"); fi
    done
    for values in "${values_files[@]}"; do
      args=(--kube-version "$k8s_version")
      name=default
      if [[ -n "$values" ]]; then
        args+=(-f "$values")
        name=$(basename "$values" -values.yaml)
      fi
      step "helm lint --strict $chart${values:+ -f $values}" helm lint --strict "${args[@]}" "$chart"
      out="$work/helm-$name.yaml"
      if run_step "helm template $chart${values:+ -f $values}" render_chart "$out" "${args[@]}" "$chart"; then
        step "kubernetes-validate $k8s_version: helm template ($name values)" validate "$out"
        rendered+=("$out")
      fi
    done
    # A broken value must fail: the chart's values.schema.json refuses it, its templates refuse it (a registration
    # mode it does not know, a grace period the drain does not fit), or the rendered Deployment does not validate.
    # The error must name the value; a failure for any other reason does not count.
    broken_value_refused() { # value=setting, a word the error must contain
      local out status=0
      out=$( { helm template ces --kube-version "$k8s_version" --set "$1" "$chart" >"$work/broken.yaml" \
        && validate "$work/broken.yaml"; } 2>&1) || status=$?
      if ((status == 0)); then
        echo "helm template --set $1 rendered and validated: a broken value goes unnoticed" >&2
        return 1
      fi
      grep -q "$2" <<<"$out" || { echo "refused, but not for $1:" >&2; echo "$out" >&2; return 1; }
      echo "  refused as expected: $(grep -m1 "$2" <<<"$out")"
    }
    step "helm template --set edge.replicas=two is refused" broken_value_refused edge.replicas=two replicas
    step "helm template --set registration.mode=bogus is refused" broken_value_refused registration.mode=bogus mode
    step "helm template --set edge.terminationGracePeriodSeconds=17 is refused" \
      broken_value_refused edge.terminationGracePeriodSeconds=17 terminationGracePeriodSeconds
  fi
else
  skip "helm lint, helm template and their validation: helm/ does not exist yet"
fi

# --- k8s/ -------------------------------------------------------------------------------------------------------
if [[ -d k8s ]]; then
  # As k8s/'s kustomizations say to build them: the schemas, alert rules and dashboard they package have one copy
  # each outside k8s/ (schemas/, deploy/), which kustomize reads only without its load restrictor; the alert rules
  # become a PrometheusRule through an exec plugin of k8s/plugins.
  kustomize_flags=(--load-restrictor LoadRestrictionsNone)
  if [[ -d k8s/plugins ]]; then
    export KUSTOMIZE_PLUGIN_HOME="$PWD/k8s/plugins"
    kustomize_flags+=(--enable-alpha-plugins)
  fi
  render_kustomization() { kubectl kustomize "${kustomize_flags[@]}" "$1" >"$2"; } # directory, output file
  kustomizations=()
  for dir in k8s/base k8s/overlays/*/; do
    dir=${dir%/}
    if [[ -f "$dir/kustomization.yaml" || -f "$dir/kustomization.yml" || -f "$dir/Kustomization" ]]; then
      kustomizations+=("$dir")
    fi
  done
  if ((${#kustomizations[@]} == 0)); then
    step "k8s/ holds a kustomization in k8s/base or k8s/overlays/*" false
  fi
  for dir in "${kustomizations[@]}"; do
    name=${dir#k8s/}
    name=${name//\//-}
    out="$work/kustomize-$name.yaml"
    if run_step "kubectl kustomize ${kustomize_flags[*]} $dir" render_kustomization "$dir" "$out"; then
      step "kubernetes-validate $k8s_version: kubectl kustomize $dir" validate "$out"
      rendered+=("$out")
    fi
  done
else
  skip "kubectl kustomize and its validation: k8s/ does not exist yet"
fi

# --- CES_* variables --------------------------------------------------------------------------------------------
if [[ -f scripts/check_deploy_env.py ]]; then
  bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/debug"
  step "cargo build (debug) of ces-ingest and ces-edge, for their --check-config" \
    cargo build --locked -q -p ces-ingest -p ces-edge
  # The Secrets the manifests expect are created by hand, so k8s/ keeps examples with values of the right shape
  # (a Redis URL where one is expected): the check uses them rather than its generic stand-ins.
  secrets=()
  if [[ -d k8s ]]; then
    while IFS= read -r f; do secrets+=(--secrets "$f"); done < <(find k8s -iname '*secret*.example.yaml' | sort)
  fi
  # Run by the venv's Python, which has pyyaml.
  step "scripts/check_deploy_env.py${secrets[*]:+ ${secrets[*]}}: the services accept every CES_* variable of the manifests and the compose file" \
    "$python" scripts/check_deploy_env.py --bin-dir "$bin_dir" "${secrets[@]}" "${rendered[@]}" docker-compose.yml
  # Its fixture holds six mistakes (a misspelt variable, a probe on the wrong port, a grace period too short for
  # preStop plus the shutdown, one edge pod, no disruption budget, metrics scraped on the public port): the check
  # must fail and name each.
  broken=scripts/testdata/deploy-env-broken.yaml
  env_check_catches_mistakes() {
    local out status=0 mistake missed=0
    out=$("$python" scripts/check_deploy_env.py --bin-dir "$bin_dir" "$broken" 2>&1) || status=$?
    if ((status == 0)); then
      echo "check_deploy_env.py passed $broken, which holds six mistakes" >&2
      return 1
    fi
    for mistake in CES_WS_PING_INTERVALL "livenessProbe asks /healthz on port 9091" terminationGracePeriodSeconds \
      "an edge needs 2" "no PodDisruptionBudget" "reaches container port 8080; /metrics is on 9090"; do
      if grep -qF "$mistake" <<<"$out"; then
        echo "  caught: $(grep -m1 -F "$mistake" <<<"$out" | sed 's/^\[check-deploy-env\] //')"
      else
        echo "check_deploy_env.py did not report '$mistake' in $broken; it said:" >&2
        missed=1
      fi
    done
    ((missed == 0)) || { echo "$out" >&2; return 1; }
  }
  if [[ -f "$broken" ]]; then
    step "scripts/check_deploy_env.py refuses $broken" env_check_catches_mistakes
  else
    skip "the CES_* variables' check against a broken fixture: $broken does not exist"
  fi
else
  skip "the CES_* variables' check: scripts/check_deploy_env.py does not exist yet"
fi

if ((${#failed[@]})); then
  warn "${#failed[@]} check(s) failed:"
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
say "all deployment checks passed in $((SECONDS - started)) s"
