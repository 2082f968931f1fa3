"""Rendering a trial's run spec from an experiment's trialTemplate, and reading its primary container.

Inputs are plain dicts, so this module works on Katib YAML as loaded and does not depend on the spec model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LocalCommand",
    "TemplateError",
    "find_primary_container",
    "local_command",
    "render_trial_spec",
]

_PLACEHOLDER = re.compile(r"\$\{trialParameters\.([^}]*)\}")
_META_REFERENCE = re.compile(r"\$\{trialSpec\.(.+)\}")
_META_INDEXED = re.compile(r"(Labels|Annotations)\[(.+)\]")

# Replica preference per Kubeflow training kind: the replica whose pod Katib's default primaryPodLabels pick.
_REPLICA_ORDER: dict[str, tuple[str, tuple[str, ...]]] = {
    "PyTorchJob": ("pytorchReplicaSpecs", ("Master",)),
    "TFJob": ("tfReplicaSpecs", ("Chief", "Master", "Worker")),
    "XGBoostJob": ("xgbReplicaSpecs", ("Master",)),
    "MPIJob": ("mpiReplicaSpecs", ("Launcher",)),
}

# Argo names the container of a `container:` template "main" unless it says otherwise.
_ARGO_DEFAULT_CONTAINER = "main"


class TemplateError(ValueError):
    """A trial template cannot be rendered or run as asked; the message says what is wrong."""


def _json_escaped(value: str) -> str:
    # The placeholder sits inside a JSON string, so the value goes in as that string's escaped body.
    return json.dumps(value, ensure_ascii=False)[1:-1]


def _metadata_value(key: str, trial_spec: Mapping[str, Any], trial_name: str, namespace: str) -> str:
    metadata = trial_spec.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    if key == "Name":
        return trial_name
    if key == "Namespace":
        return namespace
    if key == "Kind":
        return str(trial_spec.get("kind", ""))
    if key == "APIVersion":
        return str(trial_spec.get("apiVersion", ""))
    indexed = _META_INDEXED.fullmatch(key)
    if indexed is None:
        raise TemplateError(f"unknown trialSpec metadata reference ${{trialSpec.{key}}}")
    section, item = indexed.groups()
    values = metadata.get(section.lower())
    if not isinstance(values, Mapping) or item not in values:
        raise TemplateError(f"{section.lower()[:-1]} {item} not found in the trial template's metadata")
    return str(values[item])


def render_trial_spec(
    trial_spec: Mapping[str, Any],
    trial_parameters: Sequence[Mapping[str, str]],
    assignment: Mapping[str, str],
    *,
    trial_name: str,
    namespace: str,
) -> dict[str, Any]:
    """Substitute `${trialParameters.<name>}` placeholders for one trial and name the result after the trial.

    A trialParameter's reference is either a parameter name in `assignment` or a `${trialSpec.<Key>}` metadata
    reference. As in Katib, substitution is textual, so a placeholder that is a whole YAML scalar becomes a
    string; values are JSON-escaped, so no value can alter the document's structure.
    """
    values: dict[str, str] = {}
    for parameter in trial_parameters:
        name = parameter.get("name")
        reference = parameter.get("reference")
        if not name or not reference:
            raise TemplateError(f"trial parameter {dict(parameter)} needs a name and a reference")
        if reference in assignment:
            value = assignment[reference]
            values[name] = value if isinstance(value, str) else str(value)
            continue
        meta = _META_REFERENCE.fullmatch(reference)
        if meta is None:
            raise TemplateError(f"parameter {reference} not found in parameter assignments")
        values[name] = _metadata_value(meta.group(1), trial_spec, trial_name, namespace)

    try:
        text = json.dumps(trial_spec, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"trial template is not plain JSON data: {exc}") from exc

    unresolved: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return _json_escaped(values[name])
        if name not in unresolved:
            unresolved.append(name)
        return match.group(0)

    # One pass: text that a value brings in is never scanned again, so values cannot inject placeholders.
    rendered = _PLACEHOLDER.sub(substitute, text)
    if unresolved:
        names = ", ".join(f"${{trialParameters.{n}}}" for n in unresolved)
        raise TemplateError(f"trial template has placeholders with no trial parameter: {names}")

    run_spec = json.loads(rendered)
    if not isinstance(run_spec, dict):
        raise TemplateError("trial template must be a mapping")
    metadata = run_spec.get("metadata")
    if not isinstance(metadata, dict):
        metadata = run_spec["metadata"] = {}
    metadata["name"] = trial_name
    metadata["namespace"] = namespace
    return run_spec


def _named(containers: Any, name: str) -> dict[str, Any] | None:
    if isinstance(containers, list):
        for container in containers:
            if isinstance(container, dict) and container.get("name") == name:
                return container
    return None


def _pod_containers(replica: Any) -> Any:
    if not isinstance(replica, Mapping):
        return None
    template = replica.get("template")
    spec = template.get("spec") if isinstance(template, Mapping) else None
    return spec.get("containers") if isinstance(spec, Mapping) else None


def _search(node: Any, name: str) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        found = _named(node.get("containers"), name)
        if found is not None:
            yield found
        argo = node.get("container")
        if isinstance(argo, dict) and argo.get("name", _ARGO_DEFAULT_CONTAINER) == name:
            yield argo
        for value in node.values():
            yield from _search(value, name)
    elif isinstance(node, list):
        for item in node:
            yield from _search(item, name)


def find_primary_container(run_spec: Mapping[str, Any], primary_container_name: str) -> dict[str, Any]:
    """Return the primary container of a rendered run spec, looking first in the replica Katib would pick.

    Job uses its pod template; Kubeflow training jobs prefer Master (PyTorchJob, XGBoostJob), Chief then Master
    then Worker (TFJob) or Launcher (MPIJob); any other kind is searched depth-first for the named container.
    """
    kind = str(run_spec.get("kind", ""))
    spec = run_spec.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    found: dict[str, Any] | None = None
    if kind == "Job":
        found = _named(_pod_containers(spec), primary_container_name)
    elif kind in _REPLICA_ORDER:
        field_name, preferred = _REPLICA_ORDER[kind]
        replicas = spec.get(field_name)
        replicas = replicas if isinstance(replicas, Mapping) else {}
        order = [r for r in preferred if r in replicas] + [r for r in replicas if r not in preferred]
        for role in order:
            found = _named(_pod_containers(replicas[role]), primary_container_name)
            if found is not None:
                break
    if found is None:
        found = next(_search(dict(run_spec), primary_container_name), None)
    if found is None:
        raise TemplateError(f"primary container {primary_container_name} not found in {kind or 'trial template'}")
    return found


def _expand(text: str, env: Mapping[str, str]) -> str:
    # Kubernetes expands $(VAR) from the container's env and turns $$ into $; an unknown $(VAR) stays as is.
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : close]
            out.append(env.get(name, f"$({name})"))
            i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


@dataclass(frozen=True)
class LocalCommand:
    """What the local backend runs for a trial: argv, the container's own env, working directory and image."""

    argv: list[str]
    env: dict[str, str]
    working_dir: str | None
    image: str | None
    skipped_env: list[str] = field(default_factory=list)
    """Env entries the local backend cannot resolve (`valueFrom`, `envFrom`), so the launcher can warn."""


