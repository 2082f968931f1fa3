"""CMA-ES: Katib's settings and messages, replay from history, generations, restarts and search quality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from natib.algorithms.cmaes import CMAES, _replay
from natib.algorithms.gp import UnitEncoder
from natib.algorithms.random import RandomSearch
from natib.algorithms.space import Assignment, Parameter, SearchSpace, Trial

PLANE = SearchSpace((Parameter("x", "double", -5.0, 5.0), Parameter("y", "double", -5.0, 5.0)))
CUBE = SearchSpace(tuple(Parameter(f"x{i}", "double", -5.0, 5.0) for i in range(3)))
BRANIN = SearchSpace((Parameter("x", "double", -5.0, 10.0), Parameter("y", "double", 0.0, 15.0)))
MIXED = SearchSpace(
    (
        Parameter("lr", "double", 1e-4, 1.0, distribution="logUniform"),
        Parameter("depth", "int", 1, 8),
        Parameter("opt", "categorical", values=("sgd", "adam", "rmsprop")),
    )
)


def sphere(a: Assignment) -> float:
    return sum((float(v) - 1.0) ** 2 for v in a.values())


def branin(a: Assignment) -> float:
    x1, x2 = float(a["x"]), float(a["y"])
    return (
        (x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2
        + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1)
        + 10
    )


def _run(alg, space: SearchSpace, f, budget: int, batch: int, seed: int) -> float:  # type: ignore[no-untyped-def]
    history: list[Trial] = []
    while len(history) < budget:
        for a in alg.suggest(space, history, batch, {}, seed, "minimize").assignments:
            history.append(Trial(f"t{len(history)}", a, "succeeded", f(a)))
    return min(t.objective for t in history if t.objective is not None)


def _grow(space: SearchSpace, f, size: int, seed: int = 0, batch: int = 4, settings=None) -> list[Trial]:  # type: ignore[no-untyped-def]
    history: list[Trial] = []
    while len(history) < size:
        for a in (
            CMAES()
            .suggest(space, history, min(batch, size - len(history)), settings or {}, seed, "minimize")
            .assignments
        ):
            history.append(Trial(f"t{len(history)}", a, "succeeded", f(a)))
    return history


# --- settings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"restart_strategy": "lipop"}, "invalid restart_strategy: 'lipop'"),
        ({"sigma": "0"}, "sigma should be great than zero"),
        ({"random_state": "-1"}, "random_state should be great or equal than zero"),
        ({"popsize": "8"}, "unknown setting popsize for algorithm cmaes"),
    ],
)
def test_katib_messages(settings: dict[str, str], message: str) -> None:
    assert CMAES().validate(PLANE, settings, None) == [message]


def test_needs_two_numeric_parameters() -> None:
    space = SearchSpace((Parameter("x", "double", 0.0, 1.0), Parameter("c", "categorical", values=("a", "b"))))
    assert CMAES().validate(space, {}, None) == [
        "CMA-ES only supports two or more dimensional continuous search space."
    ]


def test_valid_settings() -> None:
    for strategy in ("none", "ipop", "bipop"):
        assert CMAES().validate(PLANE, {"restart_strategy": strategy, "sigma": "0.3", "random_state": "2"}, 9) == []


def test_suggest_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="invalid restart_strategy"):
        CMAES().suggest(PLANE, [], 1, {"restart_strategy": "x"}, 0, "minimize")


# --- replay ---------------------------------------------------------------------------------------------------


def test_same_history_same_answer() -> None:
    history = _grow(CUBE, sphere, 23)
    assert CMAES().suggest(CUBE, history, 7, {}, 4, "minimize") == CMAES().suggest(CUBE, history, 7, {}, 4, "minimize")
    assert CMAES().suggest(CUBE, history, 7, {}, 4, "minimize") != CMAES().suggest(CUBE, history, 7, {}, 5, "minimize")


@pytest.mark.parametrize("done", [0, 9, 14])
def test_continuing_from_a_prefix_equals_one_call(done: int) -> None:
    alg = CMAES()
    history = _grow(CUBE, sphere, done)
    whole = alg.suggest(CUBE, history, 20, {}, 1, "minimize").assignments
    first = alg.suggest(CUBE, history, 6, {}, 1, "minimize").assignments
    pending = [*history, *(Trial(f"p{i}", a, "pending") for i, a in enumerate(first))]
    rest = alg.suggest(CUBE, pending, 14, {}, 1, "minimize").assignments
    assert first + rest == whole


def test_replay_reproduces_a_sequential_run() -> None:
    # A run driven one point at a time and one driven a generation at a time ask the same points.
    one = _grow(PLANE, sphere, 30, batch=1)
    many = _grow(PLANE, sphere, 30, batch=6)
    assert [t.assignment for t in one] == [t.assignment for t in many]


def test_generation_waits_for_all_members() -> None:
    history = _grow(PLANE, sphere, 6)  # one full generation for two dimensions
    waiting = [*history[:-1], Trial("t5", history[-1].assignment, "running")]
    enc = UnitEncoder(PLANE.parameters)
    assert _replay(enc, PLANE, waiting, 0, 1 / 6, "none", "minimize").start == 0
    assert _replay(enc, PLANE, history, 0, 1 / 6, "none", "minimize").start == 6


def test_failed_members_count_as_the_worst_result() -> None:
    history = _grow(PLANE, sphere, 6)
    worst = max(t.objective for t in history if t.objective is not None)
    failed = [*history[:2], Trial("t2", history[2].assignment, "failed"), *history[3:]]
    as_worst = [*history[:2], Trial("t2", history[2].assignment, "succeeded", worst), *history[3:]]
    alg = CMAES()
    assert alg.suggest(PLANE, failed, 4, {}, 0, "minimize") == alg.suggest(PLANE, as_worst, 4, {}, 0, "minimize")


def test_maximize_is_the_mirror_of_minimize() -> None:
    history = _grow(PLANE, sphere, 12)
    mirrored = [Trial(t.name, t.assignment, t.status, -(t.objective or 0.0)) for t in history]
    assert CMAES().suggest(PLANE, history, 3, {}, 0, "minimize") == CMAES().suggest(
        PLANE, mirrored, 3, {}, 0, "maximize"
    )


@pytest.mark.parametrize(("strategy", "grows"), [("none", False), ("ipop", True), ("bipop", True)])
def test_restarts_after_convergence(strategy: str, grows: bool) -> None:
    # A flat objective makes the run report convergence after a couple of dozen generations.
    history = _grow(PLANE, lambda a: 1.0, 240, batch=6, settings={"restart_strategy": strategy})
    enc = UnitEncoder(PLANE.parameters)
    replay = _replay(enc, PLANE, history, 0, 1 / 6, strategy, "minimize")
    assert (replay.restarts > 0) == grows
    if strategy == "ipop":
        assert replay.popsize == 12


# --- suggestions ----------------------------------------------------------------------------------------------


def test_batch_is_distinct_and_categoricals_are_random() -> None:
    out = CMAES().suggest(MIXED, [], 30, {}, 0, "minimize").assignments
    keys = {tuple(a.items()) for a in out}
    assert len(keys) == 30
    assert {a["opt"] for a in out} == {"sgd", "adam", "rmsprop"}
    for a in out:
        assert 1e-4 <= float(a["lr"]) <= 1.0 and 1 <= int(a["depth"]) <= 8


def test_tiny_int_space_is_exhausted() -> None:
    space = SearchSpace((Parameter("a", "int", 0, 1), Parameter("b", "int", 0, 1)))
    result = CMAES().suggest(space, [], 10, {}, 0, "minimize")
    assert len(result.assignments) == 4 and result.exhausted


@pytest.mark.parametrize(
    ("space", "f"), [(PLANE, sphere), (CUBE, sphere), (BRANIN, branin)], ids=["2d", "3d", "branin"]
)
def test_beats_random_search_on_average(space: SearchSpace, f) -> None:  # type: ignore[no-untyped-def]
    cma = [_run(CMAES(), space, f, 120, 6, seed) for seed in range(5)]
    rs = [_run(RandomSearch(), space, f, 120, 6, seed) for seed in range(5)]
    assert np.mean(cma) < np.mean(rs)


def test_history_from_another_algorithm_is_told_where_it_is() -> None:
    points = RandomSearch().suggest(PLANE, [], 12, {}, 0, "minimize").assignments
    history = [Trial(f"t{i}", a, "succeeded", sphere(a)) for i, a in enumerate(points)]
    enc = UnitEncoder(PLANE.parameters)
    replay = _replay(enc, PLANE, history, 0, 1 / 6, "none", "minimize")
    assert replay.start == 12
    mean = replay.run.cma.mean
    # Told the random points, the mean moves towards the best of them rather than staying at the centre.
    best = enc.encode(min(points, key=sphere))
    assert best is not None and np.linalg.norm(mean - best) < np.linalg.norm(np.full(2, 0.5) - best)
