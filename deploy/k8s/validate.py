#!/usr/bin/env python3
"""Renders deploy/k8s (the base and every overlay) and validates every object offline.

    python3 deploy/k8s/validate.py [--kubernetes-version 1.30.0 ...] [-v]

1. Rendering: a small kustomize for the features these files use (resources, namespace, images,
   patches as strategic merge or JSON 6902). An unknown kustomization field is an error rather
   than something silently ignored. When `kubectl` (or `kustomize`) is on PATH, its rendering
   must equal ours object for object, so the renderer cannot drift from the real one.
2. Schemas: every built-in object against the Kubernetes OpenAPI schemas shipped by the
   `kubernetes-validate` package, strictly (unknown fields are errors), for each version asked
   (default: the oldest and newest supported here, 1.29.0 and the package's latest).
3. KEDA ScaledObjects (their CRD is not in those schemas): checked field by field.
4. Sluice's own rules: every Deployment runs `sluice serve <its component>` with /healthz
   liveness, /readyz readiness, resource requests and a memory limit; every SLUICE_* key in the
   ConfigMap, Secret and env lists is a real setting (core/src/default.toml); the container's
   `http` port, its probes, its Service's targetPort and the prometheus.io/port annotation are the
   port SLUICE_HTTP_ADDR listens on (on every interface); references (envFrom,
   serviceAccountName, Service selectors, autoscaler targets) resolve; no Deployment is scaled by
   both an HPA and KEDA; preprocess and trainer scale on their consumer group's lag; the
   Deployments are the services the multi-host test runs (deploy/local/hosts.sh services).

Exits 1 with every problem listed. Needs PyYAML and kubernetes-validate (deploy/check.sh
installs them).
"""

import argparse
import copy
import json
import pathlib
import shutil
import subprocess
import sys
import tomllib

import yaml

K8S = pathlib.Path(__file__).resolve().parent
ROOT = K8S.parent.parent
SERVICES = ["ingest", "preprocess", "trainer", "registry", "inference", "webhooks"]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume"}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# Strategic-merge keys of the lists these manifests patch; any other list is replaced.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}
KEDA_SCALING = {"preprocess": ("preprocess", "sluice.media.ingested"),
                "trainer": ("trainer", "sluice.training.trials")}


class Problem(Exception):
    pass


# ---------- rendering ----------

