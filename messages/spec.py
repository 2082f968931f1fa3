"""The Katib ``kubeflow.org/v1beta1`` Experiment as msgspec Structs, with loading, defaulting and dumping.

Field names on the wire are Katib's (camelCase); Python attributes are snake_case. Katib YAML loads
unchanged: unknown fields are ignored, and numbers written where Katib expects strings are accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Self

import msgspec
import msgspec.inspect as mi
import yaml

from natib.algorithms.space import Parameter, SearchSpace, parameter_from_katib

__all__ = [
    "API_VERSION",
    "KIND",
    "AlgorithmSetting",
    "AlgorithmSpec",
    "CollectorSpec",
    "ConfigMapSource",
    "EarlyStoppingSpec",
    "Experiment",
    "ExperimentSpec",
    "FeasibleSpace",
    "FieldError",
    "FileSystemPath",
    "FilterSpec",
    "GraphConfig",
    "MetricStrategy",
    "MetricsCollectorSpec",
    "NasConfig",
    "ObjectMeta",
    "ObjectiveSpec",
    "Operation",
    "ParameterSpec",
    "SourceSpec",
    "SpecError",
    "TrialParameterSpec",
    "TrialTemplate",
    "apply_defaults",
    "dump_yaml",
    "load_experiment",
    "load_experiments",
    "search_space",
    "to_builtins",
]

API_VERSION = "kubeflow.org/v1beta1"
KIND = "Experiment"

# Katib's defaults (experiment_defaults.go, constants.go).
DEFAULT_PARALLEL_TRIAL_COUNT = 3
DEFAULT_RESUME_POLICY = "Never"
DEFAULT_COLLECTOR_KIND = "StdOut"
DEFAULT_FILE_PATH = "/var/log/katib/metrics.log"
DEFAULT_TFEVENT_DIR = "/var/log/katib/tfevent/"
DEFAULT_PROMETHEUS_PATH = "/metrics"
DEFAULT_PROMETHEUS_PORT = 8080
DEFAULT_DISTRIBUTION = "uniform"

JOB_SUCCESS_CONDITION = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILURE_CONDITION = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
KUBEFLOW_JOB_SUCCESS_CONDITION = 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'
KUBEFLOW_JOB_FAILURE_CONDITION = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
KUBEFLOW_JOB_KINDS = ("TFJob", "PyTorchJob", "XGBoostJob", "MPIJob")
KUBEFLOW_PRIMARY_POD_LABELS = {"training.kubeflow.org/job-role": "master"}
TRAINJOB_KIND = "TrainJob"
TRAINJOB_PRIMARY_POD_LABELS = {
    "jobset.sigs.k8s.io/replicatedjob-name": "node",
    "batch.kubernetes.io/job-completion-index": "0",
}


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One problem in an Experiment document, at a Katib-style dotted path like ``spec.parameters[1].name``.

    ``document`` is the index of the YAML document when a file holds several, else None.
    """

    path: str
    message: str
    document: int | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return text if self.document is None else f"document {self.document}: {text}"


class SpecError(ValueError):
    """An Experiment document that cannot be read as an Experiment, with every structural problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class _Base(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """Common configuration of every Experiment struct."""


class ObjectMeta(_Base, frozen=True):
    """The part of Kubernetes object metadata natib keeps."""

    name: str = ""
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None


class FeasibleSpace(_Base, frozen=True):
    """The values a parameter may take; every value is a string, as in Katib."""

    min: str | None = None
    max: str | None = None
    step: str | None = None
    list_: list[str] | None = msgspec.field(default=None, name="list")
    distribution: str | None = None


class ParameterSpec(_Base, frozen=True):
    """One hyperparameter of the search space."""

    name: str
    parameter_type: str = ""
    feasible_space: FeasibleSpace = msgspec.field(default_factory=FeasibleSpace)


class MetricStrategy(_Base, frozen=True):
    """Which of a metric's reported values (min, max or latest) counts as the trial's value."""

    name: str
    value: str = ""


class ObjectiveSpec(_Base, frozen=True):
    """What the experiment optimises and when it may stop early."""

    type: str = ""
    goal: float | None = None
    objective_metric_name: str = ""
    additional_metric_names: list[str] | None = None
    metric_strategies: list[MetricStrategy] | None = None


class AlgorithmSetting(_Base, frozen=True):
    """One name/value setting passed to an algorithm."""

    name: str
    value: str = ""


class AlgorithmSpec(_Base, frozen=True):
    """The search algorithm and its settings."""

    algorithm_name: str = ""
    algorithm_settings: list[AlgorithmSetting] | None = None


class EarlyStoppingSpec(_Base, frozen=True):
    """The early-stopping algorithm and its settings."""

    algorithm_name: str = ""
    algorithm_settings: list[AlgorithmSetting] | None = None


class ConfigMapSource(_Base, frozen=True):
    """A trial template kept in a ConfigMap entry."""

    config_map_name: str = ""
    config_map_namespace: str = ""
    template_path: str = ""


class TrialParameterSpec(_Base, frozen=True):
    """A ``${trialParameters.<name>}`` placeholder and the parameter or metadata it stands for."""

    name: str = ""
    description: str = ""
    reference: str = ""


class TrialTemplate(_Base, frozen=True):
    """How each trial's job is built and how its success or failure is recognised."""

    retain: bool = False
    trial_spec: dict[str, Any] | None = None
    config_map: ConfigMapSource | None = None
    trial_parameters: list[TrialParameterSpec] | None = None
    primary_container_name: str = ""
    primary_pod_labels: dict[str, str] | None = None
    success_condition: str = ""
    failure_condition: str = ""


