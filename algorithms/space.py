"""The search space and trial history that every algorithm works on, independent of Katib's YAML model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

ParameterType = Literal["double", "int", "discrete", "categorical"]
Distribution = Literal["uniform", "logUniform", "normal", "logNormal"]
TrialStatus = Literal[
    "pending", "running", "succeeded", "failed", "killed", "early_stopped", "metrics_unavailable"
]
ObjectiveType = Literal["minimize", "maximize"]

#: A trial's parameter values, by parameter name, as the strings Katib passes to trials.
Assignment = dict[str, str]


@dataclass(frozen=True)
class Parameter:
    """One searchable parameter; bounds are numbers, list values keep their spec text."""

    name: str
    type: ParameterType
    min: float | None = None
    max: float | None = None
    step: float | None = None
    values: tuple[str, ...] = ()
    distribution: Distribution = "uniform"

    @property
    def is_numeric_range(self) -> bool:
        """True for double and int parameters, which have bounds instead of a list."""
        return self.type in ("double", "int")

    def format(self, value: float | str) -> str:
        """Render a value the way it is handed to a trial: ints without a point, doubles shortest-exact."""
        if self.type == "int":
            return str(round(float(value)))
        if self.type == "double":
            v = float(value)
            if v == 0.0:
                return "0.0"
            return repr(v)
        return str(value)


def _katib_number(text: object, what: str, integer: bool) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(str(text))
    except ValueError:
        raise ValueError(f"{what}: {text} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: {text} is not a finite number")
    if integer and not value.is_integer():
        raise ValueError(f"{what}: {text} is not an integer")
    return value


def parameter_from_katib(spec: Mapping[str, object]) -> Parameter:
    """A Parameter from one Katib ``parameters`` entry (``name``, ``parameterType``, ``feasibleSpace``).

    Raises ValueError naming the field when a bound does not parse as a number of the parameter's type.
    """
    fs = spec.get("feasibleSpace") or {}
    if not isinstance(fs, Mapping):
        raise ValueError("feasibleSpace: must be a mapping")
    kind = str(spec.get("parameterType", ""))
    if kind not in ("double", "int", "discrete", "categorical"):
        raise ValueError(f"parameterType: {kind} is not supported")
    integer = kind == "int"
    values = fs.get("list") or ()
    return Parameter(
        name=str(spec.get("name", "")),
        type=kind,  # type: ignore[arg-type]
        min=_katib_number(fs.get("min"), "feasibleSpace.min", integer),
        max=_katib_number(fs.get("max"), "feasibleSpace.max", integer),
        step=_katib_number(fs.get("step"), "feasibleSpace.step", integer),
        values=tuple(str(v) for v in values),  # type: ignore[union-attr]
        distribution=str(fs.get("distribution") or "uniform"),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class SearchSpace:
    """An ordered collection of parameters."""

    parameters: tuple[Parameter, ...]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.parameters)

    def __len__(self) -> int:
        return len(self.parameters)

    def names(self) -> list[str]:
        """Parameter names in spec order."""
        return [p.name for p in self.parameters]

    @classmethod
    def from_katib(cls, parameters: Sequence[Mapping[str, object]]) -> SearchSpace:
        """A space from Katib's ``spec.parameters`` list (as plain dicts, the way YAML or JSON gives it)."""
        return cls(tuple(parameter_from_katib(p) for p in parameters))

    def get(self, name: str) -> Parameter:
        """The parameter called ``name`` (KeyError if absent)."""
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass(frozen=True)
class Trial:
    """What an algorithm may know about one trial: its assignment, state and objective value.

    ``objective`` is the value of the objective metric under its metric strategy, always in the
    experiment's own direction (not negated); None while unknown or unavailable.
    """

    name: str
    assignment: Mapping[str, str]
    status: TrialStatus
    objective: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_active(self) -> bool:
        """Pending or running: its result is still to come."""
        return self.status in ("pending", "running")

    @property
    def has_result(self) -> bool:
        """Completed with an objective value an algorithm can learn from."""
        return self.status in ("succeeded", "early_stopped") and self.objective is not None and math.isfinite(
            self.objective
        )


@dataclass(frozen=True)
class SuggestResult:
    """What ``suggest`` returns: up to n assignments, and whether the search has nothing more to give.

    ``exhausted`` means no later call will return anything new (a finished grid); fewer assignments
    than requested with ``exhausted=False`` means "not now, ask again later" (a rung waiting for results).
    """

    assignments: list[Assignment]
    exhausted: bool = False
    labels: list[dict[str, str]] = field(default_factory=list)


def assignment_key(space: SearchSpace, assignment: Mapping[str, str]) -> tuple[str, ...]:
    """A canonical, hashable key of an assignment, so equal points compare equal however they were written."""
    key: list[str] = []
    for p in space.parameters:
        raw = assignment.get(p.name, "")
        if p.is_numeric_range:
            try:
                key.append(p.format(float(raw)))
            except ValueError:
                key.append(raw)
        else:
            key.append(raw)
    return tuple(key)


def completed_objectives(history: Sequence[Trial]) -> list[float]:
    """The objective values of trials that finished with a usable result."""
    return [t.objective for t in history if t.has_result and t.objective is not None]
