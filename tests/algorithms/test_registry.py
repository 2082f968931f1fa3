"""Algorithm lookup by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import pytest

from natib.algorithms import registry
from natib.algorithms.grid import GridSearch
from natib.algorithms.random import RandomSearch
from natib.algorithms.registry import KNOWN_ALGORITHMS, UnknownAlgorithm, get_algorithm, register
from natib.algorithms.space import ObjectiveType, SearchSpace, SuggestResult, Trial


class _Dummy:
    name: ClassVar[str] = "dummy"

    def validate(
        self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None
    ) -> list[str]:
        return []

    def suggest(
        self,
        space: SearchSpace,
        history: Sequence[Trial],
        n: int,
        settings: Mapping[str, str],
        seed: int,
        objective: ObjectiveType,
    ) -> SuggestResult:
        return SuggestResult(assignments=[])


def test_known_algorithms() -> None:
    assert KNOWN_ALGORITHMS[:2] == ("random", "grid")
    assert set(KNOWN_ALGORITHMS) <= set(registry._BUILTIN)
    assert isinstance(get_algorithm("random"), RandomSearch)
    assert isinstance(get_algorithm("grid"), GridSearch)
    assert all(get_algorithm(name).name == name for name in KNOWN_ALGORITHMS)


def test_unknown_algorithm() -> None:
    with pytest.raises(UnknownAlgorithm) as info:
        get_algorithm("tpe-ish")
    assert isinstance(info.value, KeyError)
    assert info.value.name == "tpe-ish"
    assert str(info.value) == (
        "unable to get Suggestion config data for algorithm tpe-ish: natib has no algorithm called 'tpe-ish'"
    )


def test_register_plugs_in_and_refuses_a_taken_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_ALGORITHMS", dict(registry._ALGORITHMS))
    assert register(_Dummy) is _Dummy
    assert isinstance(get_algorithm("dummy"), _Dummy)
    assert "dummy" in registry.algorithm_names()
    register(_Dummy)  # registering the same class again is harmless

    class _Impostor(_Dummy):
        name: ClassVar[str] = "random"

    with pytest.raises(ValueError, match="already registered"):
        register(_Impostor)