class CollectorSpec(_Base, frozen=True):
    """The kind of metrics collector, and the container for a Custom one."""

    kind: str = ""
    custom_collector: dict[str, Any] | None = None


class FileSystemPath(_Base, frozen=True):
    """Where a File or TensorFlowEvent collector reads metrics."""

    path: str = ""
    kind: str = ""
    format: str = ""


class FilterSpec(_Base, frozen=True):
    """Regular expressions that pull (name, value) pairs out of text metrics."""

    metrics_format: list[str] | None = None


class SourceSpec(_Base, frozen=True):
    """Where metrics come from."""

    file_system_path: FileSystemPath | None = None
    http_get: dict[str, Any] | None = None
    filter: FilterSpec | None = None


class MetricsCollectorSpec(_Base, frozen=True):
    """How a trial's metrics are collected."""

    collector: CollectorSpec | None = None
    source: SourceSpec | None = None


class GraphConfig(_Base, frozen=True):
    """The network skeleton for neural architecture search."""

    num_layers: int | None = None
    input_sizes: list[int] | None = None
    output_sizes: list[int] | None = None


class Operation(_Base, frozen=True):
    """One candidate operation of a NAS search space and its parameters."""

    operation_type: str
    parameters: list[ParameterSpec] | None = None


class NasConfig(_Base, frozen=True):
    """A neural architecture search space."""

    graph_config: GraphConfig | None = None
    operations: list[Operation] | None = None


class ExperimentSpec(_Base, frozen=True):
    """Everything a Katib Experiment asks for, in Katib's field order."""

    parameters: list[ParameterSpec] | None = None
    objective: ObjectiveSpec | None = None
    algorithm: AlgorithmSpec | None = None
    early_stopping: EarlyStoppingSpec | None = None
    trial_template: TrialTemplate | None = None
    parallel_trial_count: int | None = None
    max_trial_count: int | None = None
    max_failed_trial_count: int | None = None
    metrics_collector_spec: MetricsCollectorSpec | None = None
    nas_config: NasConfig | None = None
    resume_policy: str = ""

    def metric_names(self) -> list[str]:
        """The objective metric first, then the additional metrics, in spec order."""
        if self.objective is None:
            return []
        names = [self.objective.objective_metric_name] if self.objective.objective_metric_name else []
        return names + list(self.objective.additional_metric_names or [])

    def metric_strategy(self, name: str) -> Literal["min", "max", "latest"]:
        """The strategy that turns metric ``name``'s reports into one value (KeyError if not a metric)."""
        obj = self.objective
        for s in (obj.metric_strategies or []) if obj is not None else []:
            if s.name == name and s.value in ("min", "max", "latest"):
                return s.value  # type: ignore[return-value]
        if name not in self.metric_names():
            raise KeyError(name)
        return _default_strategy(obj.type if obj is not None else "")


class Experiment(_Base, frozen=True):
    """A Katib v1beta1 Experiment object."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: ExperimentSpec = msgspec.field(default_factory=ExperimentSpec)
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The experiment's name (``metadata.name``)."""
        return self.metadata.name


def _default_strategy(objective_type: str) -> Literal["min", "max", "latest"]:
    if objective_type == "minimize":
        return "min"
    if objective_type == "maximize":
        return "max"
    return "latest"


