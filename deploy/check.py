"""Offline checks of natib's Kubernetes manifests: `python deploy/check.py` (or `just deploy-check`).

For every overlay under deploy/overlays it renders the manifests with ``kubectl kustomize`` (or, without
kubectl, with `kustomize_lite.py`, which renders natib's overlays identically) and checks:

- every object against the Kubernetes OpenAPI schemas of `KUBERNETES_VERSION` (kubernetes-validate, strict:
  unknown fields are errors), and every custom resource against our own CRD schemas;
- our CRDs are structural (a type on every node) and their schemas are valid JSON Schema;
- every ``examples/*.yaml`` Experiment against the Experiment CRD, with unknown fields refused as
  ``kubectl apply`` refuses them;
- the house rules for every actor Deployment: non-root, read-only root filesystem, no capabilities,
  probes, requests and limits, a grace period longer than the drain time, a ServiceAccount that exists,
  an actor kind natib has, and a Deployment for every kind;
- natib-config holds only variables natib reads, with values natib accepts;
- the NATS configuration parses (``nats-server -t``) and, with more than one node, routes to every node;
- the katib-db-manager Service reaches the dbmanager pods on port 6789;
- RBAC: each ServiceAccount is granted exactly what its actor's code calls (see `rbac_scan.py`).

Exit status 0 when everything passes, 1 otherwise (every problem is printed), 2 when a tool is missing.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import kustomize_lite  # noqa: E402  (sibling scripts, importable once HERE is on the path)
import rbac_scan  # noqa: E402

# kubernetes-validate reads its (large) schema files again for every object; once per process is enough.
kubernetes_validate.utils.schema_contents = functools.cache(kubernetes_validate.utils.schema_contents)

KUBERNETES_VERSION = "1.32"
OVERLAYS = HERE / "overlays"
EXPECTED_REPLICAS = {"dev": 1, "prod": 3}
# Kinds that must run as one replica, never two at once (no leader election).
SINGLETONS = {"k8s-controller"}
DRAIN_MARGIN = 10  # seconds beyond NATIB_DRAIN_TIMEOUT for closing the NATS connection and exiting
OUR_GROUP = "kubeflow.org"


class ToolMissing(Exception):
    """kubectl (or another external tool the check needs) is not installed."""


def kubectl() -> str:
    """The kubectl binary (env KUBECTL, else on PATH)."""
    path = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not path:
        raise ToolMissing("kubectl not found on PATH (set KUBECTL); it renders the kustomize overlays")
    return path


def render(overlay: Path, renderer: str = "auto") -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize overlay`` produces; ``renderer`` auto falls back to kustomize_lite."""
    if renderer == "lite" or (renderer == "auto" and not (os.environ.get("KUBECTL") or shutil.which("kubectl"))):
        return kustomize_lite.render(overlay)
    proc = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120,
                          check=False)
    if proc.returncode != 0:
        raise ValueError(f"kubectl kustomize {overlay} failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def name_of(obj: dict[str, Any]) -> str:
    """``Kind/name`` of an object."""
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


# -- schemas ------------------------------------------------------------------------------------------


def crd_schemas(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> openAPIV3Schema of every CRD among ``objects``."""
    out = {}
    for obj in objects:
        if obj.get("kind") == "CustomResourceDefinition":
            spec = obj["spec"]
            for v in spec["versions"]:
                out[(spec["group"], v["name"], spec["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the API server applies it to a ``kubectl apply``: unknown fields are errors.

    Objects with ``properties`` refuse other keys unless they preserve unknown fields; the embedded
    ``metadata`` is left open (the server validates it itself).
    """
    s = copy.deepcopy(schema)

    def walk(node: dict[str, Any], top: bool) -> None:
        props = node.get("properties")
        if isinstance(props, dict):
            if not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for key, child in props.items():
                if not (top and key == "metadata"):
                    walk(child, False)
        if isinstance(node.get("items"), dict):
            walk(node["items"], False)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], False)

    walk(s, True)
    return s


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """Nodes without a ``type`` (what makes a CRD schema non-structural), and objects with nothing declared."""
    problems = []
    if "type" not in schema and not (schema.get("x-kubernetes-int-or-string")
                                     or schema.get("x-kubernetes-preserve-unknown-fields")):
        problems.append(f"{path or '.'}: no type")
    if (schema.get("type") == "object" and not schema.get("properties") and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields") and not path.endswith(".metadata")):
        problems.append(f"{path}: an object with no properties (use x-kubernetes-preserve-unknown-fields)")
    for key, child in (schema.get("properties") or {}).items():
        problems += structural_problems(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        problems += structural_problems(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}{{}}")
    return problems


def schema_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every error of ``obj`` against a CRD schema (strict), as ``path: message``."""
    validator = jsonschema.Draft4Validator(strict_schema(schema))
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '.'}: {e.message}"
                  for e in validator.iter_errors(obj))


def check_objects(objects: list[dict[str, Any]]) -> list[str]:
    """Every object against Kubernetes' schemas (built-in kinds) or our CRDs (custom kinds)."""
    problems = []
    crds = crd_schemas(objects)
    for obj in objects:
        group, _, version = obj.get("apiVersion", "").rpartition("/")
        key = (group, version, obj.get("kind"))
        if key in crds:
            problems += [f"{name_of(obj)}: {e}" for e in schema_errors(obj, crds[key])]
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "."
            problems.append(f"{name_of(obj)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name_of(obj)}: {exc.message}")
    for obj in objects:
        if obj.get("kind") != "CustomResourceDefinition":
            continue
        for v in obj["spec"]["versions"]:
            schema = v["schema"]["openAPIV3Schema"]
            problems += [f"{name_of(obj)} {v['name']}: {p}" for p in structural_problems(schema)]
            try:
                jsonschema.Draft4Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                problems.append(f"{name_of(obj)} {v['name']}: not a valid schema: {exc.message}")
            if "status" not in (v.get("subresources") or {}):
                problems.append(f"{name_of(obj)} {v['name']}: no status subresource")
            if not v.get("additionalPrinterColumns"):
                problems.append(f"{name_of(obj)} {v['name']}: no printer columns")
    return problems


def check_examples(objects: list[dict[str, Any]], files: list[Path]) -> tuple[list[str], int]:
    """Every Experiment in ``files`` against our Experiment CRD; returns (problems, experiments checked)."""
    crds = crd_schemas(objects)
    problems, count = [], 0
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "Experiment":
                continue
            group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
            schema = crds.get((group, version, "Experiment"))
            rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            if schema is None:
                problems.append(f"{rel}: no CRD for Experiment {doc.get('apiVersion')}")
                continue
            count += 1
            problems += [f"{rel}: {e}" for e in schema_errors(doc, schema)]
    return problems, count


# -- house rules --------------------------------------------------------------------------------------


def _natib_config(objects: list[dict[str, Any]]) -> dict[str, str]:
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"].startswith("natib-config"):
            return dict(obj.get("data") or {})
    return {}


def actor_kinds() -> list[str]:
    """Every kind ``natib actor`` accepts."""
    from natib.actors import app

    kinds: dict[str, Any] = {}
    for attr in ("ACTOR_KINDS", "KATIB_KINDS"):
        kinds.update(getattr(app, attr, {}))
    return list(kinds)


def actor_deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployments that run ``natib actor <kind>``, by kind."""
    out = {}
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            args = c.get("args") or []
            if len(args) >= 2 and args[0] == "actor":
                out[args[1]] = obj
    return out


def check_config(objects: list[dict[str, Any]]) -> list[str]:
    """natib-config: only variables natib reads, and values natib accepts."""
    from natib.runtime.auth import AUTH_VARS
    from natib.runtime.errors import ConfigError
    from natib.runtime.settings import ENV_VARS, Settings

    data = _natib_config(objects)
    if not data:
        return ["ConfigMap natib-config: missing"]
    known = {v.name for v in (*ENV_VARS, *AUTH_VARS)}
    problems = [f"ConfigMap natib-config: {k} is not a variable natib reads" for k in sorted(set(data) - known)]
    try:
        Settings.from_env(data)
    except ConfigError as exc:
        problems.append(f"ConfigMap natib-config: {exc}")
    for obj in actor_deployments(objects).values():
        for c in obj["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value", "") for e in c.get("env") or [] if "value" in e}
            problems += [f"{name_of(obj)}: env {k} is not a variable natib reads" for k in sorted(set(env) - known)]
            try:
                Settings.from_env({**data, **env})
            except ConfigError as exc:
                problems.append(f"{name_of(obj)}: {exc}")
    return problems


def check_deployments(objects: list[dict[str, Any]], replicas: int | None) -> list[str]:
    """The house rules for every actor Deployment."""
    problems = []
    config = _natib_config(objects)
    drain = float(config.get("NATIB_DRAIN_TIMEOUT") or 10)
    accounts = {o["metadata"]["name"] for o in objects if o.get("kind") == "ServiceAccount"}
    deployments = actor_deployments(objects)
    kinds = actor_kinds()
    problems += [f"no Deployment runs `natib actor {k}`" for k in kinds if k not in deployments]
    for kind, obj in deployments.items():
        n = name_of(obj)
        spec = obj["spec"]["template"]["spec"]
        if kind not in kinds:
            problems.append(f"{n}: natib has no actor kind {kind!r} (it has {', '.join(kinds)})")
        want = 1 if kind in SINGLETONS else replicas
        if want is not None and obj["spec"].get("replicas") != want:
            problems.append(f"{n}: replicas {obj['spec'].get('replicas')}, expected {want}")
        if kind in SINGLETONS and (obj["spec"].get("strategy") or {}).get("type") != "Recreate":
            problems.append(f"{n}: a single-replica kind needs strategy Recreate, so that two never run at once")
        if spec.get("serviceAccountName") not in accounts:
            problems.append(f"{n}: serviceAccountName {spec.get('serviceAccountName')!r} is not defined")
        pod_sc = spec.get("securityContext") or {}
        if pod_sc.get("runAsNonRoot") is not True:
            problems.append(f"{n}: securityContext.runAsNonRoot must be true")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace < drain + DRAIN_MARGIN:
            problems.append(f"{n}: terminationGracePeriodSeconds {grace} is not above NATIB_DRAIN_TIMEOUT "
                            f"{drain:g} + {DRAIN_MARGIN}")
        for c in spec["containers"]:
            where = f"{n} container {c['name']}"
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: securityContext.readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: securityContext.capabilities.drop must be [ALL]")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{where}: no {probe}")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        problems.append(f"{where}: no resources.{part}.{r}")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                get = (c.get(probe) or {}).get("httpGet")
                if get and get["port"] not in ports and get["port"] not in ports.values():
                    problems.append(f"{where}: {probe} port {get['port']!r} is not a container port")
            sidecar = next((e.get("value") for e in c.get("env") or [] if e["name"] == "NATIB_SIDECAR_IMAGE"), None)
            if sidecar is not None and sidecar != c.get("image"):
                problems.append(f"{where}: NATIB_SIDECAR_IMAGE {sidecar} is not the container's image {c.get('image')}")
            health = config.get("NATIB_HEALTH_PORT")
            if health and int(health) not in ports.values():
                problems.append(f"{where}: NATIB_HEALTH_PORT {health} is not a container port")
    return problems


def check_dbmanager_service(objects: list[dict[str, Any]]) -> list[str]:
    """Katib's report_metrics() address: Service katib-db-manager, port 6789, selecting the dbmanager pods."""
    svc = next((o for o in objects if o.get("kind") == "Service" and o["metadata"]["name"] == "katib-db-manager"),
               None)
    if svc is None:
        return ["Service katib-db-manager: missing (Katib's report_metrics sends to katib-db-manager:6789)"]
    problems = []
    if not any(p.get("port") == 6789 for p in svc["spec"].get("ports") or []):
        problems.append("Service katib-db-manager: no port 6789")
    db = actor_deployments(objects).get("dbmanager")
    if db is not None:
        labels = db["spec"]["template"]["metadata"]["labels"]
        selector = svc["spec"].get("selector") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append("Service katib-db-manager: its selector does not match the dbmanager pods")
        ports = {p.get("name"): p["containerPort"] for c in db["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports") or []}
        for p in svc["spec"].get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            if target not in ports and target not in ports.values():
                problems.append(f"Service katib-db-manager: targetPort {target!r} is not a dbmanager container port")
    return problems


def check_nats(objects: list[dict[str, Any]], replicas: int | None) -> list[str]:
    """The NATS config parses with the real nats-server, and a cluster routes to every node."""
    from natib.runtime.server import find_server_binary

    sts = next((o for o in objects if o.get("kind") == "StatefulSet" and o["metadata"]["name"] == "nats"), None)
    cm = next((o for o in objects if o.get("kind") == "ConfigMap" and o["metadata"]["name"].startswith("nats-config")),
              None)
    if sts is None or cm is None:
        return ["NATS: StatefulSet nats and ConfigMap nats-config are both needed"]
    problems = []
    conf = cm["data"]["nats.conf"]
    n = sts["spec"].get("replicas", 1)
    if replicas is not None and n != replicas:
        problems.append(f"StatefulSet/nats: replicas {n}, expected {replicas}")
    if "jetstream" not in conf:
        problems.append("ConfigMap nats-config: JetStream is not enabled")
    if n > 1:
        service = sts["spec"]["serviceName"]
        for i in range(n):
            if f"nats://nats-{i}.{service}:6222" not in conf:
                problems.append(f"ConfigMap nats-config: no cluster route to nats-{i}.{service}:6222")
    elif "cluster" in conf:
        problems.append("ConfigMap nats-config: a cluster block on a single node")
    claims = sts["spec"].get("volumeClaimTemplates") or []
    if not claims:
        problems.append("StatefulSet/nats: no persistent volume for JetStream")
    else:
        volume = _bytes(claims[0]["spec"]["resources"]["requests"]["storage"])
        store = re.search(r"max_file_store:\s*(\S+)", conf)
        if store is None:
            problems.append("ConfigMap nats-config: no jetstream max_file_store (JetStream would size the volume)")
        elif _bytes(store.group(1)) > volume:
            problems.append(f"ConfigMap nats-config: max_file_store {store.group(1)} is larger than the volume "
                            f"({claims[0]['spec']['resources']['requests']['storage']})")
    try:
        binary = find_server_binary(None)
    except Exception as exc:
        return [*problems, f"NATS: cannot test the config without nats-server: {exc}"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nats.conf"
        path.write_text(conf)
        proc = subprocess.run([str(binary), "-t", "-c", str(path)], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "POD_NAME": "nats-0"}, check=False)
        if proc.returncode != 0:
            problems.append(f"ConfigMap nats-config: nats-server -t: {(proc.stderr or proc.stdout).strip()}")
    return problems


def _bytes(size: str) -> int:
    """``10Gi``, ``50G``, ``9GB``, ``512MB`` -> bytes (NATS's GB and Kubernetes's Gi are both 1024**3)."""
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i|B)?", size.strip(), re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a size: {size!r}")
    power = "KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0
    base = 1000 if m.group(2) and m.group(3) is None else 1024
    return int(m.group(1)) * base**power


