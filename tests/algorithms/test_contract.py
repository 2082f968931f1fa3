"""The contract every registered algorithm keeps: valid, deterministic suggestions that never touch their inputs."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest

from natib.algorithms.registry import KNOWN_ALGORITHMS, get_algorithm
from natib.algorithms.space import Assignment, Parameter, SearchSpace, Trial, TrialStatus

#: Algorithms whose output does not depend on the seed by design (a fixed enumeration order).
SEED_INDEPENDENT = {"grid"}

STEPPED = SearchSpace(
    (
        Parameter("lr", "double", 0.001, 0.1, step=0.001, distribution="logUniform"),
        Parameter("momentum", "double", 0.5, 0.99, step=0.05),
        Parameter("layers", "int", 1, 9, step=2),
        Parameter("units", "int", 16, 256, step=16, distribution="logUniform"),
        Parameter("optimizer", "categorical", values=("sgd", "adam", "ftrl")),
        Parameter("batch", "discrete", values=("16", "32", "64")),
    )
)

CONTINUOUS = SearchSpace(
    (
        Parameter("lr", "double", 1e-5, 1.0, distribution="logUniform"),
        Parameter("dropout", "double", 0.0, 0.5),
        Parameter("wd", "double", -1.0, 1.0, distribution="normal"),
        Parameter("scale", "double", 0.1, 10.0, distribution="logNormal"),
        Parameter("depth", "int", 2, 12, distribution="normal"),
        Parameter("width", "int", 8, 512, step=8, distribution="logNormal"),
        Parameter("act", "categorical", values=("relu", "tanh")),
    )
)

SPACES = {"stepped": STEPPED, "continuous": CONTINUOUS}


def _resource(space: SearchSpace) -> dict[str, str]:
    # The first int parameter is the resource, and its maximum the largest resource a trial gets.
    p = next(p for p in space.parameters if p.type == "int")
    return {"r_l": str(int(p.max or 1)), "resource_name": p.name}


#: Settings an algorithm cannot run without (Katib requires them too); every other algorithm gets none.
REQUIRED_SETTINGS: dict[str, Callable[[SearchSpace], dict[str, str]]] = {
    "hyperband": _resource,
    "successive-halving": _resource,
    "pbt": lambda space: {"suggestion_trial_dir": "/ckpt", "n_population": "5", "truncation_threshold": "0.2"},
}


def settings_for(alg: str, space: SearchSpace) -> dict[str, str]:
    """The least settings ``alg`` runs with on ``space``."""
    make = REQUIRED_SETTINGS.get(alg)
    return make(space) if make else {}


def _cases() -> list[tuple[str, str]]:
    return [(alg, space) for alg in KNOWN_ALGORITHMS for space in SPACES]


def _supported(alg: str, space_name: str) -> SearchSpace:
    space = SPACES[space_name]
    errors = get_algorithm(alg).validate(space, settings_for(alg, space), None)
    if errors:
        pytest.skip(f"{alg} does not support the {space_name} space: {errors}")
    return space


def check_assignment(space: SearchSpace, assignment: Assignment) -> None:
    """Fail unless ``assignment`` is a valid point of ``space``."""
    assert set(assignment) == set(space.names())
    for p in space.parameters:
        raw = assignment[p.name]
        assert isinstance(raw, str)
        if not p.is_numeric_range:
            assert raw in p.values
            continue
        assert p.min is not None and p.max is not None
        value = float(raw)
        assert p.min <= value <= p.max, (p.name, raw)
        if p.type == "int":
            assert raw.lstrip("-").isdigit(), (p.name, raw)
        if p.step is not None:
            k = (value - p.min) / p.step
            assert math.isclose(k, round(k), abs_tol=1e-6), (p.name, raw)
        if p.distribution in ("logUniform", "logNormal"):
            assert value > 0


def _history(space: SearchSpace, alg: str, statuses: list[TrialStatus]) -> list[Trial]:
    points = get_algorithm(alg).suggest(space, [], len(statuses), settings_for(alg, space), 99, "minimize").assignments
    return [
        Trial(f"t{i}", a, s, objective=float(i) if s == "succeeded" else None)
        for i, (a, s) in enumerate(zip(points, statuses, strict=False))
    ]


HISTORIES: dict[str, list[TrialStatus]] = {
    "empty": [],
    "all_failed": ["failed"] * 4,
    "all_pending": ["pending", "running", "pending"],
    "mixed": [
        "succeeded",
        "succeeded",
        "failed",
        "running",
        "early_stopped",
        "killed",
        "metrics_unavailable",
    ],
}


@pytest.mark.parametrize(("alg", "space_name"), _cases())
@pytest.mark.parametrize("history_name", list(HISTORIES))
def test_suggestions_are_valid(alg: str, space_name: str, history_name: str) -> None:
    space = _supported(alg, space_name)
    history = _history(space, alg, HISTORIES[history_name])
    result = get_algorithm(alg).suggest(space, history, 8, settings_for(alg, space), 7, "minimize")
    assert len(result.assignments) <= 8
    if not history:
        assert result.assignments
    for a in result.assignments:
        check_assignment(space, a)


@pytest.mark.parametrize(("alg", "space_name"), _cases())
def test_many_suggestions_stay_valid(alg: str, space_name: str) -> None:
    space = _supported(alg, space_name)
    result = get_algorithm(alg).suggest(space, [], 300, settings_for(alg, space), 3, "maximize")
    assert len(result.assignments) <= 300
    for a in result.assignments:
        check_assignment(space, a)


@pytest.mark.parametrize(("alg", "space_name"), _cases())
def test_deterministic(alg: str, space_name: str) -> None:
    space = _supported(alg, space_name)
    history = _history(space, alg, HISTORIES["mixed"])
    first = get_algorithm(alg).suggest(space, history, 5, settings_for(alg, space), 11, "minimize")
    second = get_algorithm(alg).suggest(space, history, 5, settings_for(alg, space), 11, "minimize")
    assert first == second


@pytest.mark.parametrize(("alg", "space_name"), _cases())
def test_seed_changes_output(alg: str, space_name: str) -> None:
    if alg in SEED_INDEPENDENT:
        pytest.skip(f"{alg} enumerates in a fixed order")
    space = _supported(alg, space_name)
    a = get_algorithm(alg).suggest(space, [], 5, settings_for(alg, space), 1, "minimize")
    b = get_algorithm(alg).suggest(space, [], 5, settings_for(alg, space), 2, "minimize")
    assert a.assignments != b.assignments


@pytest.mark.parametrize(("alg", "space_name"), _cases())
def test_inputs_not_mutated(alg: str, space_name: str) -> None:
    space = _supported(alg, space_name)
    history = _history(space, alg, HISTORIES["mixed"])
    settings = settings_for(alg, space)
    before = (copy.deepcopy(space), copy.deepcopy(history), copy.deepcopy(settings))
    get_algorithm(alg).suggest(space, history, 4, settings, 5, "minimize")
    get_algorithm(alg).validate(space, settings, 10)
    assert (space, history, settings) == before


@pytest.mark.parametrize(("alg", "space_name"), _cases())
def test_n_zero_returns_nothing(alg: str, space_name: str) -> None:
    space = _supported(alg, space_name)
    assert get_algorithm(alg).suggest(space, [], 0, settings_for(alg, space), 5, "minimize").assignments == []


@pytest.mark.parametrize(("alg", "space_name"), _cases())
@pytest.mark.parametrize("n", [1, 2, 7])
def test_at_most_n(alg: str, space_name: str, n: int) -> None:
    space = _supported(alg, space_name)
    result = get_algorithm(alg).suggest(space, [], n, settings_for(alg, space), 5, "minimize")
    assert len(result.assignments) <= n
    assert len(result.labels) in (0, len(result.assignments))


@pytest.mark.parametrize("alg", KNOWN_ALGORITHMS)
def test_valid_empty_settings(alg: str) -> None:
    assert get_algorithm(alg).validate(STEPPED, settings_for(alg, STEPPED), None) == []
    if alg in REQUIRED_SETTINGS:
        assert get_algorithm(alg).validate(STEPPED, {}, None)


@pytest.mark.parametrize("alg", KNOWN_ALGORITHMS)
def test_unknown_setting_rejected(alg: str) -> None:
    errors = get_algorithm(alg).validate(STEPPED, {**settings_for(alg, STEPPED), "no_such_setting": "1"}, None)
    assert any("no_such_setting" in e for e in errors)


@pytest.mark.parametrize("alg", KNOWN_ALGORITHMS)
def test_no_repeats_within_a_batch_on_a_finite_space(alg: str) -> None:
    space = SearchSpace((Parameter("a", "int", 0, 3), Parameter("b", "categorical", values=("x", "y"))))
    assignments = get_algorithm(alg).suggest(space, [], 8, settings_for(alg, space), 5, "minimize").assignments
    keys = [tuple(sorted(a.items())) for a in assignments]
    assert len(set(keys)) == len(keys)
