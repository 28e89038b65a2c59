#!/usr/bin/env python3
"""Checks that what the deployment files pass to CES is what CES accepts.

For every CES container in rendered Kubernetes manifests (`helm template`, `kubectl kustomize`) and in
`docker-compose.yml`, this builds the container's environment (literal values, ConfigMaps and Secrets found in the
same files or given with --secrets, valid stand-ins for secrets it cannot see, local files for mounted paths), then:

- runs `<binary> --check-config` with exactly that environment: the configuration must be valid;
- fails on any `CES_*` variable that neither service reads (each binary prints what it did not read);
- checks that the probes ask the paths and ports the service serves them on (the edge's internal listener, ingest's
  HTTP address) and that a Kubernetes pod's grace period covers its preStop pause plus the service's longest
  shutdown (the edge: drain delay + shutdown grace + 2 s);
- checks that every ServiceMonitor endpoint reaches, through its Service, the container port where the service
  serves `/metrics`, and that no Service exposes an edge's internal port together with its public one;
- checks that every edge Deployment runs at least 2 pods (its `replicas`, or the `minReplicas` of the HPA that
  scales it) under a PodDisruptionBudget, so neither a rollout nor a node drain takes every edge at once.

Usage: check_deploy_env.py --bin-dir DIR [--secrets FILE]... FILE...
Exit status 1 with every problem listed, 0 when all is well.
"""

import argparse
import base64
import os
import subprocess
import sys
import tempfile

import yaml

BINARIES = ("ces-edge", "ces-ingest")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stand-ins for values a Secret holds, valid for the services' checks (shape only; never used anywhere else).
SECRET_STAND_INS = {
    "CES_TOKEN_SECRET": "stand-in-token-secret-0123456789abcdef",
    "CES_TOKEN_KEYS": "k1=stand-in-token-secret-0123456789abcdef",
    "CES_REGISTER_API_KEYS": "stand-in-api-key-0123456789abcdef0123",
    "CES_REGISTER_JWT_HS256_SECRET": "stand-in-jwt-secret-0123456789abcdef",
}
DEFAULT_STAND_IN = "stand-in-secret-value-0123456789abcdef"


class Files:
    """Local files standing in for paths the manifests mount (certificates, keys, schemas)."""

    def __init__(self, workdir):
        self.cert = os.path.join(workdir, "tls.crt")
        self.key = os.path.join(workdir, "tls.key")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ces.check",
             "-keyout", self.key, "-out", self.cert],
            check=True, capture_output=True)
        self.jwt_public = os.path.join(ROOT, "services/edge/tests/data/jwt_rs256_public.pem")
        self.schemas = os.path.join(ROOT, "schemas")

    def stand_in(self, name):
        """A local path for the path-valued variable `name`, or None if it is not one."""
        return {
            "CES_TLS_CERT_FILE": self.cert,
            "CES_TLS_KEY_FILE": self.key,
            "CES_REDIS_TLS_CA_FILE": self.cert,
            "CES_KAFKA_PROP_SSL_CA_LOCATION": self.cert,
            "CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE": self.jwt_public,
            "CES_SCHEMA_DIR": self.schemas,
        }.get(name)


def load_documents(paths):
    docs = []
    for path in paths:
        with open(path) as f:
            docs.extend((path, d) for d in yaml.safe_load_all(f) if isinstance(d, dict))
    return docs


def secret_data(doc):
    data = {k: str(v) for k, v in (doc.get("stringData") or {}).items()}
    for k, v in (doc.get("data") or {}).items():
        data[k] = base64.b64decode(v).decode("utf-8", "replace")
    return data


class Cluster:
    """The ConfigMaps and Secrets of the rendered files, by name."""

    def __init__(self, docs):
        self.config_maps = {}
        self.secrets = {}
        for _, d in docs:
            name = (d.get("metadata") or {}).get("name")
            if d.get("kind") == "ConfigMap":
                self.config_maps[name] = {k: str(v) for k, v in (d.get("data") or {}).items()}
            elif d.get("kind") == "Secret":
                self.secrets[name] = secret_data(d)


def binary_of(command, image=None):
    """The CES binary a container runs: named in its command, or the CES image's default entrypoint."""
    for part in command or []:
        base = os.path.basename(str(part))
        if base in BINARIES or base == "cesctl":
            return base
    if not command and image is not None:
        return image_entrypoint()
    return None


def image_entrypoint():
    """The binary the image runs by default (the Dockerfile's last ENTRYPOINT or CMD), if it is a CES one."""
    try:
        with open(os.path.join(ROOT, "Dockerfile")) as f:
            lines = [line for line in f if line.startswith(("ENTRYPOINT", "CMD"))]
    except FileNotFoundError:
        return None
    for line in lines[-1:]:
        for binary in BINARIES:
            if binary in line:
                return binary
    return None


