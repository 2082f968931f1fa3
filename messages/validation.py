"""Katib's admission rules for an Experiment, with Katib's messages, plus the checks Katib leaves out.

Every problem of a document is reported, ordered as the fields appear in an Experiment.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from natib.messages.spec import (
    KUBEFLOW_JOB_KINDS,
    Experiment,
    ExperimentSpec,
    FieldError,
    MetricsCollectorSpec,
    ParameterSpec,
    SpecError,
    TrialParameterSpec,
    TrialTemplate,
    path_sort_key,
    search_space,
)

__all__ = ["validate_experiment", "validate_update"]

NAME_MAX_LENGTH = 40
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: Experiment annotation choosing where its trials run, and its values.
LAUNCHER_ANNOTATION = "natib.io/launcher"
TRIAL_BACKENDS = ("local", "kubernetes")
NAME_MESSAGE = (
    "name must consist of lower case alphanumeric characters or '-', start with an alphabetic character, "
    "and end with an alphanumeric character (e.g. 'my-name', or 'abc-123', regex used for validation is "
    "'^[a-z]([-a-z0-9]*[a-z0-9])?)') and may not be longer than 40 characters."
)
RESTART_MESSAGE = (
    "Experiment can be restarted if it is in succeeded state by reaching max trials and "
    "spec.resumePolicy = LongRunning or spec.resumePolicy = FromVolume, when experiment is completed"
)

PARAMETER_TYPES = ("double", "int", "discrete", "categorical")
DISTRIBUTIONS = ("uniform", "logUniform", "normal", "logNormal")
RESUME_POLICIES = ("", "Never", "LongRunning", "FromVolume")
METRIC_STRATEGIES = ("min", "max", "latest")
COLLECTOR_KINDS = ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "Push")

_PLACEHOLDER = re.compile(r"\$\{trialParameters\..+?\}")
_META_REFERENCE = re.compile(r"\{trialSpec\.(.+)\}")
_META_INDEXED = re.compile(r"(.+)\[(.+)\]")
_META_KEYS = ("Name", "Namespace", "Kind", "APIVersion", "Labels", "Annotations")
_TWO_GROUPS = re.compile(r".*\(.*\).*\(.*\).*")


class _Errors(list[FieldError]):
    """An error list with a shorthand for adding one."""

    def add(self, path: str, message: str) -> None:
        self.append(FieldError(path=path, message=message))


def validate_experiment(exp: Experiment, *, check_settings: bool = True) -> list[FieldError]:
    """Every problem of ``exp`` (defaults already applied), in document order; empty when it is valid.

    With ``check_settings`` the algorithm and early-stopping names and settings are checked against
    natib's algorithms; without it, nothing that needs the algorithm registry is checked.
    """
    errors = _Errors()
    spec = exp.spec
    name = exp.metadata.name
    if not NAME_PATTERN.match(name) or len(name) > NAME_MAX_LENGTH:
        errors.add("metadata.name", NAME_MESSAGE)
    backend = (exp.metadata.annotations or {}).get(LAUNCHER_ANNOTATION)
    if backend is not None and backend.strip().lower() not in TRIAL_BACKENDS:
        errors.add(f"metadata.annotations[{LAUNCHER_ANNOTATION}]",
                   f"expected one of {', '.join(TRIAL_BACKENDS)}, got {backend!r}")
    _validate_budget(spec, errors)
    objective_ok = _validate_objective(spec, errors)
    if objective_ok:
        _validate_algorithms(spec, errors, check_settings)
        if spec.resume_policy not in RESUME_POLICIES:
            errors.add("spec.resumePolicy", "invalid ResumePolicyType")
        _validate_trial_template(spec, errors)
        params = spec.parameters or []
        if not params and spec.nas_config is None:
            errors.add("spec", "spec.parameters or spec.nasConfig must be specified")
        if params and spec.nas_config is not None:
            errors.add("spec", "only one of spec.parameters and spec.nasConfig can be specified")
        if params:
            _validate_parameters(params, "spec.parameters", errors)
        for i, op in enumerate((spec.nas_config.operations or []) if spec.nas_config else []):
            if op.parameters:
                _validate_parameters(op.parameters, f"spec.nasConfig.operations[{i}].parameters", errors)
        _validate_metrics_collector(spec.metrics_collector_spec, errors)
    return sorted(errors, key=lambda e: path_sort_key(e.path))


def validate_update(
    old: Experiment, new: Experiment, status_trials: int, restartable: bool
) -> list[FieldError]:
    """Katib's rules for editing an existing Experiment; only the three trial budgets may change.

    ``status_trials`` is the old experiment's trial count. ``restartable`` is False when the old experiment
    has completed and may not start again (Katib restarts only one that succeeded by reaching
    maxTrialCount with resumePolicy LongRunning or FromVolume).
    """
    errors = _Errors()
    changed = old.spec != new.spec
    if changed and not restartable:
        errors.add("spec.resumePolicy", RESTART_MESSAGE)
    if changed and new.spec.max_trial_count is not None and new.spec.max_trial_count <= status_trials:
        errors.add("spec.maxTrialCount", "must be greater than status.trials count")
    budgets = {
        "parallel_trial_count": new.spec.parallel_trial_count,
        "max_trial_count": new.spec.max_trial_count,
        "max_failed_trial_count": new.spec.max_failed_trial_count,
    }
    if msgspec.structs.replace(old.spec, **budgets) != new.spec:
        errors.add(
            "spec",
            "only spec.parallelTrialCount, spec.maxTrialCount and spec.maxFailedTrialCount are editable",
        )
    return sorted(errors, key=lambda e: path_sort_key(e.path))


# ---------------------------------------------------------------- top level


def _validate_budget(spec: ExperimentSpec, errors: _Errors) -> None:
    failed, total, parallel = spec.max_failed_trial_count, spec.max_trial_count, spec.parallel_trial_count
    if failed is not None and failed < 0:
        errors.add("spec.maxFailedTrialCount", "should not be less than 0")
    if total is not None and total <= 0:
        errors.add("spec.maxTrialCount", "must be greater than 0")
    if parallel is not None and parallel <= 0:
        errors.add("spec.parallelTrialCount", "must be greater than 0")
    if failed is not None and total is not None and failed > total:
        errors.add("spec.maxFailedTrialCount", "should be less than or equal to spec.maxTrialCount")
    if parallel is not None and total is not None and parallel > total:
        errors.add("spec.parallelTrialCount", "should be less than or equal to spec.maxTrialCount")


def _validate_objective(spec: ExperimentSpec, errors: _Errors) -> bool:
    """Check the objective; False when it is missing, which stops the remaining checks as in Katib."""
    obj = spec.objective
    if obj is None:
        errors.add("spec.objective", "must be specified")
        return False
    if obj.type not in ("minimize", "maximize"):
        errors.add("spec.objective.type", "must be minimize or maximize")
    if not obj.objective_metric_name:
        errors.add("spec.objective.objectiveMetricName", "must be specified")
    additional = obj.additional_metric_names or []
    if obj.objective_metric_name and obj.objective_metric_name in additional:
        errors.add(
            "spec.objective.additionalMetricNames", "should not contain spec.objective.objectiveMetricName"
        )
    seen: set[str] = set()
    for i, name in enumerate(additional):
        if name in seen and name != obj.objective_metric_name:
            errors.add(
                f"spec.objective.additionalMetricNames[{i}]",
                f"metric name {name} is duplicated in spec.objective.additionalMetricNames",
            )
        seen.add(name)
    if obj.goal is not None and not math.isfinite(obj.goal):
        errors.add("spec.objective.goal", f"goal must be a finite number, got {obj.goal}")
    metrics = set(spec.metric_names())
    named: set[str] = set()
    for i, s in enumerate(obj.metric_strategies or []):
        path = f"spec.objective.metricStrategies[{i}]"
        if s.name not in metrics:
            errors.add(
                f"{path}.name",
                f"metric {s.name} is neither spec.objective.objectiveMetricName "
                "nor one of spec.objective.additionalMetricNames",
            )
        elif s.name in named:
            errors.add(
                f"{path}.name",
                f"metric {s.name} has more than one strategy in spec.objective.metricStrategies",
            )
        named.add(s.name)
        if s.value not in METRIC_STRATEGIES:
            errors.add(
                f"{path}.value", f"metric strategy: {s.value} is not supported, must be min, max or latest"
            )
    return True


def _settings(items: list[Any] | None) -> dict[str, str]:
    return {s.name: s.value for s in items or []}


def _validate_algorithms(spec: ExperimentSpec, errors: _Errors, check_settings: bool) -> None:
    alg = spec.algorithm
    if alg is None:
        errors.add("spec.algorithm", "must be specified")
    elif not alg.algorithm_name:
        errors.add("spec.algorithm.algorithmName", "must be specified")
    elif check_settings:
        _check_algorithm(spec, alg.algorithm_name, _settings(alg.algorithm_settings), errors)
    es = spec.early_stopping
    if es is None:
        return
    if not es.algorithm_name:
        errors.add("spec.earlyStopping.algorithmName", "must be specified")
    elif check_settings:
        _check_early_stopping(es.algorithm_name, _settings(es.algorithm_settings), errors)


def _check_algorithm(spec: ExperimentSpec, name: str, settings: dict[str, str], errors: _Errors) -> None:
    from natib.algorithms.nas import NAS_ALGORITHMS
    from natib.algorithms.registry import KNOWN_ALGORITHMS, UnknownAlgorithm, get_algorithm

    if spec.nas_config is not None and not spec.parameters:
        _check_nas_algorithm(spec, name, settings, errors)
        return
    if name in NAS_ALGORITHMS:
        errors.add("spec.algorithm.algorithmName",
                   f"algorithm {name} searches spec.nasConfig, which this experiment does not set")
        return
    try:
        algorithm = get_algorithm(name)
    except UnknownAlgorithm:
        errors.add(
            "spec.algorithm.algorithmName",
            f"unable to get Suggestion config data for algorithm {name}: "
            f"natib has no algorithm called '{name}' (known: {', '.join(sorted(KNOWN_ALGORITHMS))})",
        )
        return
    try:
        space = search_space(spec)
    except (SpecError, ValueError):
        return  # the parameter checks already report why the space cannot be built
    if any(e.path.startswith("spec.parameters") for e in _parameter_errors(spec)):
        return
    for message in algorithm.validate(space, settings, spec.max_trial_count):
        errors.add("spec.algorithm.algorithmSettings", message)


def _check_nas_algorithm(spec: ExperimentSpec, name: str, settings: dict[str, str], errors: _Errors) -> None:
    """A nasConfig experiment: the algorithm must be a NAS one, and its checks of graph, operations, settings."""
    from natib.algorithms.nas import NAS_ALGORITHMS, get_nas_algorithm

    algorithm = get_nas_algorithm(name)
    if algorithm is None:
        errors.add(
            "spec.algorithm.algorithmName",
            f"unable to get Suggestion config data for algorithm {name}: natib has no neural architecture "
            f"search algorithm called '{name}' (known for spec.nasConfig: {', '.join(sorted(NAS_ALGORITHMS))})",
        )
        return
    generic = _Errors()
    for i, op in enumerate(spec.nas_config.operations or [] if spec.nas_config else []):
        if op.parameters:
            _validate_parameters(op.parameters, f"spec.nasConfig.operations[{i}].parameters", generic)
    reported = [e.path.rsplit(".feasibleSpace", 1)[0] for e in generic]
    for path, message in algorithm.validate(msgspec.to_builtins(spec.nas_config), settings):
        # The generic parameter checks below already say what is wrong with such an operation parameter.
        if not any(path.startswith(p) for p in reported):
            errors.add(path, message)


def _parameter_errors(spec: ExperimentSpec) -> _Errors:
    found = _Errors()
    if spec.parameters:
        _validate_parameters(spec.parameters, "spec.parameters", found)
    return found


def _check_early_stopping(name: str, settings: dict[str, str], errors: _Errors) -> None:
    from natib.algorithms.early_stopping import KNOWN_EARLY_STOPPING, validate_early_stopping

    if name not in KNOWN_EARLY_STOPPING:
        errors.add(
            "spec.earlyStopping.algorithmName",
            f"unable to get EarlyStopping config data for algorithm {name}: natib has no early stopping "
            f"algorithm called '{name}' (known: {', '.join(sorted(KNOWN_EARLY_STOPPING))})",
        )
        return
    for message in validate_early_stopping(name, settings):
        errors.add("spec.earlyStopping.algorithmSettings", message)


# ---------------------------------------------------------------- parameters


def _parse(text: str, integer: bool) -> float | None:
    """The number ``text`` stands for, or None when it is not a finite number (an integer if asked)."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or (integer and not value.is_integer()):
        return None
    return value


