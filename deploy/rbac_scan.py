"""What Kubernetes API access natib's code needs, found by reading the source, and what the manifests grant.

`scan()` parses every module under actors/, runtime/ and cli/ and finds each kubernetes_asyncio API call
(``CoreV1Api.read_namespaced_pod_log``, ``BatchV1Api.create_namespaced_job``,
``CustomObjectsApi.patch_namespaced_custom_object_status(GROUP, VERSION, ns, "experiments", ...)``, a method
handed to ``watch.Watch().stream``, ...). The REST path and HTTP method of each API method come from
kubernetes_asyncio itself, so any method of any API class is understood; the group and plural of a custom
object call are read from its arguments (literals, module constants, constants imported from other natib
modules, tuples unpacked in the same function). A group or plural computed at run time means "the kinds a
trial may be" (`TRIAL_RESOURCES`, Katib's default trial resources). Objects created with an owner reference
that blocks its owner's deletion also need ``update`` on ``<owner>/finalizers``.

`required(kind)` is the set of (apiGroup, resource, verb) the code of one actor kind (what
``natib actor <kind>`` runs, followed through its imports) needs; `granted(objects, service_account)` is what
the rendered RBAC gives a service account. `compare` reports both directions: missing and superfluous.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("actors", "runtime", "cli")

Access = tuple[str, str, str]  # (apiGroup, resource, verb); apiGroup "" is the core group

#: Katib's default trial resources (katib-config `trialResources`): what a trial's runSpec may be.
TRIAL_RESOURCES: tuple[tuple[str, str], ...] = (
    ("batch", "jobs"),
    ("kubeflow.org", "tfjobs"),
    ("kubeflow.org", "pytorchjobs"),
    ("kubeflow.org", "mpijobs"),
    ("kubeflow.org", "xgboostjobs"),
    ("trainer.kubeflow.org", "trainjobs"),
)
DYNAMIC = "<trial kinds>"


@dataclass(frozen=True)
class ApiMethod:
    """One kubernetes_asyncio API method: its path template, HTTP method and positional parameters."""

    name: str
    path: str
    http: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class Use:
    """One use of the Kubernetes API found in the source."""

    module: str
    line: int
    method: str
    group: str
    resource: str
    verbs: tuple[str, ...]

    def where(self) -> str:
        """``module:line method``, for messages."""
        return f"{self.module}:{self.line} {self.method}"


@dataclass
class Module:
    """What one natib module imports and which API uses it contains."""

    name: str
    path: Path
    imports: set[str] = field(default_factory=set)
    top_imports: set[str] = field(default_factory=set)
    uses: list[Use] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# -- kubernetes_asyncio's API methods -----------------------------------------------------------------


@cache
def api_methods() -> dict[str, dict[str, ApiMethod]]:
    """Every public method of every kubernetes_asyncio API class: name -> API class name -> method."""
    from kubernetes_asyncio import client

    out: dict[str, dict[str, ApiMethod]] = {}
    for cls_name in dir(client):
        cls = getattr(client, cls_name)
        if not (cls_name.endswith("Api") and inspect.isclass(cls)) or cls_name == "ApiClient":
            continue
        # Read each generated module once: every `def <name>_with_http_info` holds its path and HTTP method.
        bodies = {}
        for chunk in Path(inspect.getsourcefile(cls) or "").read_text().split("    def ")[1:]:
            head, _, body = chunk.partition("(")
            if head.endswith("_with_http_info"):
                bodies[head.removesuffix("_with_http_info")] = body
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            src = bodies.get(name)
            if name.startswith("_") or src is None:
                continue
            paths = re.findall(r"['\"](/apis?/[^'\"]*)['\"]", src)
            https = re.findall(r"['\"](GET|POST|PUT|PATCH|DELETE)['\"]", src)
            if not paths or not https:
                continue
            params = tuple(p for p in inspect.signature(fn).parameters if p not in ("self", "kwargs"))
            out.setdefault(name, {})[cls_name] = ApiMethod(name, paths[0], https[0], params)
    return out


def _receiver(node: ast.expr) -> str | None:
    """The name an API object is known by: ``core`` for ``core.x``/``self.core.x``, the class for ``Api(...).x``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _receiver(node.func)
    return None


