"""Sampling and step arithmetic shared by the algorithms: one value per parameter, finite value sets, sizes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from decimal import Decimal, localcontext
from statistics import NormalDist

import numpy as np

from natib.algorithms.space import Assignment, Parameter, SearchSpace

#: Relative tolerance under which (max - min) / step counts as a whole number, so max itself is a point.
STEP_TOLERANCE = 1e-9

_LOG_DISTRIBUTIONS = ("logUniform", "logNormal")

_STANDARD_NORMAL = NormalDist()


def _probit(u: float) -> float:
    # inv_cdf rejects exactly 0; the smallest positive float maps to about -38 sd, far past any clipping bound.
    return _STANDARD_NORMAL.inv_cdf(min(max(u, 5e-324), math.nextafter(1.0, 0.0)))


def _dec(x: float) -> Decimal:
    # repr is the shortest text that round-trips, so 0.1 becomes Decimal("0.1") rather than its binary expansion.
    return Decimal(repr(float(x)))


class NumericGrid:
    """The points min + k*step (k = 0..count-1) of a stepped double or an int parameter, in exact arithmetic."""

    def __init__(self, param: Parameter) -> None:
        if not param.is_numeric_range or param.min is None or param.max is None:
            raise ValueError(f"Param {param.name} has no numeric range")
        self.param = param
        self.is_int = param.type == "int"
        if self.is_int:
            self._ilo = math.ceil(param.min)
            self._ihi = math.floor(param.max)
            self._istep = max(1, round(param.step)) if param.step is not None else 1
            self.count = max(0, (self._ihi - self._ilo) // self._istep + 1)
            self._ends_at_max = False
            return
        if param.step is not None and not param.step > 0:
            raise ValueError(f"Param {param.name}: step must be greater than zero")
        if param.step is None:
            raise ValueError(
                f"Param {param.name} step is nil; For discrete search space, all parameters must include step"
            )
        self._lo, self._hi, self._step = _dec(param.min), _dec(param.max), _dec(param.step)
        with localcontext() as ctx:
            ctx.prec = 50
            span = (self._hi - self._lo) / self._step
        if span < 0:
            self.count = 0
            self._ends_at_max = False
            return
        nearest = int(span.to_integral_value())
        self._ends_at_max = abs(span - nearest) <= Decimal(repr(STEP_TOLERANCE)) * max(Decimal(1), span)
        last = nearest if self._ends_at_max else int(span)  # int() truncates, which is floor for span >= 0
        self.count = last + 1

    def value(self, k: int) -> float | int:
        """The k-th point; the last point is max itself when the steps reach it, and never beyond max."""
        if self.is_int:
            return self._ilo + k * self._istep
        if self._ends_at_max and k == self.count - 1:
            return float(self._hi)
        return min(float(self._lo + k * self._step), float(self._hi))

    def nearest_index(self, value: float) -> int:
        """The index of the grid point closest to ``value``, clamped to the grid."""
        if self.is_int:
            k = round((value - self._ilo) / self._istep)
        else:
            k = round((value - float(self._lo)) / float(self._step))
        return min(max(int(k), 0), self.count - 1)


def is_finite(param: Parameter) -> bool:
    """Whether the parameter takes finitely many values: int, double with a step, discrete, categorical."""
    return param.type != "double" or param.step is not None


def finite_size(param: Parameter) -> int | None:
    """How many values a finite parameter takes (without listing them), or None for a continuous one."""
    if not is_finite(param):
        return None
    if param.is_numeric_range:
        return NumericGrid(param).count
    return len(dict.fromkeys(param.values))


def finite_values(param: Parameter) -> tuple[str, ...] | None:
    """Every value of a finite parameter, formatted, in ascending or list order; None for a continuous one."""
    if not is_finite(param):
        return None
    if param.is_numeric_range:
        grid = NumericGrid(param)
        return tuple(dict.fromkeys(param.format(grid.value(k)) for k in range(grid.count)))
    # A list may repeat a value; the repeat is the same point, not a new one.
    return tuple(dict.fromkeys(param.values))


def space_size(space: SearchSpace) -> int | None:
    """The number of distinct points of a fully finite space, or None when any parameter is continuous."""
    total = 1
    for p in space.parameters:
        size = finite_size(p)
        if size is None:
            return None
        total *= size
    return total


def iter_points(space: SearchSpace) -> Iterator[tuple[str, ...]]:
    """Every point of a finite space as value tuples in spec order, the first parameter varying slowest."""
    lists: list[tuple[str, ...]] = []
    for p in space.parameters:
        values = finite_values(p)
        if values is None:
            raise ValueError(f"Param {p.name} is continuous; its values cannot be listed")
        lists.append(values)
    return itertools.product(*lists)


def space_errors(space: SearchSpace) -> list[str]:
    """Messages for parameters no sampler can draw from (bad bounds, step or list, log scale with min <= 0)."""
    errors: list[str] = []
    for p in space.parameters:
        if not p.is_numeric_range:
            if not p.values:
                errors.append(f"Param {p.name}: list must not be empty")
            continue
        if p.min is None or p.max is None:
            errors.append(f"Param {p.name}: min and max are required for parameterType {p.type}")
            continue
        if not (math.isfinite(p.min) and math.isfinite(p.max)):
            errors.append(f"Param {p.name}: min and max must be finite numbers")
            continue
        if p.min > p.max:
            errors.append(f"Param {p.name}: min {p.min} is greater than max {p.max}")
            continue
        if p.step is not None and not (math.isfinite(p.step) and p.step > 0):
            errors.append(f"Param {p.name}: step must be greater than zero")
            continue
        if p.type == "int" and p.step is not None and p.step != int(p.step):
            errors.append(f"Param {p.name}: step must be a whole number for parameterType int")
            continue
        if p.distribution in _LOG_DISTRIBUTIONS and p.min <= 0:
            errors.append(f"Param {p.name}: min must be greater than zero for distribution {p.distribution}")
            continue
        if p.type == "int" and math.ceil(p.min) > math.floor(p.max):
            errors.append(f"Param {p.name}: no integer lies between min {p.min} and max {p.max}")
    return errors


def _continuous_quantile(param: Parameter, u: float) -> float:
    """The value at probability ``u`` of the parameter's distribution over [min, max], normal tails clipped."""
    assert param.min is not None and param.max is not None
    lo, hi = float(param.min), float(param.max)
    dist = param.distribution
    if dist in _LOG_DISTRIBUTIONS:
        llo, lhi = math.log(lo), math.log(hi)
        if dist == "logUniform":
            x = math.exp(llo + u * (lhi - llo))
        else:
            x = math.exp((llo + lhi) / 2 + (lhi - llo) / 6 * _probit(u))
    elif dist == "normal":
        x = (lo + hi) / 2 + (hi - lo) / 6 * _probit(u)
    else:
        x = lo + u * (hi - lo)
    # Normal tails are unbounded and exp(log(hi)) can land one ulp above hi; values must stay in bounds.
    return min(max(x, lo), hi)