def _validate_parameters(params: list[ParameterSpec], base: str, errors: _Errors) -> None:
    names: set[str] = set()
    for i, p in enumerate(params):
        path = f"{base}[{i}]"
        if not p.name:
            errors.add(f"{path}.name", "must be specified")
        elif p.name in names:
            errors.add(f"{path}.name", f"parameter name {p.name} is duplicated in {base}")
        names.add(p.name)
        ptype = p.parameter_type
        if ptype not in (*PARAMETER_TYPES, "unknown"):
            errors.add(f"{path}.parameterType", f"parameterType: {ptype} is not supported")
        elif ptype == "unknown":
            errors.add(
                f"{path}.parameterType",
                "parameterType: unknown cannot be searched; use " + _either(PARAMETER_TYPES),
            )
        fs = p.feasible_space
        dist = fs.distribution or ""
        if dist and dist not in (*DISTRIBUTIONS, "unknown"):
            errors.add(f"{path}.feasibleSpace.distribution", f"distribution: {dist} is not supported")
        elif dist == "unknown":
            errors.add(
                f"{path}.feasibleSpace.distribution",
                "distribution: unknown cannot be sampled; use " + _either(DISTRIBUTIONS),
            )
        if fs.min is None and fs.max is None and fs.step is None and fs.list_ is None:
            errors.add(f"{path}.feasibleSpace", "feasibleSpace must be specified")
            continue
        if ptype in ("double", "int"):
            _validate_range(p, path, errors)
        elif ptype in ("discrete", "categorical"):
            _validate_list(p, path, errors)