def _api_classes(tree: ast.Module) -> dict[str, str]:
    """Which API class each name holds, from ``x = CoreV1Api(api)``, ``self.x: CoreV1Api`` and annotated args."""
    out: dict[str, str] = {}

    def note(target: ast.expr, value: ast.expr | None) -> None:
        key = _receiver(target) if isinstance(target, ast.Name | ast.Attribute) else None
        cls = _receiver(value.func) if isinstance(value, ast.Call) else _receiver(value) if value else None
        if key and cls and cls.endswith("Api"):
            out[key] = cls

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for t, v in zip(target.elts, node.value.elts, strict=False):
                        note(t, v)
                else:
                    note(target, node.value)
        elif isinstance(node, ast.AnnAssign):
            note(node.target, node.annotation)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            cls = _receiver(node.annotation)
            if cls and cls.endswith("Api"):
                out[node.arg] = cls
    return out


def access_of(method: ApiMethod, group: str | None, plural: str | None, *,
              watch: bool) -> tuple[str, str, tuple[str, ...]]:
    """(apiGroup, resource, verbs) of one call; ``group``/``plural`` fill ``{group}``/``{plural}`` templates."""
    path = method.path
    if path.startswith("/api/"):
        grp, rest = "", path.split("/", 3)[3]
    else:
        _, _, grp, _version, rest = path.split("/", 4)
        if grp == "{group}":
            grp = group if group is not None else DYNAMIC
    parts = rest.split("/")
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    resource = parts[0]
    if resource == "{plural}":
        resource = plural if plural is not None else DYNAMIC
    named = len(parts) > 1 and parts[1] == "{name}"
    sub = parts[2] if named and len(parts) > 2 else None
    if resource == "namespaces" and len(parts) == 1 and path.endswith("{name}"):
        named = True
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method.http)
    if verb is None:
        if method.http == "GET":
            verb = "get" if named else "list"
        else:
            verb = "delete" if named else "deletecollection"
    verbs = (verb, "watch") if watch and verb == "list" else (verb,)
    return grp, f"{resource}/{sub}" if sub else resource, verbs


# -- reading the source -------------------------------------------------------------------------------


def module_name(path: Path, root: Path = REPO) -> str:
    """``actors/launcher/local.py`` -> ``natib.actors.launcher.local``."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["natib", *parts])


def _constants(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level ``NAME = expr`` and ``A, B = x, y`` assignments."""
    out: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                out.update(_bind(target, node.value))
    return out


def _bind(target: ast.expr, value: ast.expr) -> dict[str, ast.expr]:
    if isinstance(target, ast.Name):
        return {target.id: value}
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
        out: dict[str, ast.expr] = {}
        for t, v in zip(target.elts, value.elts, strict=True):
            out.update(_bind(t, v))
        return out
    return {}