def from_unit(param: Parameter, u: float) -> str:
    """Map ``u`` in [0, 1) to a formatted value so that a uniform ``u`` follows the parameter's distribution.

    Stepped uniform parameters give every grid point equal weight; other stepped parameters snap the
    continuous value to the nearest point; lists pick by position.
    """
    u = min(max(float(u), 0.0), math.nextafter(1.0, 0.0))
    if not param.is_numeric_range:
        return param.values[min(int(u * len(param.values)), len(param.values) - 1)]
    if not is_finite(param):
        return param.format(_continuous_quantile(param, u))
    grid = NumericGrid(param)
    if grid.count <= 0:
        raise ValueError(f"Param {param.name} has no value between min and max")
    if param.distribution == "uniform":
        k = min(int(u * grid.count), grid.count - 1)
    else:
        k = grid.nearest_index(_continuous_quantile(param, u))
    return param.format(grid.value(k))


def sample_value(param: Parameter, rng: np.random.Generator) -> str:
    """Draw one formatted value of ``param`` from its distribution, inside its bounds and on its step."""
    if not param.is_numeric_range:
        return param.values[int(rng.integers(len(param.values)))]
    return from_unit(param, float(rng.random()))


def sample_assignment(space: SearchSpace, rng: np.random.Generator) -> Assignment:
    """Draw one value for every parameter, in spec order so a seed gives the same assignment every time."""
    return {p.name: sample_value(p, rng) for p in space.parameters}
