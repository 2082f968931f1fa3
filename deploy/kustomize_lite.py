"""A small kustomize renderer for the features natib's overlays use, for machines without kubectl.

It supports ``resources`` (files and directories with their own kustomization), ``namespace``,
``replicas``, ``patches`` (a strategic-merge patch file, or an inline JSON 6902 patch with a ``target``)
and ``configMapGenerator`` with ``behavior: merge``. Any other kustomization field is an error naming it,
so an overlay that grows a feature this file lacks fails loudly instead of rendering wrong;
tests/deploy/test_manifests.py checks that its output equals ``kubectl kustomize`` wherever kubectl exists.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "replicas", "patches", "configMapGenerator"}
# Kinds without a namespace (among those natib ships).
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "PriorityClass"}
SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet"}


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects of the kustomization in ``directory``, as ``kubectl kustomize`` builds them."""
    directory = Path(directory)
    path = directory / "kustomization.yaml"
    k = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(k) - SUPPORTED)
    if unknown:
        raise Unsupported(f"{path}: {', '.join(unknown)} not supported by kustomize_lite; use kubectl kustomize")
    objects: list[dict[str, Any]] = []
    for res in k.get("resources") or []:
        target = directory / res
        if target.is_dir():
            objects += render(target)
        else:
            objects += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for patch in k.get("patches") or []:
        _patch(objects, directory, patch, path)
    for gen in k.get("configMapGenerator") or []:
        _merge_config_map(objects, gen, path)
    for rep in k.get("replicas") or []:
        hits = [o for o in objects if o["kind"] in SCALABLE and o["metadata"]["name"] == rep["name"]]
        if not hits:
            raise ValueError(f"{path}: replicas: no Deployment or StatefulSet named {rep['name']}")
        for obj in hits:
            obj["spec"]["replicas"] = rep["count"]
    if k.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    return all(obj.get(key) == target[key] if key == "kind" else obj["metadata"].get(key) == target[key]
               for key in target)


def _patch(objects: list[dict[str, Any]], directory: Path, patch: dict[str, Any], where: Path) -> None:
    if "path" in patch:
        docs = [d for d in yaml.safe_load_all((directory / patch["path"]).read_text()) if d]
        for doc in docs:
            hits = [o for o in objects if o["kind"] == doc["kind"] and o["metadata"]["name"] == doc["metadata"]["name"]]
            if not hits:
                raise ValueError(f"{where}: patch {patch['path']}: no {doc['kind']} {doc['metadata']['name']}")
            for obj in hits:
                _merge(obj, doc)
        return
    if "patch" not in patch or "target" not in patch:
        raise Unsupported(f"{where}: patches need a path, or an inline JSON 6902 patch with a target")
    ops = yaml.safe_load(patch["patch"])
    if not isinstance(ops, list):
        raise Unsupported(f"{where}: an inline strategic-merge patch is not supported by kustomize_lite")
    hits = [o for o in objects if _matches(o, patch["target"])]
    if not hits:
        raise ValueError(f"{where}: patch target {patch['target']} matches nothing")
    for obj in hits:
        for op in ops:
            _json6902(obj, op, where)


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """Strategic merge, as far as our patches go: maps merge, everything else is replaced."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, list) and isinstance(into.get(key), list) and value and isinstance(value[0], dict):
            raise Unsupported("kustomize_lite cannot strategic-merge lists of objects; use a JSON 6902 patch")
        else:
            into[key] = copy.deepcopy(value)


def _json6902(obj: dict[str, Any], op: dict[str, Any], where: Path) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    kind = op["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[index]
        else:
            raise Unsupported(f"{where}: JSON patch op {kind} not supported by kustomize_lite")
        return
    if kind in ("add", "replace"):
        if kind == "replace" and last not in parent:
            raise ValueError(f"{where}: replace {op['path']}: no such field")
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[last]
    else:
        raise Unsupported(f"{where}: JSON patch op {kind} not supported by kustomize_lite")


def _merge_config_map(objects: list[dict[str, Any]], gen: dict[str, Any], where: Path) -> None:
    if gen.get("behavior") != "merge" or set(gen) - {"name", "behavior", "literals"}:
        raise Unsupported(f"{where}: configMapGenerator: only behavior merge with literals is supported")
    hits = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == gen["name"]]
    if not hits:
        raise ValueError(f"{where}: configMapGenerator: no ConfigMap {gen['name']} to merge into")
    for literal in gen.get("literals") or []:
        key, _, value = literal.partition("=")
        for obj in hits:
            obj.setdefault("data", {})[key] = value
