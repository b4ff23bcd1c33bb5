#!/usr/bin/env python3
"""Validates deploy/compose.yaml and deploy/docker/Dockerfile without Docker.

    python3 deploy/check_compose.py

- compose.yaml parses, and conforms to the Compose Specification's JSON schema
  (deploy/schemas/compose-spec.json, from github.com/compose-spec/compose-spec, Apache-2.0);
- the services the deployment needs are there: kafka, minio (+ bucket creation), postgres,
  prometheus, grafana, the one-shot `migrate`, and ingest, preprocess, trainer, registry,
  inference and webhooks each running `sluice serve <name>` from the same image, after `migrate` completed;
  preprocess and trainer run more than one replica by default;
- every SLUICE_* variable is a real setting (core/src/default.toml): Sluice refuses unknown ones;
- ports agree: each Sluice service publishes and health-checks the port SLUICE_HTTP_ADDR listens
  on, no host port is published twice, the Kafka, S3 and PostgreSQL addresses name a compose
  service on a port it listens on, and Prometheus scrapes every Sluice service on that port;
- every file or folder bind-mounted from the repository exists;
- the Sluice services compose starts are those the multi-host test runs (deploy/local/hosts.sh services);
- the Dockerfile is multi-stage, runs as a non-root user, ships ffmpeg and starts `sluice`.
When `docker compose` is installed, `docker compose config --quiet` must accept the file too.
Exits 1 with every problem listed. Needs PyYAML and jsonschema.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
ROOT = DEPLOY.parent
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
SLUICE_SERVICES = ["ingest", "preprocess", "trainer", "registry", "inference", "webhooks"]
REQUIRED = ["kafka", "minio", "minio-init", "postgres", "prometheus", "grafana", "migrate"] + SLUICE_SERVICES
DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def settings():
    defaults = tomllib.loads((ROOT / "core" / "src" / "default.toml").read_text())
    names = set()
    for k, v in defaults.items():
        if isinstance(v, dict):
            names.update(f"SLUICE_{k}_{sub}".upper() for sub in v if not isinstance(v[sub], dict))
        else:
            names.add(f"SLUICE_{k}".upper())
    return names


def with_defaults(value):
    """A value as compose would see it with no .env file: ${X:-default} -> default."""
    return DEFAULT.sub(lambda m: m.group(2), str(value))


def check_compose(problems):
    try:
        doc = yaml.safe_load(COMPOSE.read_text())
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"compose.yaml does not parse: {e}")
        return
    try:
        import jsonschema
    except ImportError:
        problems.append("the jsonschema package is missing (pip install jsonschema)")
        return
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    for error in sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path)):
        path = "/".join(str(p) for p in error.path)
        problems.append(f"compose.yaml: {path or '(top)'}: {error.message}")
    services = doc.get("services", {})
    for name in REQUIRED:
        if name not in services:
            problems.append(f"compose.yaml: service {name} is missing")
    known = settings()
    images = set()
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        for k in env:
            if k.startswith("SLUICE_") and k not in known:
                problems.append(f"compose.yaml: {name} sets {k}, not a Sluice setting; Sluice would refuse to start")
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")) and not (DEPLOY / source).exists():
                problems.append(f"compose.yaml: {name} mounts {source}, which does not exist")
        build = svc.get("build")
        if build:
            context = DEPLOY / (build["context"] if isinstance(build, dict) else build)
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"compose.yaml: {name} builds from {dockerfile}, which does not exist")
    for name in SLUICE_SERVICES + ["migrate"]:
        svc = services.get(name)
        if not svc:
            continue
        images.add(svc.get("image"))
        want = ["migrate"] if name == "migrate" else ["serve", name]
        if svc.get("command") != want:
            problems.append(f"compose.yaml: {name} must run {want}, runs {svc.get('command')}")
        if name != "migrate":
            dep = (svc.get("depends_on") or {}).get("migrate", {}) if isinstance(svc.get("depends_on"), dict) else {}
            if dep.get("condition") != "service_completed_successfully":
                problems.append(f"compose.yaml: {name} must depend on migrate with service_completed_successfully")
            env = svc.get("environment") or {}
            for k in ("SLUICE_KAFKA_BROKERS", "SLUICE_S3_ENDPOINT", "SLUICE_DATABASE_URL", "SLUICE_HTTP_ADDR"):
                if k not in env:
                    problems.append(f"compose.yaml: {name} does not set {k}")
            if with_defaults(env.get("SLUICE_HTTP_ADDR", "")).split(":")[0] != "0.0.0.0":
                problems.append(f"compose.yaml: {name} must listen on 0.0.0.0 to be reachable")
    check_ports(services, problems)
    if len(images) > 1:
        problems.append(f"compose.yaml: the Sluice services use different images {sorted(map(str, images))}")
    for name in ("preprocess", "trainer"):
        replicas = ((services.get(name) or {}).get("deploy") or {}).get("replicas", 1)
        if int(with_defaults(replicas)) < 2:
            problems.append(f"compose.yaml: {name} should run at least 2 replicas by default")
    has_compose = shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True).returncode == 0
    if not has_compose:
        print("compose.yaml: docker compose is not installed; checked against the schema only")
        return
    run = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True)
    if run.returncode == 0:
        print("compose.yaml: docker compose config accepts it")
    else:
        problems.append(f"docker compose config: {run.stderr.strip()}")


def default_http_port():
    defaults = tomllib.loads((ROOT / "core" / "src" / "default.toml").read_text())
    return int(defaults["http"]["addr"].rsplit(":", 1)[1])


def host_port(url, default_port):
    """(host, port) of `kafka:9092`, `http://minio:9000` or `postgres://u:p@postgres:5432/db`."""
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = rest.partition(":")
    return host, int(port) if port else default_port


def check_ports(services, problems):
    """Every port Sluice's settings name is one the compose file opens, and the other way round."""
    published = {}
    for name, svc in services.items():
        for mapping in svc.get("ports", []):
            text = with_defaults(mapping if isinstance(mapping, str) else mapping.get("published", ""))
            parts = text.split(":")
            if len(parts) >= 2:
                host = ":".join(parts[:-1])
                if host in published:
                    problems.append(f"compose.yaml: {name} and {published[host]} both publish {host}")
                published[host] = name
    for name in SLUICE_SERVICES:
        svc = services.get(name) or {}
        env = svc.get("environment") or {}
        addr = with_defaults(env.get("SLUICE_HTTP_ADDR", ""))
        listens = int(addr.rsplit(":", 1)[1]) if addr else default_http_port()
        for mapping in svc.get("ports", []):
            target = str(with_defaults(mapping if isinstance(mapping, str) else mapping.get("target", ""))).split(":")[-1]
            if target != str(listens):
                problems.append(f"compose.yaml: {name} publishes container port {target}, Sluice listens on {listens}")
        test = " ".join((svc.get("healthcheck") or {}).get("test", []))
        for port in re.findall(r"https?://[^/:\s]+:(\d+)", test):
            if int(port) != listens:
                problems.append(f"compose.yaml: {name}'s healthcheck calls port {port}, Sluice listens on {listens}")
        if name == "ingest":
            checks = [("SLUICE_KAFKA_BROKERS", 9092), ("SLUICE_S3_ENDPOINT", 443), ("SLUICE_DATABASE_URL", 5432)]
            for variable, default in checks:
                for target in with_defaults(env.get(variable, "")).split(","):
                    if not target:
                        continue
                    host, port = host_port(target, default)
                    dep = services.get(host)
                    if dep is None:
                        problems.append(f"compose.yaml: {variable} names {host}, which is not a compose service")
                        continue
                    opens = dependency_ports(host, dep)
                    if port not in opens:
                        problems.append(f"compose.yaml: {variable} reaches {host} on {port}; {host} listens on {sorted(opens)}")
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    for job in prometheus.get("scrape_configs", []):
        if job.get("job_name") != "sluice":
            continue
        for sd in job.get("dns_sd_configs", []):
            if sorted(sd.get("names", [])) != sorted(SLUICE_SERVICES):
                problems.append(f"prometheus/compose.yml scrapes {sd.get('names')}, compose runs {SLUICE_SERVICES}")
            if sd.get("port") != default_http_port() and sd.get("port") != int(
                    with_defaults((services.get("ingest") or {}).get("environment", {}).get("SLUICE_HTTP_ADDR", ":0")).rsplit(":", 1)[1]):
                problems.append(f"prometheus/compose.yml scrapes port {sd.get('port')}, not the port Sluice listens on")