# ---------------------------------------------------------------- parsing


class _TextFloat(float):
    """A float that remembers how it was written, so ``0.010`` stays "0.010" where Katib wants a string."""

    text: str

    def __new__(cls, text: str) -> Self:
        obj = super().__new__(cls, float(text))
        obj.text = text
        return obj


class _Loader(yaml.SafeLoader):  # type: ignore[misc, unused-ignore]
    """A safe YAML loader that keeps float text and leaves timestamps as strings, as Kubernetes does."""


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    value = yaml.SafeLoader.construct_yaml_float(loader, node)  # type: ignore[arg-type, unused-ignore]
    text = str(node.value)  # type: ignore[attr-defined, unused-ignore]
    try:
        float(text)
    except ValueError:
        return float(value)  # .inf, .nan and sexagesimal forms have no Python spelling
    return _TextFloat(text)


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def _parse_documents(source: str | bytes, fmt: str | None) -> list[Any]:
    """Parse YAML or JSON text into builtins, one item per document."""
    text = source.decode("utf-8") if isinstance(source, bytes) else source
    if fmt is None:
        stripped = text.lstrip()
        fmt = "json" if stripped.startswith(("{", "[")) else "yaml"
    if fmt == "json":
        try:
            return [json.loads(text, parse_float=_TextFloat)]
        except json.JSONDecodeError as exc:
            msg = f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            raise SpecError([FieldError(path="", message=msg)]) from None
    if fmt != "yaml":
        raise ValueError(f"unknown format {fmt!r}: expected 'yaml' or 'json'")
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError([FieldError(path="", message=f"invalid YAML: {problem}{where}")]) from None


# Fields where Katib wants strings but people write YAML numbers.
_STRINGY: frozenset[tuple[type, str]] = frozenset(
    {
        (FeasibleSpace, "min"),
        (FeasibleSpace, "max"),
        (FeasibleSpace, "step"),
        (FeasibleSpace, "list_"),
        (AlgorithmSetting, "value"),
    }
)