class _Scanner(ast.NodeVisitor):
    def __init__(self, mod: Module, tree: ast.Module, resolver: Resolver) -> None:
        self.mod = mod
        self.resolver = resolver
        self.local: list[dict[str, list[ast.expr]]] = [{}]
        self.methods = api_methods()
        self.classes = _api_classes(tree)
        self.handled: set[int] = set()

    # imports: those run on import (module level) and those inside functions (run when called)
    def _imported(self, names: Iterable[str]) -> None:
        found = set(names)
        self.mod.imports |= found
        if len(self.local) == 1:
            self.mod.top_imports |= found

    def visit_Import(self, node: ast.Import) -> None:
        self._imported(a.name for a in node.names if a.name.startswith("natib."))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.module.startswith("natib"):
            self._imported([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
            for alias in node.names:
                self.resolver.aliases.setdefault(self.mod.name, {})[alias.asname or alias.name] = (
                    node.module, alias.name)

    # functions keep their own local assignments (for `fn, args = api.list_x, (...)`)
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.local.append({})
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                for target in sub.targets:
                    for k, v in _bind(target, sub.value).items():
                        self.local[-1].setdefault(k, []).append(v)
        self.generic_visit(node)
        self.local.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "stream" and node.args:
            self._stream(node)
        elif isinstance(func, ast.Attribute) and func.attr == "call_api":
            self._call_api(node)
        elif isinstance(func, ast.Attribute) and func.attr in self.methods and id(func) not in self.handled:
            watch = any(k.arg == "watch" and isinstance(k.value, ast.Constant) and k.value.value is True
                        for k in node.keywords)
            self._use(func, node.args, node.keywords, node.lineno, watch=watch)
            self.handled.add(id(func))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        # A method referenced without being called (kept for later, e.g. for a watch) still counts.
        if node.attr in self.methods and id(node) not in self.handled and isinstance(node.ctx, ast.Load):
            self.handled.add(id(node))
            self._use(node, [], [], node.lineno, watch=False, partial=True)
        self.generic_visit(node)

    def _call_api(self, node: ast.Call) -> None:
        """``api.call_api(res.path(ns, name[, sub]), "GET", ...)``: a raw call on a KubeResource of any kind."""
        path = node.args[0] if node.args else None
        http = self._resolve(node.args[1]) if len(node.args) > 1 else None
        if not (isinstance(path, ast.Call) and isinstance(path.func, ast.Attribute) and path.func.attr == "path"
                and http in ("GET", "POST", "PUT", "PATCH", "DELETE")):
            self.mod.problems.append(f"{self.mod.name}:{node.lineno} ApiClient.call_api: a raw REST call the "
                                     "scanner cannot map; use a typed API method or KubeResource.path")
            return
        args = list(path.args) + [k.value for k in path.keywords]
        named = len(args) > 1 and not (isinstance(args[1], ast.Constant) and args[1].value is None)
        sub = self._resolve(args[2]) if len(args) > 2 else None
        template = "/apis/{group}/v/namespaces/{namespace}/{plural}" + ("/{name}" if named else "")
        template += f"/{sub}" if sub else ""
        method = ApiMethod("call_api", template, str(http), ())
        grp, resource, verbs = access_of(method, None, None, watch=False)
        self.mod.uses.append(Use(self.mod.name, node.lineno, "call_api", grp, resource, verbs))

    def _stream(self, node: ast.Call) -> None:
        first, rest = node.args[0], list(node.args[1:])
        candidates: list[tuple[ast.expr, list[ast.expr]]] = []
        if isinstance(first, ast.Attribute):
            candidates.append((first, rest))
        elif isinstance(first, ast.Starred):
            return
        elif isinstance(first, ast.Name):
            # `fn, args = api.list_x, (GROUP, ...)` then `stream(fn, *args)`: pair them up per assignment.
            fns = self.local[-1].get(first.id, [])
            star = next((a.value.id for a in rest if isinstance(a, ast.Starred) and isinstance(a.value, ast.Name)),
                        None)
            argsets = self.local[-1].get(star, []) if star else []
            for i, fn in enumerate(fns):
                extra = argsets[i] if i < len(argsets) else None
                args = list(extra.elts) if isinstance(extra, ast.Tuple) else [a for a in rest
                                                                              if not isinstance(a, ast.Starred)]
                candidates.append((fn, args))
        for fn, args in candidates:
            if isinstance(fn, ast.Attribute) and fn.attr in self.methods:
                self.handled.add(id(fn))
                self._use(fn, args, node.keywords, node.lineno, watch=True)

    def _method(self, func: ast.Attribute) -> ApiMethod | None:
        """The API method ``func`` calls; a name several API classes share is told apart by its receiver."""
        candidates = self.methods[func.attr]
        distinct = {(m.path, m.http): m for m in candidates.values()}
        if len(distinct) == 1:
            return next(iter(distinct.values()))
        receiver = _receiver(func.value)
        cls = receiver if receiver in candidates else self.classes.get(receiver or "")
        if cls in candidates:
            return candidates[cls]
        self.mod.problems.append(f"{self.mod.name}:{func.lineno} {func.attr}: {', '.join(sorted(candidates))} all "
                                 f"have it, and the scanner cannot tell which API class {receiver!r} is")
        return None

    def _use(self, func: ast.Attribute, args: list[ast.expr], keywords: list[ast.keyword], line: int, *,
             watch: bool, partial: bool = False) -> None:
        name = func.attr
        method = self._method(func)
        if method is None:
            return
        values: dict[str, ast.expr] = dict(zip(method.params, args, strict=False))
        values.update({k.arg: k.value for k in keywords if k.arg})
        group = plural = None
        if "{group}" in method.path:
            group = self._resolve(values.get("group"))
        if "{plural}" in method.path:
            plural = self._resolve(values.get("plural"))
        if partial and ("{group}" in method.path or "{plural}" in method.path):
            # A reference whose arguments come elsewhere: only recorded if it is never called or streamed.
            self.mod.uses.append(Use(self.mod.name, line, name, "?", "?", ()))
            return
        grp, resource, verbs = access_of(method, group, plural, watch=watch)
        self.mod.uses.append(Use(self.mod.name, line, name, grp, resource, verbs))

    def _resolve(self, node: ast.expr | None) -> str | None:
        if node is None:
            return None
        return self.resolver.value(self.mod.name, node, self.local[-1])


class Resolver:
    """Turns an argument expression into a string when it is a literal or a constant, else None."""

    def __init__(self) -> None:
        self.constants: dict[str, dict[str, ast.expr]] = {}
        self.aliases: dict[str, dict[str, tuple[str, str]]] = {}

    def value(self, module: str, node: ast.expr, local: dict[str, list[ast.expr]] | None = None,
              depth: int = 0) -> str | None:
        """The string ``node`` stands for in ``module``, or None when only known at run time."""
        if depth > 8:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            parts = []
            for v in node.values:
                if isinstance(v, ast.Constant):
                    parts.append(str(v.value))
                elif isinstance(v, ast.FormattedValue):
                    inner = self.value(module, v.value, local, depth + 1)
                    if inner is None:
                        return None
                    parts.append(inner)
            return "".join(parts)
        if isinstance(node, ast.Name):
            if local and len(local.get(node.id, [])) == 1:
                return self.value(module, local[node.id][0], None, depth + 1)
            const = self.constants.get(module, {}).get(node.id)
            if const is not None:
                return self.value(module, const, None, depth + 1)
            alias = self.aliases.get(module, {}).get(node.id)
            if alias is not None:
                src_mod, src_name = alias
                const = self.constants.get(src_mod, {}).get(src_name)
                if const is not None:
                    return self.value(src_mod, const, None, depth + 1)
        return None


@cache
def scan(root: Path = REPO) -> dict[str, Module]:
    """Every module under `SCANNED` in ``root``, with its natib imports and Kubernetes API uses."""
    resolver = Resolver()
    trees: dict[str, tuple[Path, ast.Module]] = {}
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*.py")):
            name = module_name(path, root)
            tree = ast.parse(path.read_text(), filename=str(path))
            trees[name] = (path, tree)
            resolver.constants[name] = _constants(tree)
    modules: dict[str, Module] = {}
    for name, (path, tree) in trees.items():
        mod = Module(name, path)
        _Scanner(mod, tree, resolver).visit(tree)
        mod.uses = _settle(mod.uses)
        mod.problems.extend(f"{u.where()}: referenced, but the scanner cannot see its group and plural"
                            for u in mod.uses if u.group == "?")
        mod.uses = [u for u in mod.uses if u.group != "?"]
        mod.uses.extend(_owner_finalizers(name, tree, resolver))
        modules[name] = mod
    return modules


def _settle(uses: list[Use]) -> list[Use]:
    # A bare reference ("?") is dropped when the same method is also used with known arguments.
    known = {u.method for u in uses if u.group != "?"}
    return [u for u in uses if u.group != "?" or u.method not in known]


def _owner_finalizers(module: str, tree: ast.Module, resolver: Resolver) -> Iterator[Use]:
    """``update`` on ``<owner>/finalizers`` for each owner reference with ``blockOwnerDeletion: True``."""
    from natib.runtime.kube import resource_for

    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        keys = {k.value: v for k, v in zip(node.keys, node.values, strict=True) if isinstance(k, ast.Constant)}
        block = keys.get("blockOwnerDeletion")
        if not (isinstance(block, ast.Constant) and block.value is True):
            continue
        api_version = resolver.value(module, keys["apiVersion"]) if "apiVersion" in keys else None
        kind = resolver.value(module, keys["kind"]) if "kind" in keys else None
        if api_version and kind:
            res = resource_for(api_version, kind)
            yield Use(module, node.lineno, "ownerReferences.blockOwnerDeletion", res.group,
                      f"{res.plural}/finalizers", ("update",))
        else:
            yield Use(module, node.lineno, "ownerReferences.blockOwnerDeletion", DYNAMIC, f"{DYNAMIC}/finalizers",
                      ("update",))


# -- from actor kinds to code -------------------------------------------------------------------------


def entry_modules(kind: str) -> set[str]:
    """The modules ``natib actor <kind>`` starts from: its factory's module, or what a factory function imports."""
    sys.path.insert(0, str(REPO))
    from natib.actors import app

    factories: dict[str, Any] = {}
    for attr in ("ACTOR_KINDS", "KATIB_KINDS"):
        factories.update(getattr(app, attr, {}))
    if kind not in factories:
        raise KeyError(f"no actor kind {kind!r}; natib has {', '.join(sorted(factories))}")
    factory = factories[kind]
    if factory.__module__ != app.__name__:
        return {factory.__module__}
    # A factory function in app.py: follow only what it imports.
    tree = ast.parse(inspect.getsource(factory))
    mods: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("natib"):
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if a.name.startswith("natib"))
    return mods


def reachable(start: Iterable[str]) -> set[str]:
    """Every scanned module the code started from ``start`` can run.

    The start modules' imports count wherever they are (their functions are what runs); other modules
    count only with their module-level imports, since a function-level (lazy) import elsewhere runs only
    when that function is called, e.g. `launcher_for` importing the Kubernetes launcher.
    """
    modules = scan()
    entry = set(start)
    seen: set[str] = set()
    todo = list(entry)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in modules:
            # `from natib.x import y` names y, which may be a module or an attribute of x.
            parent = name.rpartition(".")[0]
            if parent in modules and parent not in seen:
                todo.append(parent)
            continue
        seen.add(name)
        imports = modules[name].imports if name in entry else modules[name].top_imports
        todo.extend(i for i in imports if i not in seen and i != "natib.actors.app")
    return seen


def uses_of(kind: str) -> list[Use]:
    """Every Kubernetes API use in the code ``natib actor <kind>`` runs."""
    modules = scan()
    return [u for m in sorted(reachable(entry_modules(kind))) for u in modules[m].uses]


def expand(use: Use) -> set[Access]:
    """The (apiGroup, resource, verb) triples one use needs; trial kinds expand to `TRIAL_RESOURCES`."""
    out: set[Access] = set()
    for verb in use.verbs:
        if use.group == DYNAMIC or DYNAMIC in use.resource:
            sub = use.resource.partition("/")[2]
            for grp, plural in TRIAL_RESOURCES:
                out.add((grp, f"{plural}/{sub}" if sub else plural, verb))
        else:
            out.add((use.group, use.resource, verb))
    return out


def required(kind: str) -> dict[Access, list[Use]]:
    """What the code of one actor kind needs, with the uses that need it."""
    out: dict[Access, list[Use]] = {}
    for use in uses_of(kind):
        for access in expand(use):
            out.setdefault(access, []).append(use)
    return out


# -- what the manifests grant -------------------------------------------------------------------------


def granted(objects: list[dict[str, Any]], service_account: str, namespace: str) -> tuple[set[Access], list[str]]:
    """What the rendered RBAC grants ``namespace/service_account``, and any rule that uses a wildcard."""
    roles: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for obj in objects:
        if obj.get("kind") in ("Role", "ClusterRole"):
            ns = obj["metadata"].get("namespace", "") if obj["kind"] == "Role" else ""
            roles[(obj["kind"], ns, obj["metadata"]["name"])] = obj.get("rules") or []
    access: set[Access] = set()
    wildcards: list[str] = []
    for obj in objects:
        if obj.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == service_account
                   and s.get("namespace", obj["metadata"].get("namespace")) == namespace
                   for s in obj.get("subjects") or []):
            continue
        ref = obj["roleRef"]
        ns = obj["metadata"].get("namespace", "") if ref["kind"] == "Role" else ""
        for rule in roles.get((ref["kind"], ns, ref["name"]), []):
            name = f"{ref['kind']}/{ref['name']}"
            if rule.get("nonResourceURLs") or rule.get("resourceNames"):
                wildcards.append(f"{name}: nonResourceURLs/resourceNames are not expected")
            for key in ("apiGroups", "resources", "verbs"):
                if "*" in (rule.get(key) or []):
                    wildcards.append(f"{name}: wildcard in {key}")
            for grp in rule.get("apiGroups") or []:
                for res in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        access.add((grp, res, verb))
    return access, wildcards


def fmt(access: Access) -> str:
    """``verb group/resource`` (``core`` for the core group)."""
    grp, res, verb = access
    return f"{verb} {grp or 'core'}/{res}"