def _either(options: tuple[str, ...]) -> str:
    return ", ".join(options[:-1]) + " or " + options[-1]


def _validate_range(p: ParameterSpec, path: str, errors: _Errors) -> None:
    fs, ptype = p.feasible_space, p.parameter_type
    fpath = f"{path}.feasibleSpace"
    if fs.list_:
        errors.add(f"{fpath}.list", f"feasibleSpace.list is not supported for parameterType: {ptype}")
    if not fs.min and not fs.max:
        errors.add(
            f"{fpath}.max",
            f"feasibleSpace.max or feasibleSpace.min must be specified for parameterType: {ptype}",
        )
        return
    integer = ptype == "int"
    kind = "an integer" if integer else "a number"
    bounds: dict[str, float | None] = {}
    for key in ("min", "max", "step"):
        text = getattr(fs, key)
        if not text:
            bounds[key] = None
            if key != "step":
                errors.add(
                    f"{fpath}.{key}", f"feasibleSpace.{key} must be specified for parameterType: {ptype}"
                )
            continue
        bounds[key] = _parse(text, integer)
        if bounds[key] is None:
            errors.add(
                f"{fpath}.{key}", f"feasibleSpace.{key}: {text} must be {kind} for parameterType: {ptype}"
            )
    low, high, step = bounds["min"], bounds["max"], bounds["step"]
    if low is not None and high is not None and low > high:
        errors.add(
            f"{fpath}.min",
            f"feasibleSpace.min: {fs.min} must not be greater than feasibleSpace.max: {fs.max}",
        )
    if step is not None:
        if step <= 0:
            errors.add(f"{fpath}.step", f"feasibleSpace.step: {fs.step} must be greater than 0")
        elif low is not None and high is not None and high > low and step > high - low:
            errors.add(
                f"{fpath}.step",
                f"feasibleSpace.step: {fs.step} must not be larger than "
                f"feasibleSpace.max - feasibleSpace.min ({fs.max} - {fs.min})",
            )
    dist = fs.distribution or ""
    if dist in ("logUniform", "logNormal") and low is not None and low <= 0:
        errors.add(
            f"{fpath}.min", f"feasibleSpace.min: {fs.min} must be greater than 0 for distribution: {dist}"
        )


