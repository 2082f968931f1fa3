"""CMA-ES: Katib's settings and messages, replay from history, generations, restarts and search quality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from natib.algorithms.cmaes import CMAES, STATE_LABEL, _replay
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
    # The points agree; the labels do not, as each describes its own history.
    assert (
        alg.suggest(PLANE, failed, 4, {}, 0, "minimize").assignments
        == alg.suggest(PLANE, as_worst, 4, {}, 0, "minimize").assignments
    )


def test_maximize_is_the_mirror_of_minimize() -> None:
    history = _grow(PLANE, sphere, 12)
    mirrored = [Trial(t.name, t.assignment, t.status, -(t.objective or 0.0)) for t in history]
    assert (
        CMAES().suggest(PLANE, history, 3, {}, 0, "minimize").assignments
        == CMAES().suggest(PLANE, mirrored, 3, {}, 0, "maximize").assignments
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


# --- the optimiser carried in labels --------------------------------------------------------------------------


def _grow_labelled(
    space: SearchSpace, f, size: int, batch: int, settings: dict[str, str], fail_every: int = 0
) -> list[Trial]:  # type: ignore[no-untyped-def]
    history: list[Trial] = []
    while len(history) < size:
        result = CMAES().suggest(space, history, min(batch, size - len(history)), settings, 0, "minimize")
        assert len(result.labels) == len(result.assignments)
        for a, labels in zip(result.assignments, result.labels, strict=True):
            k = len(history)
            failed = fail_every and k % fail_every == 2
            history.append(Trial(f"t{k}", a, "failed" if failed else "succeeded", None if failed else f(a), labels))
    return history


def _strip(history: list[Trial]) -> list[Trial]:
    return [Trial(t.name, t.assignment, t.status, t.objective) for t in history]


@pytest.mark.parametrize(("strategy", "batch"), [("none", 1), ("ipop", 5), ("bipop", 3)])
def test_labels_change_nothing(strategy: str, batch: int) -> None:
    # A flat objective forces restarts, so the carried state covers new runs and populations as well.
    settings = {"restart_strategy": strategy}
    labelled = _grow_labelled(PLANE, lambda a: 1.0, 240, batch, settings, fail_every=7)
    assert [t.assignment for t in labelled] == [t.assignment for t in _grow_failing(settings, batch)]
    assert sum(1 for t in labelled if STATE_LABEL in t.labels) > 0
    enc = UnitEncoder(PLANE.parameters)
    a = _replay(enc, PLANE, labelled, 0, 1 / 6, strategy, "minimize")
    b = _replay(enc, PLANE, labelled, 0, 1 / 6, strategy, "minimize", use_labels=False)
    assert a.start == b.start and a.restarts == b.restarts and a.popsize == b.popsize
    assert (a.restarts > 0) == (strategy != "none")
    assert all(np.array_equal(x, y) for x, y in zip(a.asked, b.asked, strict=True))
    for name, value in vars(b.run.cma).items():
        other = vars(a.run.cma)[name]
        if name == "_rng":
            assert all(np.array_equal(u, v) for u, v in zip(value.get_state(), other.get_state(), strict=True))
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, other, equal_nan=True), name
        else:
            assert value == other, name
    assert CMAES().suggest(PLANE, labelled, 4, settings, 0, "minimize") == CMAES().suggest(
        PLANE, _strip(labelled), 4, settings, 0, "minimize"
    )


def _grow_failing(settings: dict[str, str], batch: int) -> list[Trial]:
    """The same run as ``_grow_labelled`` with failures, but with every label dropped."""
    history: list[Trial] = []
    while len(history) < 240:
        result = CMAES().suggest(PLANE, history, min(batch, 240 - len(history)), settings, 0, "minimize")
        for a in result.assignments:
            k = len(history)
            history.append(Trial(f"t{k}", a, "failed", None) if k % 7 == 2 else Trial(f"t{k}", a, "succeeded", 1.0))
    return history


def test_labels_that_do_not_fit_the_history_are_ignored() -> None:
    history = _grow_labelled(CUBE, sphere, 40, 4, {})
    expected = CMAES().suggest(CUBE, _strip(history), 3, {}, 0, "minimize").assignments
    # An earlier result changed after the label was written: the label no longer describes this history.
    changed = [Trial(t.name, t.assignment, t.status, 7.0) if i == 3 else t for i, t in enumerate(history)]
    assert CMAES().suggest(CUBE, changed, 3, {}, 0, "minimize").assignments == CMAES().suggest(
        CUBE, _strip(changed), 3, {}, 0, "minimize"
    ).assignments
    last = history[-1] if STATE_LABEL in history[-1].labels else next(t for t in reversed(history) if t.labels)
    for text in ("not json", "{}", last.labels[STATE_LABEL].replace('"v":1', '"v":99')):
        broken = [Trial(t.name, t.assignment, t.status, t.objective, {STATE_LABEL: text}) for t in history]
        assert CMAES().suggest(CUBE, broken, 3, {}, 0, "minimize").assignments == expected
    # Another seed or sigma means another optimiser: the label is not used.
    assert CMAES().suggest(CUBE, history, 3, {"sigma": "0.3"}, 0, "minimize") == CMAES().suggest(
        CUBE, _strip(history), 3, {"sigma": "0.3"}, 0, "minimize"
    )


def test_history_written_differently_is_told_the_same() -> None:
    history = _grow(PLANE, sphere, 30)
    respelled = [
        Trial(t.name, {k: v + "0" if "e" not in v else v for k, v in t.assignment.items()}, t.status, t.objective)
        for t in history
    ]
    assert CMAES().suggest(PLANE, respelled, 4, {}, 0, "minimize").assignments == (
        CMAES().suggest(PLANE, history, 4, {}, 0, "minimize").assignments
    )