def container_env(container, cluster, problems, where):
    """The environment of a Kubernetes container, as the kubelet would build it (later entries win)."""
    env = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            if name in cluster.config_maps:
                env.update({prefix + k: v for k, v in cluster.config_maps[name].items()})
            elif not source["configMapRef"].get("optional"):
                problems.append(f"{where}: envFrom ConfigMap {name} is not in the rendered files")
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            if name in cluster.secrets:
                env.update({prefix + k: v for k, v in cluster.secrets[name].items()})
            elif not source["secretRef"].get("optional"):
                problems.append(f"{where}: envFrom Secret {name} is neither rendered nor given with --secrets")
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        ref = item.get("valueFrom") or {}
        if "secretKeyRef" in ref:
            secret = cluster.secrets.get(ref["secretKeyRef"]["name"], {})
            env[name] = secret.get(ref["secretKeyRef"]["key"], SECRET_STAND_INS.get(name, DEFAULT_STAND_IN))
        elif "configMapKeyRef" in ref:
            cm = cluster.config_maps.get(ref["configMapKeyRef"]["name"])
            if cm is None or ref["configMapKeyRef"]["key"] not in cm:
                problems.append(f"{where}: {name} refers to a ConfigMap key that is not rendered")
            else:
                env[name] = cm[ref["configMapKeyRef"]["key"]]
        elif "fieldRef" in ref:
            env[name] = "ces-edge-7d9f8b6c4-x2x9q"
        else:
            env[name] = ""
    return env


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def run_check(bin_dir, binary, env):
    """(exit code, stderr, unread CES_* names) of `binary --check-config` under exactly `env`."""
    out = subprocess.run([os.path.join(bin_dir, binary), "--check-config"], env={"PATH": "/usr/bin:/bin", **env},
                         capture_output=True, text=True, timeout=30)
    unread = {line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("unread ")}
    return out.returncode, out.stderr.strip(), unread


def check_environment(bin_dir, binary, env, files, problems, where):
    env = dict(env)
    for name in list(env):
        local = files.stand_in(name)
        if local:
            env[name] = local
    code, stderr, unread = run_check(bin_dir, binary, env)
    if code != 0:
        problems.append(f"{where}: {binary} --check-config refuses the configuration:\n    {stderr}")
    other = next(b for b in BINARIES if b != binary)
    _, _, unread_by_other = run_check(bin_dir, other, env)
    # A setting shared by both services (one ConfigMap for both, say) is fine if either reads it.
    for name in sorted(unread & unread_by_other):
        problems.append(f"{where}: {name} is read by no CES service (misspelt, or removed)")
    return env


def check_probe(container, probe_name, path, port, problems, where):
    probe = container.get(probe_name)
    if not probe:
        problems.append(f"{where}: no {probe_name}")
        return
    get = probe.get("httpGet") or {}
    named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    probe_port = get.get("port")
    probe_port = named.get(probe_port, probe_port)
    if get.get("path") != path or probe_port != port:
        problems.append(f"{where}: {probe_name} asks {get.get('path')} on port {probe_port}; "
                        f"the service serves {path} on {port}")


def check_kubernetes(docs, cluster, bin_dir, files, problems, path_name):
    checked = 0
    served = {}
    for path, d in docs:
        if d.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        spec = d["spec"]["template"]["spec"]
        for c in spec.get("containers") or []:
            command = c.get("command") or []
            image = c.get("image", "") if os.path.basename(c.get("image", "")).startswith("ces") else None
            binary = binary_of(command or (c.get("args") or []), image) if command else binary_of([], image)
            if binary not in BINARIES:
                continue
            where = f"{path}: {d['kind']} {d['metadata']['name']}/{c['name']}"
            env = check_environment(bin_dir, binary, container_env(c, cluster, problems, where), files, problems,
                                    where)
            checked += 1
            # How long after SIGTERM the process may still run (docs/configuration.md, CES_SHUTDOWN_GRACE_MS): the
            # edge counts its grace from the end of the drain delay and then takes up to 2 s to close its internal
            # listener and Redis connections.
            if binary == "ces-edge":
                internal = port_of(env.get("CES_EDGE_INTERNAL_LISTEN", "127.0.0.1:9081"))
                if env.get("CES_EDGE_INTERNAL_LISTEN", "127.0.0.1").startswith("127."):
                    problems.append(f"{where}: CES_EDGE_INTERNAL_LISTEN is loopback: kubelet cannot probe it")
                grace_ms = int(env.get("CES_DRAIN_DELAY_MS", "1000")) + int(env.get("CES_SHUTDOWN_GRACE_MS", "10000"))
                grace_ms += 2000
            else:
                internal = port_of(env.get("CES_INGEST_HTTP_ADDR", "127.0.0.1:8090"))
                grace_ms = int(env.get("CES_SHUTDOWN_GRACE_MS", "10000"))
            named = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            labels = d["spec"]["template"].get("metadata", {}).get("labels") or {}
            public = port_of(env.get("CES_EDGE_LISTEN", "127.0.0.1:8081")) if binary == "ces-edge" else None
            served[(d["metadata"]["name"], c["name"])] = (labels, named, internal, public)
            if binary == "ces-edge":
                check_availability(docs, d, problems, where)
            check_probe(c, "readinessProbe", "/readyz", internal, problems, where)
            check_probe(c, "livenessProbe", "/healthz", internal, problems, where)
            pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
            period = spec.get("terminationGracePeriodSeconds", 30)
            if pre_stop + grace_ms / 1000 > period:
                problems.append(f"{where}: preStop {pre_stop} s + the longest shutdown {grace_ms / 1000:g} s "
                                f"exceed terminationGracePeriodSeconds {period}")
    check_metrics(docs, served, problems, path_name)
    return checked


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_availability(docs, deployment, problems, where):
    """An edge Deployment keeps at least two pods, and a PodDisruptionBudget covers them."""
    name = deployment["metadata"]["name"]
    labels = deployment["spec"]["template"].get("metadata", {}).get("labels") or {}
    least = deployment["spec"].get("replicas")
    for _, d in docs:
        target = (d.get("spec") or {}).get("scaleTargetRef") or {}
        if d.get("kind") == "HorizontalPodAutoscaler" and target.get("kind") == "Deployment" \
                and target.get("name") == name:
            least = d["spec"].get("minReplicas", 1)
    if least is None or least < 2:
        problems.append(f"{where}: runs {least if least is not None else 1} pod(s) at least; an edge needs 2")
    if not any(d.get("kind") == "PodDisruptionBudget" and selects((d.get("spec") or {}).get("selector"), labels)
               for _, d in docs):
        problems.append(f"{where}: no PodDisruptionBudget selects its pods")