def _validate_list(p: ParameterSpec, path: str, errors: _Errors) -> None:
    fs, ptype = p.feasible_space, p.parameter_type
    fpath = f"{path}.feasibleSpace"
    if fs.min or fs.max or fs.step:
        errors.add(fpath, f"feasibleSpace .max, .min and .step is not supported for parameterType: {ptype}")
    if not fs.list_:
        errors.add(f"{fpath}.list", f"feasibleSpace.list must not be empty for parameterType: {ptype}")
        return
    seen: set[Any] = set()
    for j, item in enumerate(fs.list_):
        key: Any = item
        if ptype == "discrete":
            key = _parse(item, False)
            if key is None:
                errors.add(
                    f"{fpath}.list[{j}]",
                    f"feasibleSpace.list item {item} must be a number for parameterType: discrete",
                )
                continue
        if key in seen:
            errors.add(f"{fpath}.list[{j}]", f"feasibleSpace.list item {item} is duplicated")
        seen.add(key)


# ---------------------------------------------------------------- trial template


def _go_list(items: list[str]) -> str:
    return "[" + " ".join(items) + "]"


def _go_trial_parameters(tps: list[TrialParameterSpec]) -> str:
    """Katib's own rendering (Go's %v) of the trialParameters list, as its messages show it."""
    return _go_list([f"{{{t.name} {t.description} {t.reference}}}" for t in tps])


