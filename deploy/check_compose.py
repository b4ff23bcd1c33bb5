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
- every file or folder bind-mounted from the repository exists;
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
    check_dockerfile(problems)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if not problems:
        print("compose.yaml and Dockerfile: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