_TYPE_NAMES = {
    mi.StrType: "string",
    mi.IntType: "integer",
    mi.FloatType: "number",
    mi.BoolType: "boolean",
    mi.ListType: "list",
    mi.DictType: "object",
    mi.StructType: "object",
}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _scalar_text(value: Any) -> str | None:
    """The string Katib would have seen for a YAML scalar written unquoted; None if it is not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _TextFloat):
        return value.text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    return None


def _plain(value: Any) -> Any:
    """Free-form content with YAML artefacts removed, so it survives a JSON round trip unchanged."""
    if isinstance(value, _TextFloat):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_MISSING = object()


def _check(value: Any, t: mi.Type, path: str, errors: list[FieldError], stringy: bool = False) -> Any:
    """Check ``value`` against type ``t`` and return a clean copy; problems are added to ``errors``."""
    if isinstance(t, mi.UnionType):
        if value is None and any(isinstance(x, mi.NoneType) for x in t.types):
            return None
        others = [x for x in t.types if not isinstance(x, mi.NoneType)]
        return _check(value, others[0], path, errors, stringy)
    if isinstance(t, mi.AnyType):
        return _plain(value)
    if isinstance(t, mi.StrType):
        if stringy:
            text = _scalar_text(value)
            if text is not None:
                return text
        if isinstance(value, str):
            return value
    elif isinstance(t, mi.IntType):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(t, mi.FloatType):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(t, mi.BoolType):
        if isinstance(value, bool):
            return value
    elif isinstance(t, mi.ListType):
        if isinstance(value, list):
            return [_check(v, t.item_type, f"{path}[{i}]", errors, stringy) for i, v in enumerate(value)]
    elif isinstance(t, mi.DictType):
        if isinstance(value, dict):
            return {
                str(k): _check(v, t.value_type, f"{path}.{k}" if path else str(k), errors)
                for k, v in value.items()
            }
    elif isinstance(t, mi.StructType):
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for f in t.fields:
                sub = f"{path}.{f.encode_name}" if path else f.encode_name
                raw = value.get(f.encode_name, _MISSING)
                if raw is _MISSING:
                    if f.required:
                        errors.append(FieldError(path=sub, message="required field is missing"))
                    continue
                out[f.encode_name] = _check(raw, f.type, sub, errors, (t.cls, f.name) in _STRINGY)
            return out
    else:  # pragma: no cover - every field type of the model is handled above
        raise TypeError(f"unsupported type {t!r}")
    want = _TYPE_NAMES.get(type(t), "value")
    if stringy and want == "string":
        want = "string or number"
    errors.append(FieldError(path=path, message=f"expected {want}, got {_json_kind(value)}"))
    return None


_EXPERIMENT_INFO = mi.type_info(Experiment)


def _decode_document(doc: Any, document: int | None) -> Experiment:
    errors: list[FieldError] = []
    if not isinstance(doc, dict):
        errors.append(FieldError(path="", message=f"expected an object, got {_json_kind(doc)}"))
    else:
        for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
            got = doc.get(key)
            if got is None:
                errors.append(FieldError(path=key, message="required field is missing"))
            elif got != want:
                errors.append(
                    FieldError(path=key, message=f'expected "{want}", got {json.dumps(_plain(got))}')
                )
        for key in ("metadata", "spec"):
            if doc.get(key) is None:
                errors.append(FieldError(path=key, message="required field is missing"))
    clean = _check(doc, _EXPERIMENT_INFO, "", errors) if isinstance(doc, dict) else None
    if errors:
        if document is not None:
            errors = [msgspec.structs.replace(e, document=document) for e in errors]
        raise SpecError(errors)
    return apply_defaults(msgspec.convert(clean, Experiment))


def load_experiment(
    source: str | bytes | dict[str, Any], *, fmt: Literal["yaml", "json"] | None = None
) -> Experiment:
    """Read one Experiment from YAML or JSON text (or already-parsed builtins) and apply Katib's defaults.

    Raises SpecError listing every structural problem: YAML/JSON syntax, wrong types, missing keys.
    """
    if isinstance(source, dict):
        return _decode_document(source, None)
    if not isinstance(source, str | bytes):
        raise SpecError([FieldError(path="", message=f"expected an Experiment object, got {_json_kind(source)}")])
    docs = [d for d in _parse_documents(source, fmt) if d is not None]
    if len(docs) != 1:
        msg = "no Experiment document found" if not docs else f"expected one document, found {len(docs)}"
        raise SpecError([FieldError(path="", message=msg)])
    return _decode_document(docs[0], None)


def load_experiments(source: str | bytes, *, fmt: Literal["yaml", "json"] | None = None) -> list[Experiment]:
    """Read every Experiment of a multi-document YAML stream; errors carry their document index (from 0)."""
    docs = [d for d in _parse_documents(source, fmt) if d is not None]
    out: list[Experiment] = []
    errors: list[FieldError] = []
    for i, doc in enumerate(docs):
        try:
            out.append(_decode_document(doc, i))
        except SpecError as exc:
            errors.extend(exc.errors)
    if errors:
        raise SpecError(errors)
    return out


# ---------------------------------------------------------------- defaults


def _job_kind(trial_spec: Mapping[str, Any] | None) -> str:
    if not isinstance(trial_spec, Mapping):
        return ""
    kind = trial_spec.get("kind")
    return kind if isinstance(kind, str) else ""


def _default_spec(spec: dict[str, Any]) -> None:
    """Katib's mutating-webhook defaults, applied in place to a camelCase spec dict."""
    spec.setdefault("parallelTrialCount", DEFAULT_PARALLEL_TRIAL_COUNT)
    if spec.get("algorithm") is None:
        # natib picks an algorithm for the space where Katib would reject the experiment.
        spec["algorithm"] = {"algorithmName": "auto"}
    if not spec.get("resumePolicy"):
        spec["resumePolicy"] = DEFAULT_RESUME_POLICY

    objective = spec.get("objective")
    if objective is not None:
        rule = _default_strategy(objective.get("type", ""))
        strategies = objective.setdefault("metricStrategies", [])
        have = {s.get("name") for s in strategies}
        names = [objective.get("objectiveMetricName", ""), *(objective.get("additionalMetricNames") or [])]
        for name in names:
            if name and name not in have:
                strategies.append({"name": name, "value": rule})
                have.add(name)
        if not strategies:
            del objective["metricStrategies"]

    for param in spec.get("parameters") or []:
        space = param.setdefault("feasibleSpace", {})
        if not space.get("distribution"):
            space["distribution"] = DEFAULT_DISTRIBUTION

    mc = spec.setdefault("metricsCollectorSpec", {})
    collector = mc.setdefault("collector", {})
    if not collector.get("kind"):
        collector["kind"] = DEFAULT_COLLECTOR_KIND
    kind = collector["kind"]
    if kind == "File":
        fsp = mc.setdefault("source", {}).setdefault(
            "fileSystemPath", {"kind": "File", "path": DEFAULT_FILE_PATH}
        )
        if not fsp.get("format"):
            fsp["format"] = "TEXT"
    elif kind == "TensorFlowEvent":
        mc.setdefault("source", {}).setdefault(
            "fileSystemPath", {"kind": "Directory", "path": DEFAULT_TFEVENT_DIR}
        )
    elif kind == "PrometheusMetric":
        http = mc.setdefault("source", {}).setdefault("httpGet", {})
        http.setdefault("path", DEFAULT_PROMETHEUS_PATH)
        http.setdefault("port", DEFAULT_PROMETHEUS_PORT)

    template = spec.get("trialTemplate")
    if template is not None:
        kind = _job_kind(template.get("trialSpec"))
        conditions: tuple[str, str] | None = None
        labels: dict[str, str] | None = None
        if kind == "Job" or kind == TRAINJOB_KIND:
            conditions = (JOB_SUCCESS_CONDITION, JOB_FAILURE_CONDITION)
            labels = dict(TRAINJOB_PRIMARY_POD_LABELS) if kind == TRAINJOB_KIND else None
        elif kind in KUBEFLOW_JOB_KINDS:
            conditions = (KUBEFLOW_JOB_SUCCESS_CONDITION, KUBEFLOW_JOB_FAILURE_CONDITION)
            labels = dict(KUBEFLOW_PRIMARY_POD_LABELS)
        if conditions is not None:
            if not template.get("successCondition"):
                template["successCondition"] = conditions[0]
            if not template.get("failureCondition"):
                template["failureCondition"] = conditions[1]
        if labels is not None and template.get("primaryPodLabels") is None:
            template["primaryPodLabels"] = labels