def _strings(container: Mapping[str, Any], key: str, name: str) -> list[str]:
    items = container.get(key) or []
    if not isinstance(items, list):
        raise TemplateError(f"container {name} {key} must be a list of strings")
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TemplateError(f"container {name} {key}[{index}] must be a string, got {item!r}")
    return list(items)


def local_command(container: Mapping[str, Any]) -> LocalCommand:
    """Translate a primary container into a local process, expanding `$(VAR)` references as Kubernetes does."""
    name = str(container.get("name", ""))
    command = _strings(container, "command", name)
    if not command:
        raise TemplateError(
            f"container {name} has no command; the local backend cannot read an image's entrypoint, "
            "so set command in the trial template"
        )
    args = _strings(container, "args", name)

    env: dict[str, str] = {}
    skipped: list[str] = []
    for entry in container.get("env") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise TemplateError(f"container {name} has an env entry without a name: {entry!r}")
        if "valueFrom" in entry:
            skipped.append(entry["name"])
            continue
        value = entry.get("value")
        if value is not None and not isinstance(value, str):
            raise TemplateError(f"container {name} env {entry['name']} must have a string value, got {value!r}")
        # Each value sees only the variables defined before it, as in Kubernetes.
        env[entry["name"]] = _expand(value or "", env)
    for index, _source in enumerate(container.get("envFrom") or []):
        skipped.append(f"envFrom[{index}]")

    argv = [_expand(part, env) for part in command + args]
    working_dir = container.get("workingDir")
    image = container.get("image")
    return LocalCommand(
        argv=argv,
        env=env,
        working_dir=working_dir if isinstance(working_dir, str) and working_dir else None,
        image=image if isinstance(image, str) and image else None,
        skipped_env=skipped,
    )
