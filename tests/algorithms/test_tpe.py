"""TPE and multivariate TPE: settings, determinism, the constant liar, quality against random search, speed."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import pytest

from natib.algorithms.random import RandomSearch
from natib.algorithms.registry import get_algorithm
from natib.algorithms.space import Assignment, Parameter, SearchSpace, Trial, assignment_key
from natib.algorithms.tpe import TPE, MultivariateTPE
from tests.algorithms.test_contract import CONTINUOUS, STEPPED, check_assignment

BOTH = ("tpe", "multivariate-tpe")

BOWL = SearchSpace(tuple(Parameter(f"x{i}", "double", -5.0, 5.0) for i in range(3)))
LOG = SearchSpace(
    (Parameter("lr", "double", 1e-6, 1.0, distribution="logUniform"), Parameter("d", "double", 0.0, 1.0))
)


def bowl(a: Assignment) -> float:
    return sum((float(a[f"x{i}"]) - 1.0) ** 2 for i in range(3))


def log_valley(a: Assignment) -> float:
    return (math.log10(float(a["lr"])) + 4.3) ** 2 + (float(a["d"]) - 0.3) ** 2


def _random_history(space: SearchSpace, f: Callable[[Assignment], float], n: int, seed: int = 0) -> list[Trial]:
    points = RandomSearch().suggest(space, [], n, {}, seed, "minimize").assignments
    return [Trial(f"t{i}", a, "succeeded", objective=f(a)) for i, a in enumerate(points)]


# --- settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"gamma": "0"}, "gamma should be in the range of (0, 1)"),
        ({"gamma": "1"}, "gamma should be in the range of (0, 1)"),
        ({"prior_weight": "0"}, "prior_weight should be great than zero"),
        ({"n_EI_candidates": "0"}, "n_EI_candidates should be great than zero"),
        ({"random_state": "-1"}, "random_state should be great or equal than zero"),
        ({"n_startup_trials": "-1"}, "n_startup_trials should be great or equal than zero"),
        ({"n_ei_candidates": "5"}, "unknown setting n_ei_candidates for algorithm tpe"),
    ],
)
def test_tpe_setting_messages(settings: dict[str, str], message: str) -> None:
    assert TPE().validate(BOWL, settings, None) == [message]


@pytest.mark.parametrize("name", ["n_startup_trials", "n_ei_candidates", "random_state"])
def test_multivariate_setting_messages(name: str) -> None:
    assert MultivariateTPE().validate(BOWL, {name: "-1"}, None) == [f"{name} should be greate or equal than zero"]
    assert MultivariateTPE().validate(BOWL, {name: "0"}, None) == []


def test_unparsable_settings_and_unknown_names() -> None:
    assert TPE().validate(BOWL, {"gamma": "high"}, None)[0].startswith("failed to validate gamma(high)")
    assert TPE().validate(BOWL, {"n_EI_candidates": "2.5"}, None)[0].startswith("failed to validate n_EI_candidates")
    assert MultivariateTPE().validate(BOWL, {"gamma": "0.2"}, None) == [
        "unknown setting gamma for algorithm multivariate-tpe"
    ]
    good = {"gamma": "0.1", "prior_weight": "2", "n_EI_candidates": "50", "random_state": "3", "n_startup_trials": "0"}
    assert TPE().validate(BOWL, good, 100) == []


@pytest.mark.parametrize("alg", BOTH)
def test_bad_settings_raise_at_suggest(alg: str) -> None:
    with pytest.raises(ValueError):
        get_algorithm(alg).suggest(BOWL, [], 1, {"random_state": "-5"}, 0, "minimize")


# --- behaviour -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", BOTH)
def test_random_until_enough_results(alg: str) -> None:
    history = _random_history(BOWL, bowl, 5)
    got = get_algorithm(alg).suggest(BOWL, history, 3, {}, 4, "minimize").assignments
    assert got == RandomSearch().suggest(BOWL, history, 3, {}, 4, "minimize").assignments
    model = get_algorithm(alg).suggest(BOWL, history, 3, {"n_startup_trials": "2"}, 4, "minimize").assignments
    assert model != got


@pytest.mark.parametrize("alg", BOTH)
@pytest.mark.parametrize("space", [STEPPED, CONTINUOUS], ids=["stepped", "continuous"])
def test_model_suggestions_are_valid_and_deterministic(alg: str, space: SearchSpace) -> None:
    rng = np.random.default_rng(1)
    points = RandomSearch().suggest(space, [], 30, {}, 1, "minimize").assignments
    statuses = ["succeeded"] * 24 + ["failed", "running", "pending", "killed", "early_stopped", "succeeded"]
    history = [
        Trial(f"t{i}", a, s, objective=float(rng.normal()) if s in ("succeeded", "early_stopped") else None)  # type: ignore[arg-type]
        for i, (a, s) in enumerate(zip(points, statuses, strict=True))
    ]
    before = copy.deepcopy(history)
    first = get_algorithm(alg).suggest(space, history, 8, {}, 3, "maximize")
    assert history == before
    assert first == get_algorithm(alg).suggest(space, history, 8, {}, 3, "maximize")
    assert first != get_algorithm(alg).suggest(space, history, 8, {}, 4, "maximize")
    for a in first.assignments:
        check_assignment(space, a)
    keys = {assignment_key(space, t.assignment) for t in history}
    new = [assignment_key(space, a) for a in first.assignments]
    assert len(set(new)) == 8 and not keys & set(new)


@pytest.mark.parametrize("alg", BOTH)
def test_maximize_is_minimize_of_the_negation(alg: str) -> None:
    history = _random_history(BOWL, bowl, 20)
    negated = [Trial(t.name, t.assignment, t.status, objective=-(t.objective or 0.0)) for t in history]
    low = get_algorithm(alg).suggest(BOWL, history, 4, {}, 8, "minimize")
    high = get_algorithm(alg).suggest(BOWL, negated, 4, {}, 8, "maximize")
    assert low == high


@pytest.mark.parametrize("alg", BOTH)
def test_pending_trials_spread_a_batch(alg: str) -> None:
    # 30 results around a clear optimum, then 8 running trials sitting on it: the liar pushes the batch away
    # from them, and every point of the batch is new.
    history = _random_history(BOWL, bowl, 30)
    best = min(history, key=lambda t: t.objective or 0.0).assignment
    running = [
        Trial(f"r{i}", {k: repr(float(v) + 0.01 * i) for k, v in best.items()}, "running") for i in range(8)
    ]
    result = get_algorithm(alg).suggest(BOWL, history + running, 8, {}, 5, "minimize")
    keys = [assignment_key(BOWL, a) for a in result.assignments]
    assert len(set(keys)) == 8
    assert not set(keys) & {assignment_key(BOWL, t.assignment) for t in history + running}


@pytest.mark.parametrize("alg", BOTH)
def test_small_finite_space_is_used_up_without_repeats(alg: str) -> None:
    space = SearchSpace((Parameter("a", "int", 0, 3), Parameter("b", "categorical", values=("x", "y"))))
    algo = get_algorithm(alg)
    history: list[Trial] = []
    for _ in range(6):
        result = algo.suggest(space, history, 3, {"n_startup_trials": "1"}, 2, "minimize")
        history += [
            Trial(f"t{len(history) + i}", a, "succeeded", objective=float(a["a"]))
            for i, a in enumerate(result.assignments)
        ]
        if result.exhausted:
            break
    keys = [assignment_key(space, t.assignment) for t in history]
    assert len(keys) == len(set(keys)) == 8
    assert result.exhausted


# --- quality and speed ----------------------------------------------------------------------------------------


def _best_found(
    alg: str, space: SearchSpace, f: Callable[[Assignment], float], seed: int, batch: int = 4
) -> float:
    algo = get_algorithm(alg)
    history: list[Trial] = []
    while len(history) < 60:
        for a in algo.suggest(space, history, batch, {}, seed, "minimize").assignments:
            history.append(Trial(f"t{len(history)}", a, "succeeded", objective=f(a)))
    return min(t.objective for t in history if t.objective is not None)


@pytest.mark.parametrize("alg", BOTH)
@pytest.mark.parametrize(("space", "f"), [(BOWL, bowl), (LOG, log_valley)], ids=["bowl", "log-scale"])
def test_beats_random_search(alg: str, space: SearchSpace, f: Callable[[Assignment], float]) -> None:
    seeds = range(6)
    model = np.mean([_best_found(alg, space, f, s) for s in seeds])
    random = np.mean([_best_found("random", space, f, s) for s in seeds])
    assert model < 0.8 * random, (model, random)


@pytest.mark.parametrize("alg", BOTH)
def test_fast_with_a_thousand_results(alg: str) -> None:
    space = SearchSpace(tuple(Parameter(f"x{i}", "double", -5.0, 5.0) for i in range(5)))
    history = _random_history(space, lambda a: sum(float(v) ** 2 for v in a.values()), 1000)
    algo = get_algorithm(alg)
    timings = []
    for seed in range(3):
        start = time.perf_counter()
        algo.suggest(space, history, 1, {}, seed, "minimize")
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.2


def _narrow_optimum(a: Assignment) -> float:
    """A plateau of 3 reached in every list combination, and a narrow 2 in one combination only.

    Shaped like logistic regression's CV error over (log C, fit_intercept, class_weight) on a small data set:
    ties everywhere, and the best value a band of C next to worse values.
    """
    x = math.log10(float(a["c"]))
    if a["a"] == "yes" and a["b"] == "yes":
        if -0.9 <= x <= -0.3:
            return 2.0
        if -1.2 <= x <= 0.5:
            return 4.0
        if x < -1.2:
            return 4.0 + 5.0 * (-1.2 - x)
        return 5.0 if x <= 2.0 else 3.0
    return 3.0 + 2.0 * max(0.0, -x)


@pytest.mark.parametrize("alg", BOTH)
def test_finds_a_narrow_optimum_beside_a_plateau(alg: str) -> None:
    """A good group that is too large (a quarter of the results) fills with plateau ties and never leaves it:
    2 or 3 seeds in 30 found the optimum that way, against 11 to 13 now and 13 to 17 for Optuna's TPE."""
    space = SearchSpace(
        (
            Parameter("c", "double", 1e-4, 1e4, distribution="logUniform"),
            Parameter("a", "categorical", values=("yes", "no")),
            Parameter("b", "categorical", values=("yes", "no")),
        )
    )
    found = sum(_best_found(alg, space, _narrow_optimum, seed, batch=1) == 2.0 for seed in range(30))
    assert found >= 8, found