def check_metrics(docs, served, problems, path):
    """ServiceMonitor endpoints land on the port each service serves /metrics on; the public Service of an edge
    does not carry its internal port. `served` maps a Deployment to (pod labels, container ports by name,
    metrics port, public port)."""
    services = [d for _, d in docs if d.get("kind") == "Service"]
    for svc in services:
        selector = {"matchLabels": (svc.get("spec") or {}).get("selector") or {}}
        for labels, named, metrics, public in served.values():
            if public is None or not selects(selector, labels):
                continue
            targets = {named.get(p.get("targetPort"), p.get("targetPort")) for p in svc["spec"].get("ports") or []}
            if metrics in targets and public in targets:
                problems.append(f"{path}: Service {svc['metadata']['name']} exposes the edge's internal port "
                                f"{metrics} beside its public port {public}")
    for _, monitor in docs:
        if monitor.get("kind") != "ServiceMonitor":
            continue
        where = f"{path}: ServiceMonitor {monitor['metadata']['name']}"
        selector = (monitor.get("spec") or {}).get("selector")
        reached = False
        for endpoint in (monitor.get("spec") or {}).get("endpoints") or []:
            if endpoint.get("path", "/metrics") != "/metrics":
                problems.append(f"{where}: scrapes {endpoint.get('path')}, the services serve /metrics")
            for svc in services:
                if not selects(selector, (svc.get("metadata") or {}).get("labels") or {}):
                    continue
                for port in svc["spec"].get("ports") or []:
                    if port.get("name") != endpoint.get("port"):
                        continue
                    for labels, named, metrics, _ in served.values():
                        if selects({"matchLabels": svc["spec"].get("selector") or {}}, labels):
                            target = named.get(port.get("targetPort"), port.get("targetPort"))
                            reached = True
                            if target != metrics:
                                problems.append(f"{where}: port {endpoint.get('port')} of Service "
                                                f"{svc['metadata']['name']} reaches container port {target}; "
                                                f"/metrics is on {metrics}")
        if not reached:
            problems.append(f"{where}: reaches no CES container")


def compose_env(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def check_compose(path, bin_dir, files, problems):
    with open(path) as f:
        compose = yaml.safe_load(f)
    checked = 0
    for name, service in (compose.get("services") or {}).items():
        command = service.get("entrypoint") or []
        command = [command] if isinstance(command, str) else command
        extra = service.get("command") or []
        command = command + ([extra] if isinstance(extra, str) else extra)
        own_image = service.get("build") is not None or os.path.basename(
            str(service.get("image", ""))).startswith("ces")
        binary = binary_of(command, "ces" if own_image else None)
        if binary not in BINARIES:
            continue
        where = f"{path}: service {name}"
        check_environment(bin_dir, binary, compose_env(service), files, problems, where)
        checked += 1
    return checked


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True, help="where ces-edge and ces-ingest are")
    parser.add_argument("--secrets", action="append", default=[], help="a YAML file of example Secrets")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    problems = []
    with tempfile.TemporaryDirectory() as workdir:
        files = Files(workdir)
        for path in args.files:
            if os.path.basename(path).startswith(("docker-compose", "compose")):
                n = check_compose(path, args.bin_dir, files, problems)
            else:
                docs = load_documents([path] + args.secrets)
                n = check_kubernetes(load_documents([path]), Cluster(docs), args.bin_dir, files, problems, path)
            if n == 0:
                problems.append(f"{path}: no CES container found")
            print(f"[check-deploy-env] {path}: {n} CES containers checked")
    for p in problems:
        print(f"[check-deploy-env] {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
