"""Grid search: construction per parameter type, order, skipping tried points, exhaustion and validation."""

from __future__ import annotations

import pytest

from natib.algorithms.grid import GridSearch
from natib.algorithms.space import Parameter, SearchSpace, Trial

SPACE = SearchSpace(
    (
        Parameter("a", "int", 1, 2),
        Parameter("b", "categorical", values=("x", "y")),
        Parameter("c", "double", 0.5, 1.0, step=0.5),
    )
)


def _points(space: SearchSpace) -> list[tuple[str, ...]]:
    result = GridSearch().suggest(space, [], 10_000, {}, 0, "minimize")
    assert result.exhausted
    return [tuple(a[n] for n in space.names()) for a in result.assignments]


def test_cartesian_order_first_parameter_slowest() -> None:
    assert _points(SPACE) == [
        ("1", "x", "0.5"),
        ("1", "x", "1.0"),
        ("1", "y", "0.5"),
        ("1", "y", "1.0"),
        ("2", "x", "0.5"),
        ("2", "x", "1.0"),
        ("2", "y", "0.5"),
        ("2", "y", "1.0"),
    ]


def test_int_range_with_step() -> None:
    space = SearchSpace((Parameter("n", "int", 1, 10, step=3),))
    assert _points(space) == [("1",), ("4",), ("7",), ("10",)]


def test_double_grid_includes_max_within_tolerance() -> None:
    space = SearchSpace((Parameter("x", "double", 0.0, 1.0, step=0.1),))
    values = [p[0] for p in _points(space)]
    assert values == ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"]
    near = SearchSpace((Parameter("x", "double", 0.0, 1.0 + 1e-12, step=0.5),))
    assert [p[0] for p in _points(near)] == ["0.0", "0.5", repr(1.0 + 1e-12)]


def test_double_grid_never_passes_max() -> None:
    space = SearchSpace((Parameter("x", "double", 0.0, 1.0, step=0.3),))
    assert [p[0] for p in _points(space)] == ["0.0", "0.3", "0.6", "0.9"]


def test_discrete_list_is_taken_as_is() -> None:
    space = SearchSpace((Parameter("d", "discrete", values=("16", "32", "64")),))
    assert _points(space) == [("16",), ("32",), ("64",)]


def test_skips_points_in_history_whatever_their_status() -> None:
    history = [
        Trial("t0", {"a": "1", "b": "x", "c": "0.5"}, "failed"),
        Trial("t1", {"a": "1.0", "b": "x", "c": "1"}, "running"),  # same point as grid's ("1", "x", "1.0")
        Trial("t2", {"a": "2", "b": "y", "c": "0.5"}, "succeeded", 0.3),
    ]
    result = GridSearch().suggest(SPACE, history, 3, {}, 0, "minimize")
    assert [tuple(a.values()) for a in result.assignments] == [
        ("1", "y", "0.5"),
        ("1", "y", "1.0"),
        ("2", "x", "0.5"),
    ]
    assert not result.exhausted


def test_exhausted_when_the_batch_takes_the_last_points() -> None:
    alg = GridSearch()
    assert not alg.suggest(SPACE, [], 7, {}, 0, "minimize").exhausted
    full = alg.suggest(SPACE, [], 8, {}, 0, "minimize")
    assert len(full.assignments) == 8 and full.exhausted
    history = [Trial(f"t{i}", a, "succeeded", 1.0) for i, a in enumerate(full.assignments)]
    done = alg.suggest(SPACE, history, 4, {}, 0, "minimize")
    assert done.assignments == [] and done.exhausted


def test_suggest_without_step_raises() -> None:
    space = SearchSpace((Parameter("lr", "double", 0.0, 1.0),))
    with pytest.raises(ValueError, match="Param lr step is nil"):
        GridSearch().suggest(space, [], 1, {}, 0, "minimize")


def test_validate_messages() -> None:
    alg = GridSearch()
    assert alg.validate(SPACE, {"random_state": "1"}, 8) == []
    assert alg.validate(SPACE, {}, None) == []
    assert alg.validate(SPACE, {}, 9) == ["Max Trial Count: 9 > all possible search combinations: 8"]
    assert alg.validate(SPACE, {"seed": "1"}, None) == ["unknown setting seed for algorithm grid"]
    assert alg.validate(SPACE, {"random_state": "-2"}, None) == [
        "random_state should be great or equal than zero"
    ]
    no_step = SearchSpace((Parameter("lr", "double", 0.0, 1.0), Parameter("n", "int", 1, 3)))
    assert alg.validate(no_step, {}, 5) == [
        "Param lr step is nil; For discrete search space, all parameters must include step"
    ]


def test_validate_refuses_huge_grids() -> None:
    space = SearchSpace((Parameter("a", "int", 1, 10_000), Parameter("b", "int", 1, 10_000)))
    errors = GridSearch().validate(space, {}, None)
    assert len(errors) == 1 and "100000000 combinations" in errors[0] and "10000000" in errors[0]


def test_duplicate_list_values_are_one_point() -> None:
    space = SearchSpace((Parameter("c", "categorical", values=("a", "b", "a")),))
    assert _points(space) == [("a",), ("b",)]
    assert GridSearch().validate(space, {}, 3) == ["Max Trial Count: 3 > all possible search combinations: 2"]