def load_docs(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as e:
        raise Problem(f"{path.relative_to(ROOT)}: {e}") from e


def kustomization_file(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    raise Problem(f"{directory.relative_to(ROOT)}: no kustomization.yaml")


def key(obj):
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion", "").split("/")[0] if "/" in obj.get("apiVersion", "") else "",
            obj.get("kind"), meta.get("namespace", ""), meta.get("name"))


def strategic_merge(base, patch):
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif k in MERGE_KEYS and isinstance(v, list) and isinstance(out.get(k), list):
            mk = MERGE_KEYS[k]
            merged = copy.deepcopy(out[k])
            for item in v:
                match = next((i for i, b in enumerate(merged) if b.get(mk) == item.get(mk)), None)
                if match is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[match] = strategic_merge(merged[match], item)
            out[k] = merged
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = strategic_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def json_pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    return parent, parts[-1]


def json6902(obj, ops, where):
    obj = copy.deepcopy(obj)
    for op in ops:
        try:
            parent, last = json_pointer(obj, op["path"])
            if op["op"] in ("add", "replace"):
                if isinstance(parent, list):
                    index = len(parent) if last == "-" else int(last)
                    if op["op"] == "add":
                        parent.insert(index, op["value"])
                    else:
                        parent[index] = op["value"]
                else:
                    if op["op"] == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = op["value"]
            elif op["op"] == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                raise Problem(f"{where}: unsupported JSON patch op {op['op']!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise Problem(f"{where}: JSON patch {op} does not apply: {e!r}") from e
    return obj


def matches(obj, target):
    group, kind, _, name = key(obj)
    return ((not target.get("kind") or target["kind"] == kind) and (not target.get("name") or target["name"] == name)
            and (not target.get("group") or target["group"] == group))


def render(directory):
    kfile = kustomization_file(directory)
    k = yaml.safe_load(kfile.read_text()) or {}
    where = kfile.relative_to(ROOT)
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise Problem(f"{where}: fields this renderer does not implement: {sorted(unknown)}")
    objects = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        objects.extend(render(path) if path.is_dir() else load_docs(path))
    for patch in k.get("patches", []):
        if "path" in patch:
            text = (directory / patch["path"]).read_text()
        else:
            text = patch["patch"]
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        if len(docs) == 1 and isinstance(docs[0], list):
            target = patch.get("target") or {}
            if not target:
                raise Problem(f"{where}: a JSON 6902 patch needs a target")
            hits = [i for i, o in enumerate(objects) if matches(o, target)]
            if not hits:
                raise Problem(f"{where}: patch target {target} matches nothing")
            for i in hits:
                objects[i] = json6902(objects[i], docs[0], where)
            continue
        for doc in docs:
            target = patch.get("target") or {"kind": doc.get("kind"), "name": doc.get("metadata", {}).get("name")}
            hits = [i for i, o in enumerate(objects) if matches(o, target)]
            if not hits:
                raise Problem(f"{where}: patch for {target} matches no resource")
            for i in hits:
                objects[i] = strategic_merge(objects[i], doc)
    if "namespace" in k:
        for o in objects:
            if o.get("kind") not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for o in objects:
            for c in pod_containers(o):
                name = c.get("image", "").split("@")[0].rsplit(":", 1)[0] if ":" in c.get("image", "").split("/")[-1] \
                    else c.get("image", "").split("@")[0]
                if name == image["name"]:
                    new = image.get("newName", name)
                    if "digest" in image:
                        new += "@" + image["digest"]
                    elif "newTag" in image:
                        new += ":" + str(image["newTag"])
                    c["image"] = new
    return objects


def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return spec.get("template", {}).get("spec", {})
    if obj.get("kind") == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    if obj.get("kind") == "Pod":
        return spec
    return {}


def pod_containers(obj):
    ps = pod_spec(obj)
    return ps.get("initContainers", []) + ps.get("containers", [])


def reference_rendering(directory):
    """The real kustomize's output, or None when neither kubectl nor kustomize is installed."""
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(directory)]
    else:
        return None, None
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise Problem(f"{' '.join(cmd)} failed: {run.stderr.strip()}")
    return [d for d in yaml.safe_load_all(run.stdout) if d], cmd[0]


def normalise(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


# ---------- checks ----------

def sluice_settings():
    """Every SLUICE_* variable name a Sluice process accepts, from the built-in defaults."""
    defaults = tomllib.loads((ROOT / "core" / "src" / "default.toml").read_text())
    names = set()
    for k, v in defaults.items():
        if isinstance(v, dict):
            for sub in v:
                if not isinstance(v[sub], dict):
                    names.add(f"SLUICE_{k}_{sub}".upper())
        else:
            names.add(f"SLUICE_{k}".upper())
    return names


def default_http_port():
    """The port of http.addr in the built-in defaults (what a pod without SLUICE_HTTP_ADDR listens on)."""
    defaults = tomllib.loads((ROOT / "core" / "src" / "default.toml").read_text())
    return int(defaults["http"]["addr"].rsplit(":", 1)[1])


def container_env(container, by_kind):
    """The variables a container sees: its envFrom ConfigMaps and Secrets, then its env list."""
    env = {}
    for ref in container.get("envFrom", []):
        for kind, field, data in (("ConfigMap", "configMapRef", "data"), ("Secret", "secretRef", "stringData")):
            if field in ref:
                env.update((by_kind.get(kind, {}).get(ref[field]["name"]) or {}).get(data) or {})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "")
    return env


def check_ports(d, svc, by_kind, where, problems):
    """The pod's port, probes, Service and scrape annotation all name the port Sluice listens on."""
    ps = pod_spec(d)
    (c,) = ps.get("containers", [{}])[:1] or [{}]
    env = container_env(c, by_kind)
    addr = env.get("SLUICE_HTTP_ADDR")
    listens = int(str(addr).rsplit(":", 1)[1]) if addr else default_http_port()
    if addr and str(addr).rsplit(":", 1)[0] not in ("0.0.0.0", "[::]"):
        problems.append(f"{where}: SLUICE_HTTP_ADDR {addr} does not listen on every interface; the Service cannot reach it")
    named = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    if named.get("http") != listens:
        problems.append(f"{where}: container port http is {named.get('http')}, Sluice listens on {listens} (SLUICE_HTTP_ADDR)")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = (c.get(probe) or {}).get("httpGet", {}).get("port")
        if port is not None and named.get(port, port) != listens:
            problems.append(f"{where}: {probe} probes port {port}, Sluice listens on {listens}")
    annotations = d["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations and int(annotations["prometheus.io/port"]) != listens:
        problems.append(f"{where}: prometheus.io/port is {annotations['prometheus.io/port']}, Sluice listens on {listens}")
    svc_obj = by_kind.get("Service", {}).get(svc)
    for port in (svc_obj or {}).get("spec", {}).get("ports", []):
        target = port.get("targetPort", port.get("port"))
        if named.get(target, target) != listens:
            problems.append(f"{where}: Service {svc} port {port.get('port')} targets {target}, Sluice listens on {listens}")
    for k in env:
        if k.startswith("SLUICE_") and k not in sluice_settings():
            problems.append(f"{where}: sets {k}, which is not a Sluice setting; Sluice would refuse to start")


def check_keda(obj, where, problems):
    spec = obj.get("spec")
    allowed = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod",
               "idleReplicaCount", "initialCooldownPeriod", "advanced", "triggers", "fallback"}
    if obj.get("apiVersion") != "keda.sh/v1alpha1":
        problems.append(f"{where}: apiVersion must be keda.sh/v1alpha1")
    if not isinstance(spec, dict):
        problems.append(f"{where}: no spec")
        return
    for field in set(spec) - allowed:
        problems.append(f"{where}: unknown field spec.{field}")
    ref = spec.get("scaleTargetRef") or {}
    if not isinstance(ref.get("name"), str):
        problems.append(f"{where}: spec.scaleTargetRef.name is required")
    for field in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        if field in spec and (not isinstance(spec[field], int) or spec[field] < 0):
            problems.append(f"{where}: spec.{field} must be a non-negative integer")
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        problems.append(f"{where}: minReplicaCount exceeds maxReplicaCount")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        problems.append(f"{where}: spec.triggers must be a non-empty list")
        return
    for i, t in enumerate(triggers):
        md = t.get("metadata")
        if not isinstance(t.get("type"), str) or not isinstance(md, dict):
            problems.append(f"{where}: triggers[{i}] needs a type and a metadata map")
            continue
        for k, v in md.items():
            if not isinstance(v, str):
                problems.append(f"{where}: triggers[{i}].metadata.{k} must be a string (KEDA reads strings), got {v!r}")
        if t["type"] == "kafka":
            if not (md.get("bootstrapServers") or md.get("bootstrapServersFromEnv")):
                problems.append(f"{where}: kafka trigger needs bootstrapServers or bootstrapServersFromEnv")
            if not md.get("consumerGroup"):
                problems.append(f"{where}: kafka trigger needs consumerGroup")
            if "lagThreshold" in md and not str(md["lagThreshold"]).isdigit():
                problems.append(f"{where}: lagThreshold must be a whole number")
            if md.get("offsetResetPolicy", "latest") not in ("latest", "earliest"):
                problems.append(f"{where}: offsetResetPolicy must be latest or earliest")


def check_sluice(objects, name, problems):
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    settings = sluice_settings()
    env_names = {}
    for kind, field in (("ConfigMap", "data"), ("Secret", "stringData")):
        for obj_name, o in by_kind.get(kind, {}).items():
            for k in (o.get(field) or {}):
                env_names[k] = f"{kind} {obj_name}"
                if k.startswith("SLUICE_") and k not in settings:
                    problems.append(f"{name}: {kind} {obj_name} sets {k}, which is not a Sluice setting "
                                    "(core/src/default.toml); Sluice would refuse to start")
    deployments = by_kind.get("Deployment", {})
    for svc in SERVICES:
        d = deployments.get(svc)
        where = f"{name}: Deployment {svc}"
        if not d:
            problems.append(f"{where} is missing")
            continue
        ps = pod_spec(d)
        (c,) = ps.get("containers", [{}])[:1] or [{}]
        if c.get("args") != ["serve", svc]:
            problems.append(f"{where}: container args must be [serve, {svc}], got {c.get('args')}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            if (c.get(probe) or {}).get("httpGet", {}).get("path") != path:
                problems.append(f"{where}: {probe} must GET {path}")
        res = c.get("resources") or {}
        if not res.get("requests", {}).get("cpu") or not res.get("requests", {}).get("memory"):
            problems.append(f"{where}: needs cpu and memory requests")
        if not res.get("limits", {}).get("memory"):
            problems.append(f"{where}: needs a memory limit")
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        if not all(labels.get(k) == v for k, v in d["spec"]["selector"]["matchLabels"].items()):
            problems.append(f"{where}: selector does not match its pod labels")
        if labels.get("app.kubernetes.io/component") != svc:
            problems.append(f"{where}: pods need app.kubernetes.io/component={svc} (Prometheus's service label)")
        svc_obj = by_kind.get("Service", {}).get(svc)
        if not svc_obj or any(labels.get(k) != v for k, v in svc_obj["spec"]["selector"].items()):
            problems.append(f"{where}: no Service {svc} selecting its pods")
        check_ports(d, svc, by_kind, where, problems)
    for o in objects:
        for c in pod_containers(o):
            for ref in c.get("envFrom", []):
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if field in ref and ref[field]["name"] not in by_kind.get(kind, {}):
                        problems.append(f"{name}: {o['kind']} {o['metadata']['name']} reads missing "
                                        f"{kind} {ref[field]['name']}")
        sa = pod_spec(o).get("serviceAccountName")
        if sa and sa not in by_kind.get("ServiceAccount", {}):
            problems.append(f"{name}: {o['kind']} {o['metadata']['name']} uses missing ServiceAccount {sa}")
    jobs = [j for j in by_kind.get("Job", {}).values() if any(c.get("args") == ["migrate"] for c in pod_containers(j))]
    if not jobs:
        problems.append(f"{name}: no Job running `sluice migrate`")
    scaled = {}
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for o in by_kind.get(kind, {}).values():
            target = o["spec"]["scaleTargetRef"].get("name")
            if target not in deployments:
                problems.append(f"{name}: {kind} {o['metadata']['name']} targets missing Deployment {target}")
            if target in scaled:
                problems.append(f"{name}: Deployment {target} is scaled by both {scaled[target]} and {kind}")
            scaled[target] = kind
    for svc, (group, topic) in KEDA_SCALING.items():
        so = by_kind.get("ScaledObject", {}).get(svc)
        if not so:
            problems.append(f"{name}: no ScaledObject for {svc}")
            continue
        md = so["spec"]["triggers"][0]["metadata"]
        if so["spec"]["triggers"][0]["type"] != "kafka" or md.get("consumerGroup") != group or md.get("topic") != topic:
            problems.append(f"{name}: ScaledObject {svc} must scale on kafka lag of group {group}, topic {topic}")
        env = md.get("bootstrapServersFromEnv")
        if env and env not in env_names:
            problems.append(f"{name}: ScaledObject {svc} reads {env}, which no ConfigMap or Secret of {svc} sets")
    placed = subprocess.run(["bash", str(ROOT / "deploy" / "local" / "hosts.sh"), "services"],
                            capture_output=True, text=True).stdout.split()[::2]
    if set(placed) != set(SERVICES):
        problems.append(f"{name}: Deployments {sorted(SERVICES)}, the multi-host test (hosts.sh services) runs {sorted(set(placed))}")
    for svc in ("ingest", "registry", "inference"):
        if scaled.get(svc) != "HorizontalPodAutoscaler":
            problems.append(f"{name}: Deployment {svc} has no HorizontalPodAutoscaler")


def validate(name, objects, versions, verbose, problems):
    import kubernetes_validate

    for o in objects:
        where = f"{name}: {o.get('kind')} {o.get('metadata', {}).get('name')}"
        if o.get("apiVersion", "").startswith("keda.sh/"):
            check_keda(o, where, problems)
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in getattr(e, "path", []) or [])
                problems.append(f"{where} (Kubernetes {version}): {getattr(e, 'message', e)}"
                                + (f" at {path}" if path else ""))
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                problems.append(f"{where} (Kubernetes {version}): {e}")
        if verbose:
            print(f"  ok {where}")
    check_sluice(objects, name, problems)


def main():
    parser = argparse.ArgumentParser(description="Render and validate deploy/k8s offline.")
    parser.add_argument("--kubernetes-version", action="append", dest="versions",
                        help="Kubernetes version to validate against (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    try:
        import kubernetes_validate
    except ImportError:
        print("validate.py: needs the kubernetes-validate package (pip install kubernetes-validate)", file=sys.stderr)
        return 1
    versions = args.versions or ["1.29.0", kubernetes_validate.latest_version()]
    problems = []
    targets = [K8S / "base"] + sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    for directory in targets:
        name = directory.relative_to(K8S).as_posix()
        try:
            objects = render(directory)
            reference, tool = reference_rendering(directory)
        except Problem as e:
            problems.append(str(e))
            continue
        if reference is not None:
            ours = {key(o): normalise(o) for o in objects}
            theirs = {key(o): normalise(o) for o in reference}
            for k in sorted(set(ours) | set(theirs), key=str):
                if ours.get(k) != theirs.get(k):
                    problems.append(f"{name}: {k[1]} {k[3]} renders differently here and with {tool} kustomize")
        validate(name, objects, versions, args.verbose, problems)
        print(f"{name}: {len(objects)} objects rendered"
              + (f" (identical to {tool} kustomize)" if reference is not None else "")
              + f", validated against Kubernetes {', '.join(versions)}")
    sys.stdout.flush()
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    print(f"deploy/k8s: {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
