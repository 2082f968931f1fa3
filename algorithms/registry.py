"""Algorithm lookup by Katib name; a new algorithm is one import and one entry in ``_BUILTIN``."""

from __future__ import annotations

from typing import TypeVar

from natib.algorithms.base import Algorithm
from natib.algorithms.grid import GridSearch
from natib.algorithms.random import RandomSearch

_A = TypeVar("_A", bound=type[Algorithm])

_BUILTIN: tuple[type[Algorithm], ...] = (RandomSearch, GridSearch)

_ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in _BUILTIN}

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