def check_rbac(objects: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Each actor's ServiceAccount gets exactly what its code calls; returns (problems, one line per kind)."""
    problems, summary = [], []
    for mod in rbac_scan.scan().values():
        problems += mod.problems
    for kind, obj in sorted(actor_deployments(objects).items()):
        spec = obj["spec"]["template"]["spec"]
        sa, ns = spec.get("serviceAccountName", "default"), obj["metadata"].get("namespace", "default")
        try:
            need = rbac_scan.required(kind)
        except KeyError as exc:
            problems.append(str(exc))
            continue
        have, wildcards = rbac_scan.granted(objects, sa, ns)
        problems += [f"ServiceAccount {sa}: {w}" for w in wildcards]
        for access in sorted(set(need) - have):
            uses = ", ".join(u.where() for u in need[access][:3])
            problems.append(f"ServiceAccount {sa} ({kind}): missing {rbac_scan.fmt(access)}, needed by {uses}")
        for access in sorted(have - set(need)):
            problems.append(f"ServiceAccount {sa} ({kind}): grants {rbac_scan.fmt(access)}, which its code never uses")
        if need and spec.get("automountServiceAccountToken") is False:
            problems.append(f"{name_of(obj)}: calls the Kubernetes API but automountServiceAccountToken is false")
        if not need and spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name_of(obj)}: never calls the Kubernetes API; set automountServiceAccountToken false")
        resources = sorted({f"{g or 'core'}/{r}" for g, r, _ in need})
        summary.append(f"RBAC {kind}: " + (f"{len(need)} verbs on {', '.join(resources)}" if need else "no API access"))
    return problems, summary


