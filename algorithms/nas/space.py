"""The NAS search space (Katib's ``spec.nasConfig``): graph skeleton, operations, and their checks.

``nas_config_errors`` reports every problem of a nasConfig with the messages Katib's NAS suggestion services
use; :class:`NasSpace` is the checked config, and :meth:`NasSpace.expanded` numbers every combination of
an operation's parameter values the way Katib's ENAS does (operation by operation, the last parameter
changing fastest), which is what the ``architecture`` ids refer to.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from natib.algorithms.space import ObjectiveType, SuggestResult, Trial

#: Operation types that take no parameters (DARTS' identity edge).
PARAMETERLESS_OPERATIONS = ("skip_connection",)


@dataclass(frozen=True)
class NasOperation:
    """One concrete operation: an id, its type and one value per parameter (Katib's ``opt_*`` fields)."""

    opt_id: int
    opt_type: str
    opt_params: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The embedding entry Katib's ENAS puts in ``nn_config``."""
        return {"opt_id": self.opt_id, "opt_type": self.opt_type, "opt_params": dict(self.opt_params)}


@dataclass(frozen=True)
class NasSpace:
    """A checked nasConfig: ``operations`` keep their Katib shape (plain dicts in camelCase)."""

    num_layers: int
    input_sizes: tuple[int, ...]
    output_sizes: tuple[int, ...]
    operations: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_katib(cls, nas_config: Mapping[str, Any]) -> NasSpace:
        """The space of a nasConfig as plain dicts (YAML or JSON shape); raises ValueError if it is invalid."""
        errors = nas_config_errors(nas_config, require_sizes=False)
        if errors:
            path, message = errors[0]
            raise ValueError(f"{path}: {message}")
        graph = nas_config.get("graphConfig") or {}
        return cls(
            num_layers=int(graph.get("numLayers") or 0),
            input_sizes=tuple(int(v) for v in graph.get("inputSizes") or ()),
            output_sizes=tuple(int(v) for v in graph.get("outputSizes") or ()),
            operations=tuple(nas_config.get("operations") or ()),
        )

    def expanded(self) -> list[NasOperation]:
        """Every (operation type, parameter values) combination, numbered from 0 in Katib's order."""
        out: list[NasOperation] = []
        for op in self.operations:
            params = list(op.get("parameters") or [])
            names = [str(p.get("name")) for p in params]
            choices = [_values(p) for p in params]
            for combo in itertools.product(*choices):
                out.append(NasOperation(len(out), str(op.get("operationType")), dict(zip(names, combo, strict=True))))
        return out


def _values(param: Mapping[str, Any]) -> list[Any]:
    """One parameter's feasible values: the list as strings, an int range, or a stepped double range."""
    fs = param.get("feasibleSpace") or {}
    kind = param.get("parameterType")
    if kind in ("categorical", "discrete"):
        return [str(v) for v in fs.get("list") or []]
    low, high = float(fs.get("min") or 0), float(fs.get("max") or 0)
    if kind == "int":
        int_step = int(float(fs.get("step") or 1))
        return list(range(int(low), int(high) + 1, int_step))
    step = float(fs["step"])
    count = math.floor((high - low) / step + 1e-9) + 1
    return [low + i * step for i in range(max(count, 0))]


def _number(text: Any) -> float | None:
    try:
        value = float(str(text))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def nas_config_errors(nas_config: Mapping[str, Any], *, require_sizes: bool = True,
                      base: str = "spec.nasConfig") -> list[tuple[str, str]]:
    """Every problem of a nasConfig as (field path, message), with Katib's messages where Katib has one.

    ``require_sizes`` asks for ``inputSizes`` and ``outputSizes`` (ENAS needs them, DARTS does not).
    """
    errors: list[tuple[str, str]] = []
    graph = nas_config.get("graphConfig") or {}
    gpath = f"{base}.graphConfig"
    for key, label in (("inputSizes", "InputSizes"), ("outputSizes", "OutputSizes")):
        sizes = graph.get(key)
        if not sizes:
            if require_sizes:
                errors.append((f"{gpath}.{key}", f"Missing {label} in GraphConfig"))
            continue
        for i, size in enumerate(sizes):
            if not isinstance(size, int) or size < 1:
                errors.append((f"{gpath}.{key}[{i}]", f"{key} must hold positive integers, got {size!r}"))
    layers = graph.get("numLayers")
    if not layers:
        errors.append((f"{gpath}.numLayers", "Missing NumLayers in GraphConfig"))
    elif not isinstance(layers, int) or layers < 1:
        errors.append((f"{gpath}.numLayers", f"numLayers must be greater than 0, got {layers!r}"))
    operations = nas_config.get("operations") or []
    if not operations:
        errors.append((f"{base}.operations", "must be specified: at least one operation to choose from"))
    for i, op in enumerate(operations):
        errors += _operation_errors(op, f"{base}.operations[{i}]")
    return errors


def _operation_errors(op: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    kind = op.get("operationType")
    if not kind:
        errors.append((f"{path}.operationType", "Missing operationType in Operation"))
    params = op.get("parameters") or []
    if not params:
        if kind not in PARAMETERLESS_OPERATIONS:
            errors.append((f"{path}.parameters", "Missing ParameterConfigs in Operation"))
        return errors
    for j, p in enumerate(params):
        ppath = f"{path}.parameters[{j}]"
        if not p.get("name"):
            errors.append((f"{ppath}.name", "Missing Name in ParameterConfig"))
        ptype = p.get("parameterType")
        fs = p.get("feasibleSpace") or {}
        if not ptype:
            errors.append((f"{ppath}.parameterType", "Missing ParameterType in ParameterConfig"))
        elif ptype in ("categorical", "discrete"):
            if not fs.get("list"):
                errors.append((f"{ppath}.feasibleSpace.list", "Missing List in ParameterConfig.feasibleSpace"))
        elif ptype in ("int", "double"):
            errors += _range_errors(ptype, fs, f"{ppath}.feasibleSpace")
        else:
            errors.append((f"{ppath}.parameterType", f"parameterType: {ptype} is not supported"))
    return errors


def _range_errors(ptype: str, fs: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    if not fs.get("min") and not fs.get("max"):
        return [(path, "Missing Max and Min in ParameterConfig.feasibleSpace")]
    errors: list[tuple[str, str]] = []
    bounds: dict[str, float | None] = {}
    for key in ("min", "max"):
        bounds[key] = _number(fs.get(key))
        if bounds[key] is None or (ptype == "int" and not float(bounds[key] or 0).is_integer()):
            kind = "an integer" if ptype == "int" else "a number"
            errors.append((f"{path}.{key}", f"feasibleSpace.{key} must be {kind}, got {fs.get(key)!r}"))
    step_text = fs.get("step")
    step = _number(step_text) if step_text else None
    if ptype == "double" and (step is None or step <= 0):
        errors.append((f"{path}.step", "Step parameter should be > 0 in ParameterConfig.feasibleSpace"))
    elif ptype == "int" and step_text and (step is None or step < 1 or not step.is_integer()):
        errors.append((f"{path}.step", f"feasibleSpace.step must be an integer >= 1, got {step_text!r}"))
    low, high = bounds["min"], bounds["max"]
    if not errors and low is not None and high is not None and low > high:
        errors.append((f"{path}.max", f"feasibleSpace.max ({fs.get('max')}) is less than feasibleSpace.min "
                                      f"({fs.get('min')})"))
    return errors


class NasAlgorithm(Protocol):
    """A NAS algorithm: pure like every algorithm, but it searches a :class:`NasSpace`."""

    name: ClassVar[str]

    def validate(self, nas_config: Mapping[str, Any], settings: Mapping[str, str]) -> list[tuple[str, str]]:
        """Every problem of the nasConfig (plain dicts) and settings, as (field path, message)."""
        ...

    def suggest(self, space: NasSpace, history: Sequence[Trial], n: int, settings: Mapping[str, str],
                seed: int, objective: ObjectiveType) -> SuggestResult:
        """Up to ``n`` new assignments given every trial so far."""
        ...
