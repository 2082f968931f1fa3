"""Algorithm lookup by Katib name; a new built-in algorithm is one entry in ``_BUILTIN``."""

from __future__ import annotations

import importlib
from typing import TypeVar

from natib.algorithms.base import Algorithm

_A = TypeVar("_A", bound=type[Algorithm])

#: Katib algorithm name -> "module:Class" of its implementation, in the order names are listed.
_BUILTIN: dict[str, str] = {
    "random": "natib.algorithms.random:RandomSearch",
    "grid": "natib.algorithms.grid:GridSearch",
    "sobol": "natib.algorithms.sobol:SobolSearch",
    "tpe": "natib.algorithms.tpe:TPE",
    "multivariate-tpe": "natib.algorithms.tpe:MultivariateTPE",
    "bayesianoptimization": "natib.algorithms.gp:BayesianOptimization",
    "cmaes": "natib.algorithms.cmaes:CMAES",
    "hyperband": "natib.algorithms.hyperband:Hyperband",
    "successive-halving": "natib.algorithms.hyperband:SuccessiveHalving",
    "pbt": "natib.algorithms.pbt:PBT",
    "auto": "natib.algorithms.auto:AutoSearch",
}


def _load_builtin() -> dict[str, type[Algorithm]]:
    """Import every built-in algorithm whose module is installed (a missing module is simply not offered)."""
    out: dict[str, type[Algorithm]] = {}
    for name, target in _BUILTIN.items():
        module_name, _, cls_name = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        out[name] = getattr(module, cls_name)
    return out


_ALGORITHMS: dict[str, type[Algorithm]] = _load_builtin()

#: Names of the algorithms natib ships, in registration order.
KNOWN_ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHMS)


class UnknownAlgorithm(KeyError):
    """Raised for an algorithm name natib does not implement."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return (
            f"unable to get Suggestion config data for algorithm {self.name}: "
            f"natib has no algorithm called '{self.name}'"
        )


def register(cls: _A) -> _A:
    """Add an algorithm class under its ``name`` (usable as a decorator); a name can be taken only once."""
    if cls.name in _ALGORITHMS and _ALGORITHMS[cls.name] is not cls:
        raise ValueError(f"algorithm {cls.name} is already registered")
    _ALGORITHMS[cls.name] = cls
    return cls


def algorithm_names() -> tuple[str, ...]:
    """Every registered name, built-in and added through ``register``."""
    return tuple(_ALGORITHMS)


def get_algorithm(name: str) -> Algorithm:
    """A fresh instance of the algorithm called ``name``; algorithms are stateless, so instances are cheap."""
    try:
        cls = _ALGORITHMS[name]
    except KeyError:
        raise UnknownAlgorithm(name) from None
    return cls()
