"""RBAC coverage: each actor's ServiceAccount is granted exactly the Kubernetes API access its code uses.

The scanner (deploy/rbac_scan.py) reads the source; these tests run it on natib's real code against the
manifests in deploy/base, and on small sources written here to pin down what it recognises.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(DEPLOY))
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


scan = _load("rbac_scan")


def base_objects() -> list[dict[str, Any]]:
    """The base manifests as kustomize would place them (namespace set), read without kubectl."""
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    out = []
    for res in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "base" / res).read_text()):
            if not doc:
                continue
            if doc["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
                doc["metadata"].setdefault("namespace", kustomization["namespace"])
            out.append(doc)
    return out


def deployments() -> dict[str, dict[str, Any]]:
    out = {}
    for obj in base_objects():
        if obj["kind"] == "Deployment":
            args = obj["spec"]["template"]["spec"]["containers"][0]["args"]
            out[args[1]] = obj
    return out


# -- natib's own code against the manifests -------------------------------------------------------------


def test_the_scanner_understands_every_api_use_in_natib() -> None:
    problems = [p for m in scan.scan().values() for p in m.problems]
    assert problems == []


def test_kubernetes_api_calls_are_found_in_the_code() -> None:
    uses = [u for m in scan.scan().values() for u in m.uses]
    # natib's Kubernetes-facing code: the k8s-controller (Experiments, Trials) and the launcher (trial objects).
    assert any(u.module == "natib.actors.k8s_controller" and u.resource == "experiments" and "watch" in u.verbs
               for u in uses)
    assert any(u.module.startswith("natib.actors.launcher") and u.group == scan.DYNAMIC for u in uses)


@pytest.mark.parametrize("kind", sorted(deployments()))
def test_each_actor_is_granted_exactly_what_its_code_uses(kind: str) -> None:
    objects = base_objects()
    dep = deployments()[kind]
    spec = dep["spec"]["template"]["spec"]
    need = scan.required(kind)
    have, wildcards = scan.granted(objects, spec["serviceAccountName"], dep["metadata"]["namespace"])
    assert wildcards == []
    missing = sorted(scan.fmt(a) + " <- " + need[a][0].where() for a in set(need) - have)
    extra = sorted(scan.fmt(a) for a in have - set(need))
    assert missing == [], f"{kind}: the code needs more than RBAC grants"
    assert extra == [], f"{kind}: RBAC grants more than the code uses"
    # Kinds that never talk to the API server get no token either.
    assert spec["automountServiceAccountToken"] is bool(need)


def test_a_lazy_import_elsewhere_is_not_followed() -> None:
    # The collector imports constants from the launcher module, whose launcher_for imports the Kubernetes
    # launcher only when called; the collector never calls it, so it needs no access.
    assert "natib.actors.launcher.actor" in scan.reachable(scan.entry_modules("collector"))
    assert "natib.actors.launcher.kubernetes" not in scan.reachable(scan.entry_modules("collector"))
    assert "natib.actors.launcher.kubernetes" in scan.reachable(scan.entry_modules("launcher"))
    assert scan.required("collector") == {}


def test_an_unknown_actor_kind_is_named() -> None:
    with pytest.raises(KeyError, match="no actor kind 'nope'"):
        scan.entry_modules("nope")


# -- the scanner on sources written here ---------------------------------------------------------------


def _scan_source(tmp_path: Path, files: dict[str, str]) -> tuple[list[Any], list[str]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    modules = scan.scan(tmp_path)
    return [u for m in modules.values() for u in m.uses], [p for m in modules.values() for p in m.problems]


def _access(uses: list[Any]) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for u in uses:
        out |= scan.expand(u)
    return out


def test_typed_api_methods_map_to_group_resource_verb(tmp_path: Path) -> None:
    uses, problems = _scan_source(tmp_path, {"actors/a.py": """
        from kubernetes_asyncio import client

        async def go(api, ns, name):
            core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
            await batch.create_namespaced_job(ns, {})
            await batch.patch_namespaced_job_status(name, ns, {})
            await batch.delete_collection_namespaced_job(ns)
            await core.read_namespaced_pod_log(name, ns, follow=True)
            await core.list_pod_for_all_namespaces()
            await core.list_namespaced_event(ns, watch=True)
            await client.AppsV1Api(api).read_namespaced_deployment(name, ns)
    """})
    assert problems == []
    assert _access(uses) == {
        ("batch", "jobs", "create"), ("batch", "jobs/status", "patch"), ("batch", "jobs", "deletecollection"),
        ("", "pods/log", "get"), ("", "pods", "list"), ("", "events", "list"), ("", "events", "watch"),
        ("apps", "deployments", "get"),
    }


def test_custom_objects_resolve_constants_across_modules(tmp_path: Path) -> None:
    uses, problems = _scan_source(tmp_path, {
        "runtime/names.py": 'GROUP, VERSION = "example.com", "v1"\nPLURAL = "widgets"\n',
        "actors/b.py": """
            from natib.runtime.names import GROUP, PLURAL, VERSION
            from kubernetes_asyncio import watch

            API = f"{GROUP}/{VERSION}"

            async def go(custom, ns, name):
                await custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name, {})
                await custom.get_namespaced_custom_object(group="example.com", version="v1", namespace=ns,
                                                          plural="gadgets", name=name)
                if ns:
                    fn, args = custom.list_namespaced_custom_object, (GROUP, VERSION, ns, "gizmos")
                else:
                    fn, args = custom.list_cluster_custom_object, (GROUP, VERSION, "gizmos")
                async with watch.Watch().stream(fn, *args) as s:
                    pass
                return {"apiVersion": API, "kind": "Widget", "blockOwnerDeletion": True}
        """,
    })
    assert problems == []
    assert _access(uses) == {
        ("example.com", "widgets/status", "patch"), ("example.com", "gadgets", "get"),
        ("example.com", "gizmos", "list"), ("example.com", "gizmos", "watch"),
        ("example.com", "widgets/finalizers", "update"),
    }


def test_a_run_time_kind_means_every_trial_kind(tmp_path: Path) -> None:
    uses, problems = _scan_source(tmp_path, {"actors/c.py": """
        async def go(api, custom, res, ns, name):
            await custom.create_namespaced_custom_object(res.group, res.version, ns, res.plural, {})
            await api.call_api(res.path(ns, name), "GET")
            await api.call_api(res.path(ns), "DELETE")
    """})
    assert problems == []
    access = _access(uses)
    for group, plural in scan.TRIAL_RESOURCES:
        assert {(group, plural, "create"), (group, plural, "get"), (group, plural, "deletecollection")} <= access
    assert len(access) == 3 * len(scan.TRIAL_RESOURCES)


def test_what_the_scanner_cannot_read_is_a_problem_not_a_silence(tmp_path: Path) -> None:
    _uses, problems = _scan_source(tmp_path, {"actors/d.py": """
        async def go(api, custom):
            await api.call_api("/api/v1/namespaces/x/pods", "GET")
            keep = custom.list_namespaced_custom_object
            return keep
    """})
    assert len(problems) == 2
    assert any("call_api" in p for p in problems)
    assert any("list_namespaced_custom_object" in p and "cannot see its group and plural" in p for p in problems)


def test_granted_reads_bindings_and_flags_wildcards() -> None:
    objects = [
        {"kind": "ClusterRole", "metadata": {"name": "r"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                   {"apiGroups": ["batch"], "resources": ["*"], "verbs": ["get"]}]},
        {"kind": "Role", "metadata": {"name": "r2", "namespace": "ns"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
        {"kind": "ClusterRoleBinding", "metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "r"},
         "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]},
        {"kind": "RoleBinding", "metadata": {"name": "b2", "namespace": "ns"},
         "roleRef": {"kind": "Role", "name": "r2"},
         "subjects": [{"kind": "ServiceAccount", "name": "other"}]},
    ]
    have, wildcards = scan.granted(objects, "sa", "ns")
    assert ("", "pods", "get") in have and ("", "configmaps", "get") not in have
    assert wildcards == ["ClusterRole/r: wildcard in resources"]
    assert scan.granted(objects, "sa", "elsewhere") == (set(), [])
    have, _ = scan.granted(objects, "other", "ns")
    assert have == {("", "configmaps", "get")}


def test_a_method_name_two_api_classes_share_is_told_apart_by_its_receiver(tmp_path: Path) -> None:
    uses, problems = _scan_source(tmp_path, {"actors/e.py": """
        from kubernetes_asyncio.client import EventsV1Api

        class Watcher:
            def __init__(self, api):
                self.events = EventsV1Api(api)

            async def go(self, ns, mystery):
                await self.events.list_namespaced_event(ns)
                await mystery.list_namespaced_event(ns)
    """})
    assert _access(uses) == {("events.k8s.io", "events", "list")}
    assert len(problems) == 1 and "CoreV1Api, EventsV1Api" in problems[0] and "'mystery'" in problems[0]