def _go_parameters(params: list[ParameterSpec]) -> str:
    """Katib's own rendering (Go's %v) of spec.parameters, as its messages show it."""
    out = []
    for p in params:
        fs = p.feasible_space
        fields = [
            fs.max or "",
            fs.min or "",
            _go_list(list(fs.list_ or [])),
            fs.step or "",
            fs.distribution or "",
        ]
        space = "{" + " ".join(fields) + "}"
        out.append(f"{{{p.name} {p.parameter_type} {space}}}")
    return _go_list(out)


def _template_text(trial_spec: Mapping[str, Any]) -> str:
    """The template serialised as Katib does before substituting placeholders (compact JSON, sorted keys)."""
    text = json.dumps(trial_spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _is_meta_reference(reference: str) -> bool:
    match = _META_REFERENCE.search(reference)
    if not match:
        return False
    key = match.group(1)
    if key in _META_KEYS:
        return True
    sub = _META_INDEXED.fullmatch(key)
    return sub is not None and sub.group(1) in _META_KEYS


def _validate_trial_template(spec: ExperimentSpec, errors: _Errors) -> None:
    t = spec.trial_template
    base = "spec.trialTemplate"
    if t is None:
        errors.add(base, "must be specified")
        return
    if not t.primary_container_name:
        errors.add(f"{base}.primaryContainerName", "must be specified")
    if not t.success_condition or not t.failure_condition:
        errors.add(base, "successCondition and failureCondition must be specified")
    if t.trial_parameters is None:
        errors.add(f"{base}.trialParameters", "must be specified")
        return
    if t.trial_spec is None and t.config_map is None:
        errors.add(
            f"{base}.TrialSource",
            "spec.trialTemplate.trialSpec or spec.trialTemplate.configMap must be specified",
        )
        return
    if t.trial_spec is not None and t.config_map is not None:
        errors.add(
            base, "only one of spec.trialTemplate.trialSpec or spec.trialTemplate.configMap can be specified"
        )
        return
    cm = t.config_map
    if cm is not None and not (cm.config_map_name and cm.config_map_namespace and cm.template_path):
        errors.add(
            f"{base}.configMap", "configMapName, configMapNamespace and templatePath must be specified"
        )
        return
    # A ConfigMap template lives in a cluster natib may not reach; its text is checked when a trial is built.
    text = _template_text(t.trial_spec) if t.trial_spec is not None else None
    _validate_trial_parameters(spec, t, text, errors)
    if t.trial_spec is not None:
        _validate_run_spec(t, errors)


def _validate_trial_parameters(
    spec: ExperimentSpec, t: TrialTemplate, text: str | None, errors: _Errors
) -> None:
    base = "spec.trialTemplate.trialParameters"
    tps = t.trial_parameters or []
    params = spec.parameters or []
    param_names = {p.name for p in params}
    labels, annotations = _template_metadata(t.trial_spec)
    names: set[str] = set()
    refs: set[str] = set()
    for i, tp in enumerate(tps):
        path = f"{base}[{i}]"
        if not tp.name or not tp.reference or "{" in tp.name or "}" in tp.name:
            errors.add(path, "name and reference must be specified and name must not contain '{' or '}'")
            continue
        if tp.name in names:
            errors.add(
                f"{path}.name",
                f"parameter name {tp.name} can't be duplicated in spec.trialTemplate.trialParameters: "
                f"{_go_trial_parameters(tps)}",
            )
            continue
        if tp.reference in refs:
            errors.add(
                f"{path}.reference",
                f"parameter reference {tp.reference} can't be duplicated in "
                f"spec.trialTemplate.trialParameters: {_go_trial_parameters(tps)}",
            )
            continue
        names.add(tp.name)
        refs.add(tp.reference)
        meta = _is_meta_reference(tp.reference)
        if param_names and not meta and tp.reference not in param_names:
            errors.add(
                f"{path}.reference",
                f"parameter reference {tp.reference} does not exist in spec.parameters: "
                f"{_go_parameters(params)}",
            )
        if meta and t.trial_spec is not None:
            _check_meta_reference(tp.reference, labels, annotations, f"{path}.reference", errors)
        if text is not None:
            placeholder = "${trialParameters." + tp.name + "}"
            if placeholder not in text:
                errors.add(
                    f"{path}.name",
                    f"parameter name: {tp.name} in spec.trialParameters not found in "
                    f"spec.trialTemplate: {text}",
                )
            text = text.replace(placeholder, "test-value")
    if text is not None:
        left = _PLACEHOLDER.findall(text)
        if left:
            errors.add(
                "spec.trialTemplate",
                f"parameters: {_go_list(left)} in spec.trialTemplate not found in spec.trialParameters: "
                f"{_go_trial_parameters(tps)}",
            )


def _template_metadata(trial_spec: Mapping[str, Any] | None) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    meta = trial_spec.get("metadata") if isinstance(trial_spec, Mapping) else None
    if not isinstance(meta, Mapping):
        return {}, {}
    labels, annotations = meta.get("labels"), meta.get("annotations")
    return (
        labels if isinstance(labels, Mapping) else {},
        annotations if isinstance(annotations, Mapping) else {},
    )


def _check_meta_reference(
    reference: str, labels: Mapping[str, Any], annotations: Mapping[str, Any], path: str, errors: _Errors
) -> None:
    match = _META_REFERENCE.search(reference)
    sub = _META_INDEXED.fullmatch(match.group(1)) if match else None
    if sub is None:
        return
    where, key = sub.group(1), sub.group(2)
    source = labels if where == "Labels" else annotations
    if key not in source:
        errors.add(
            path,
            f"parameter reference {reference} names {where.lower()[:-1]} {key}, which "
            f"spec.trialTemplate.trialSpec.metadata.{where.lower()} does not set",
        )


def _validate_run_spec(t: TrialTemplate, errors: _Errors) -> None:
    run = t.trial_spec or {}
    base = "spec.trialTemplate"
    meta = run.get("metadata")
    if isinstance(meta, Mapping) and (meta.get("name") or meta.get("namespace")):
        errors.add(base, "metadata.name and metadata.namespace in spec.trialTemplate must be omitted")
    api_version, kind = run.get("apiVersion"), run.get("kind")
    if not api_version or not kind:
        errors.add(base, "APIVersion and Kind in spec.trialTemplate must be specified")
        return
    containers: list[str] | None = None
    if api_version == "batch/v1" and kind == "Job":
        pod = _dig(run, "spec", "template", "spec")
        found = _container_names(pod)
        if found is None:
            errors.add(
                base,
                "invalid spec.trialTemplate: a batch/v1 Job needs spec.template.spec.containers, "
                "a non-empty list of containers that each have a name and an image",
            )
            return
        containers = found
    elif kind in KUBEFLOW_JOB_KINDS:
        replicas = _dig(run, "spec")
        if isinstance(replicas, Mapping):
            containers = []
            for key, value in replicas.items():
                if key.endswith("ReplicaSpecs") and isinstance(value, Mapping):
                    for replica in value.values():
                        containers += _container_names(_dig(replica, "template", "spec")) or []
    if containers is not None and t.primary_container_name and t.primary_container_name not in containers:
        errors.add(
            f"{base}.primaryContainerName",
            f"primaryContainerName: {t.primary_container_name} is not a container of the trial template "
            f"(containers: {', '.join(containers) or 'none'})",
        )


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _container_names(pod_spec: Any) -> list[str] | None:
    """Container names of a pod spec; None when it has no well-formed, non-empty container list."""
    containers = _dig(pod_spec, "containers")
    if not isinstance(containers, list) or not containers:
        return None
    names = []
    for c in containers:
        if not isinstance(c, Mapping) or not isinstance(c.get("name"), str) or not c.get("name"):
            return None
        if not isinstance(c.get("image"), str) or not c.get("image"):
            return None
        names.append(c["name"])
    return names


# ---------------------------------------------------------------- metrics collector


def _validate_metrics_collector(mc: MetricsCollectorSpec | None, errors: _Errors) -> None:
    base = "spec.metricsCollectorSpec"
    src_path = f"{base}.source"
    kind = mc.collector.kind if mc is not None and mc.collector is not None else ""
    source = mc.source if mc is not None else None
    fsp = source.file_system_path if source is not None else None
    if kind in ("StdOut", "Push"):
        pass
    elif kind == "File":
        # natib also follows every file of a Directory (Katib accepts kind File only).
        if fsp is None or fsp.kind not in ("File", "Directory") or not fsp.path.startswith("/"):
            errors.add(f"{src_path}.fileSystemPath.path", "file path where metrics file exists is required")
        fmt = fsp.format if fsp is not None else ""
        if fmt not in ("TEXT", "JSON"):
            errors.add(
                f"{src_path}.fileSystemPath.format",
                "format of metrics file is required for metrics collector",
            )
        if fmt == "JSON" and source is not None and source.filter is not None:
            errors.add(f"{src_path}.filter", "filter must be nil when format of metrics file is json")
    elif kind == "TensorFlowEvent":
        if fsp is None or fsp.kind != "Directory" or not fsp.path.startswith("/"):
            errors.add(
                src_path,
                "directory path where tensorflow event files exist is required by "
                ".spec.metricsCollectorSpec.source.fileSystemPath.path",
            )
        if fsp is not None and fsp.format:
            errors.add(f"{src_path}.fileSystemPath.format", "must be empty")
    elif kind == "PrometheusMetric":
        http = (source.http_get if source is not None else None) or {}
        port = http.get("port")
        if isinstance(port, bool) or not (
            (isinstance(port, int) and port > 0)
            or (isinstance(port, str) and port.isdigit() and int(port) > 0)
        ):
            errors.add(
                f"{src_path}.httpGet.port",
                f"must be a positive integer value for metrics collector kind: {kind}",
            )
        path = http.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            errors.add(f"{src_path}.httpGet.path", f"path is invalid for metrics collector kind: {kind}")
    elif kind == "Custom":
        if mc is None or mc.collector is None or mc.collector.custom_collector is None:
            errors.add(f"{base}.collector.customCollector", f"metrics collector kind: {kind} is required")
        if fsp is not None and (not fsp.path.startswith("/") or fsp.kind not in ("File", "Directory")):
            errors.add(f"{src_path}.fileSystemPath", ".spec.metricsCollectorSpec.source is invalid")
    else:
        errors.add(f"{base}.collector.kind", f"invalid metrics collector kind: {kind}")
    formats = source.filter.metrics_format if source is not None and source.filter is not None else None
    for i, pattern in enumerate(formats or []):
        path = f"{src_path}.filter.metricsFormat[{i}]"
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            errors.add(path, f"invalid filter: {exc}")
            continue
        if compiled.groups < 2 or not _TWO_GROUPS.match(pattern):
            errors.add(path, "two top subexpressions are required")
