"""Sobol search: the sequence continues across requests, honours distributions, skips used points, exhausts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from natib.algorithms.sampling import from_unit
from natib.algorithms.sobol import SobolSearch, sobol_points
from natib.algorithms.space import Assignment, Parameter, SearchSpace, Trial, assignment_key

SQUARE = SearchSpace((Parameter("x", "double", 0.0, 1.0), Parameter("y", "double", 0.0, 1.0)))


def _trials(assignments: list[Assignment], status: str = "succeeded") -> list[Trial]:
    return [Trial(f"t{i}", a, status, objective=1.0) for i, a in enumerate(assignments)]  # type: ignore[arg-type]


def test_validate_settings() -> None:
    alg = SobolSearch()
    assert alg.validate(SQUARE, {}, None) == []
    assert alg.validate(SQUARE, {"random_state": "3"}, 10) == []
    assert alg.validate(SQUARE, {"random_state": "-1"}, None) == ["random_state should be great or equal than zero"]
    assert alg.validate(SQUARE, {"sigma": "1"}, None) == ["unknown setting sigma for algorithm sobol"]
    assert alg.validate(SQUARE, {"random_state": "x"}, None)[0].startswith("failed to validate random_state(x)")


def test_kth_suggestion_is_kth_sequence_point() -> None:
    history = _trials(SobolSearch().suggest(SQUARE, [], 5, {}, 42, "minimize").assignments)
    got = SobolSearch().suggest(SQUARE, history, 3, {}, 42, "minimize").assignments
    expected = sobol_points(2, 42, 5, 3)
    for a, row in zip(got, expected, strict=True):
        assert a == {"x": from_unit(SQUARE.parameters[0], row[0]), "y": from_unit(SQUARE.parameters[1], row[1])}


def test_sequence_continues_across_requests_whatever_the_batching() -> None:
    alg = SobolSearch()
    at_once = alg.suggest(SQUARE, [], 12, {}, 7, "minimize").assignments
    history: list[Trial] = []
    for n in (1, 4, 2, 5):
        history += _trials(alg.suggest(SQUARE, history, n, {}, 7, "minimize").assignments, "running")
    assert [t.assignment for t in history] == at_once


def test_points_fill_the_square_evenly() -> None:
    # The first 64 points of a scrambled 2-D Sobol sequence put exactly one point in each 1/8 x 1/8 cell.
    points = SobolSearch().suggest(SQUARE, [], 64, {}, 3, "minimize").assignments
    cells = {(int(float(a["x"]) * 8), int(float(a["y"]) * 8)) for a in points}
    assert len(cells) == 64


def test_seed_and_random_state() -> None:
    alg = SobolSearch()
    a = alg.suggest(SQUARE, [], 4, {}, 1, "minimize").assignments
    assert a == alg.suggest(SQUARE, [], 4, {}, 1, "minimize").assignments
    assert a != alg.suggest(SQUARE, [], 4, {}, 2, "minimize").assignments
    pinned = alg.suggest(SQUARE, [], 4, {"random_state": "9"}, 1, "minimize").assignments
    assert pinned == alg.suggest(SQUARE, [], 4, {"random_state": "9"}, 2, "minimize").assignments
    assert pinned == alg.suggest(SQUARE, [], 4, {}, 9, "minimize").assignments


def test_log_uniform_is_even_per_decade() -> None:
    space = SearchSpace((Parameter("lr", "double", 1e-4, 1.0, distribution="logUniform"),))
    points = SobolSearch().suggest(space, [], 256, {}, 5, "minimize").assignments
    decades = np.histogram([math.log10(float(a["lr"])) for a in points], bins=[-4, -3, -2, -1, 0])[0]
    assert list(decades) == [64, 64, 64, 64]


def test_finite_space_is_covered_without_repeats_then_exhausted() -> None:
    space = SearchSpace(
        (Parameter("a", "int", 0, 3), Parameter("b", "categorical", values=("x", "y")))
    )
    alg = SobolSearch()
    history: list[Trial] = []
    for _ in range(5):
        result = alg.suggest(space, history, 3, {}, 11, "minimize")
        history += _trials(result.assignments)
        if result.exhausted:
            break
    keys = [assignment_key(space, t.assignment) for t in history]
    assert len(keys) == len(set(keys)) == 8
    assert result.exhausted
    again = alg.suggest(space, history, 3, {}, 11, "minimize")
    assert again.assignments == [] and again.exhausted


def test_stepped_and_list_values_are_valid() -> None:
    space = SearchSpace(
        (
            Parameter("m", "double", 0.5, 0.99, step=0.05),
            Parameter("u", "int", 16, 256, step=16, distribution="logUniform"),
            Parameter("opt", "discrete", values=("16", "32", "64")),
        )
    )
    for a in SobolSearch().suggest(space, [], 40, {}, 2, "minimize").assignments:
        m = float(a["m"])
        assert 0.5 <= m <= 0.99 and math.isclose((m - 0.5) / 0.05, round((m - 0.5) / 0.05), abs_tol=1e-9)
        assert int(a["u"]) % 16 == 0 and 16 <= int(a["u"]) <= 256
        assert a["opt"] in ("16", "32", "64")


def test_bad_random_state_raises() -> None:
    with pytest.raises(ValueError, match="great or equal"):
        SobolSearch().suggest(SQUARE, [], 1, {"random_state": "-2"}, 0, "minimize")


def test_a_continuous_point_already_in_history_is_skipped() -> None:
    # A history that already holds the next sequence point (a trial was deleted, then the count came round).
    alg = SobolSearch()
    history = _trials(alg.suggest(SQUARE, [], 4, {}, 0, "minimize").assignments)
    nxt = alg.suggest(SQUARE, history, 1, {}, 0, "minimize").assignments
    replaced = [*history[:3], *_trials(nxt)]
    assert alg.suggest(SQUARE, replaced, 1, {}, 0, "minimize").assignments == (
        alg.suggest(SQUARE, [*history, *_trials(nxt)], 1, {}, 0, "minimize").assignments
    )