# -- main -----------------------------------------------------------------------------------------------


def check_overlay(overlay: Path, renderer: str = "auto") -> tuple[list[str], list[str]]:
    """Every check on one overlay; returns (problems, info lines)."""
    objects = render(overlay, renderer)
    replicas = EXPECTED_REPLICAS.get(overlay.name)
    problems = check_objects(objects)
    problems += check_config(objects)
    problems += check_deployments(objects, replicas)
    problems += check_dbmanager_service(objects)
    problems += check_nats(objects, replicas)
    rbac_problems, summary = check_rbac(objects)
    problems += rbac_problems
    examples, count = check_examples(objects, sorted((REPO / "examples").rglob("*.yaml")))
    problems += examples
    info = [f"{len(objects)} objects valid against Kubernetes {KUBERNETES_VERSION} and our CRDs",
            f"{count} example Experiments valid against the Experiment CRD", *summary]
    return problems, info


def main(argv: list[str] | None = None) -> int:
    """Check every overlay (or the ones named); print the problems; exit 1 if there are any."""
    p = argparse.ArgumentParser(description="Offline checks of natib's Kubernetes manifests.")
    p.add_argument("overlays", nargs="*", help="overlay directories (default: every one under deploy/overlays)")
    p.add_argument("--renderer", choices=["auto", "kubectl", "lite"], default="auto",
                   help="kubectl kustomize, natib's kustomize_lite, or auto: kubectl when installed (default)")
    args = p.parse_args(argv)
    if args.renderer == "lite" or (args.renderer == "auto" and not (os.environ.get("KUBECTL")
                                                                    or shutil.which("kubectl"))):
        print("rendering with deploy/kustomize_lite.py (no kubectl)")
    overlays = [Path(o) for o in args.overlays] or sorted(d for d in OVERLAYS.iterdir() if d.is_dir())
    failed = False
    try:
        for overlay in overlays:
            try:
                problems, info = check_overlay(overlay, args.renderer)
            except ValueError as exc:
                problems, info = [str(exc)], []
            rel = overlay.resolve().relative_to(REPO) if overlay.resolve().is_relative_to(REPO) else overlay
            print(f"{rel}: {'FAIL' if problems else 'ok'}")
            for line in info:
                print(f"  {line}")
            for line in problems:
                print(f"  ERROR {line}")
            failed = failed or bool(problems)
    except ToolMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