def apply_defaults(exp: Experiment) -> Experiment:
    """Return ``exp`` with Katib's defaults filled in; applying it twice changes nothing more."""
    data = to_builtins(exp)
    _default_spec(data.setdefault("spec", {}))
    return msgspec.convert(data, Experiment)


# ---------------------------------------------------------------- helpers


def _parameters(params: list[ParameterSpec], base: str) -> Iterator[Parameter]:
    for i, p in enumerate(params):
        try:
            yield parameter_from_katib(msgspec.to_builtins(p))
        except ValueError as exc:
            raise SpecError([FieldError(path=f"{base}[{i}].feasibleSpace", message=str(exc))]) from None


def search_space(spec: ExperimentSpec) -> SearchSpace:
    """The algorithms' view of ``spec.parameters``, bounds parsed as numbers (a step stays None when unset).

    Raises SpecError if a bound does not parse.
    """
    return SearchSpace(parameters=tuple(_parameters(list(spec.parameters or []), "spec.parameters")))


def to_builtins(exp: Experiment) -> dict[str, Any]:
    """The Experiment as plain dicts and lists in Katib's camelCase shape, defaults left out."""
    out: dict[str, Any] = msgspec.to_builtins(exp)
    # A Struct default is omitted, but Katib objects always name their type.
    out.setdefault("apiVersion", exp.api_version)
    out.setdefault("kind", exp.kind)
    return out


def dump_yaml(exp: Experiment) -> str:
    """The Experiment as Katib YAML."""
    return str(yaml.safe_dump(to_builtins(exp), sort_keys=False, allow_unicode=True))


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def path_sort_key(path: str) -> tuple[tuple[int, int], ...]:
    """A key that orders field paths as the fields appear in an Experiment document."""
    info: mi.Type | None = _EXPERIMENT_INFO
    key: list[tuple[int, int]] = []
    for m in _TOKEN.finditer(path):
        while isinstance(info, mi.UnionType | mi.ListType):
            info = (
                info.item_type
                if isinstance(info, mi.ListType)
                else next(x for x in info.types if not isinstance(x, mi.NoneType))
            )
        if m.group(2) is not None:
            key.append((0, int(m.group(2))))
            continue
        name = m.group(1)
        if isinstance(info, mi.StructType):
            for idx, f in enumerate(info.fields):
                if f.encode_name == name:
                    key.append((idx, 0))
                    info = f.type
                    break
            else:
                key.append((len(info.fields), 0))
                info = None
        else:
            key.append((0, 0))
            info = None
    return tuple(key)