def dependency_ports(name, svc):
    """The ports a dependency's container listens on, from its settings (or the image's default)."""
    env = svc.get("environment") or {}
    command = " ".join(map(str, svc.get("command") or []))
    if "KAFKA_ADVERTISED_LISTENERS" in env:
        return {int(p) for p in re.findall(r":(\d+)", str(env["KAFKA_ADVERTISED_LISTENERS"]))}
    if str(svc.get("image", "")).startswith(("quay.io/minio/minio", "minio/minio")):
        address = re.search(r"--address[ =]\S*:(\d+)", command)
        return {int(address.group(1)) if address else 9000}
    if str(svc.get("image", "")).startswith("postgres"):
        return {int(env.get("PGPORT", 5432))}
    return set()


def check_hosts(problems):
    """The services compose starts are the ones the multi-host test places (hosts.sh services)."""
    run = subprocess.run(["bash", str(ROOT / "deploy" / "local" / "hosts.sh"), "services"], capture_output=True, text=True)
    if run.returncode != 0:
        problems.append(f"deploy/local/hosts.sh services failed: {run.stderr.strip()}")
        return
    placed = {line.split()[0] for line in run.stdout.splitlines() if line.strip()}
    if placed != set(SLUICE_SERVICES):
        problems.append(f"compose.yaml runs {sorted(SLUICE_SERVICES)}, the multi-host test (hosts.sh services) "
                        f"runs {sorted(placed)}")


def check_dockerfile(problems):
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    if len(stages) < 2:
        problems.append("Dockerfile: expected a multi-stage build (a build stage and a runtime stage)")
    runtime = text[text.rfind("\nFROM"):]
    user = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    if not user or user[-1].split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: the runtime stage must end with a non-root USER")
    for package in ("ffmpeg", "libturbojpeg0", "ca-certificates"):
        if not re.search(rf"apt-get install[^\n]*(\\\n[^\n]*)*\b{package}\b", runtime):
            problems.append(f"Dockerfile: the runtime stage does not install {package}")
    entry = re.findall(r"^ENTRYPOINT\s+(.+)$", runtime, re.M)
    if not entry or "sluice" not in entry[-1]:
        problems.append("Dockerfile: ENTRYPOINT must start sluice")
    if "--locked" not in text:
        problems.append("Dockerfile: build with --locked so the image uses Cargo.lock")


def main():
    problems = []
    check_compose(problems)
    check_hosts(problems)
    check_dockerfile(problems)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if not problems:
        print("compose.yaml and Dockerfile: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
