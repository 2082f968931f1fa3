"""Hyperband and successive halving: settings, bracket arithmetic, promotions, and simulated runs that never hang."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from natib.algorithms.hyperband import (
    BRACKET_LABEL,
    PARENT_LABEL,
    RUNG_LABEL,
    BracketPlan,
    Hyperband,
    SuccessiveHalving,
    format_resource,
)
from natib.algorithms.space import ObjectiveType, Parameter, SearchSpace, Trial

SPACE = SearchSpace(
    (
        Parameter("lr", "double", 1e-4, 1.0, distribution="logUniform"),
        Parameter("epochs", "int", 1, 27),
        Parameter("opt", "categorical", values=("sgd", "adam")),
    )
)
SETTINGS = {"r_l": "27", "resource_name": "epochs"}

#: (bracket, rung) -> trials for r_l = 27, eta = 3: the textbook table.
EXPECTED_RUNGS = {
    (3, 0): 27, (3, 1): 9, (3, 2): 3, (3, 3): 1,
    (2, 0): 12, (2, 1): 4, (2, 2): 1,
    (1, 0): 6, (1, 1): 2,
    (0, 0): 4,
}  # fmt: skip


def loss(a: Mapping[str, str]) -> float:
    """A loss that improves with resource, with a best learning rate near 0.01 and adam slightly better."""
    return abs(math.log10(float(a["lr"])) + 2) + 1 / int(a["epochs"]) + (0.0 if a["opt"] == "adam" else 0.2)


def simulate(
    alg: Hyperband | SuccessiveHalving,
    parallel: int,
    *,
    settings: Mapping[str, str] = SETTINGS,
    space: SearchSpace = SPACE,
    objective: ObjectiveType = "minimize",
    fn: Callable[[Mapping[str, str]], float] = loss,
    failing: Callable[[Trial], bool] = lambda t: False,
    seed: int = 1,
) -> list[Trial]:
    """Run the search like the controller does: keep ``parallel`` trials busy, finish them in random order."""
    history: list[Trial] = []
    running: list[int] = []
    exhausted = False
    order = np.random.default_rng(seed)
    for _ in range(10_000):
        free = parallel - len(running)
        if free > 0 and not exhausted:
            result = alg.suggest(space, history, free, settings, seed, objective)
            assert len(result.assignments) <= free
            assert len(result.labels) == len(result.assignments)
            for assignment, labels in zip(result.assignments, result.labels, strict=True):
                running.append(len(history))
                history.append(Trial(f"t{len(history)}", assignment, "running", labels=labels))
            exhausted = result.exhausted
            # Never a hang: something new, something still running, or the end.
            assert result.assignments or running or exhausted
        if not running:
            assert exhausted
            return history
        j = running.pop(int(order.integers(len(running))))
        t = history[j]
        if failing(t):
            history[j] = Trial(t.name, t.assignment, "failed", None, t.labels)
        else:
            history[j] = Trial(t.name, t.assignment, "succeeded", fn(t.assignment), t.labels)
    raise AssertionError("simulation did not finish")


def rung_counts(history: list[Trial]) -> Counter[tuple[int, int]]:
    return Counter((int(t.labels[BRACKET_LABEL]), int(t.labels[RUNG_LABEL])) for t in history)


# --- settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", [Hyperband(), SuccessiveHalving()])
def test_settings_messages(alg: Hyperband | SuccessiveHalving) -> None:
    assert alg.validate(SPACE, SETTINGS, None) == []
    assert alg.validate(SPACE, {}, None) == ["r_l and resource_name must be set."]
    assert alg.validate(SPACE, {"r_l": "9"}, None) == ["r_l and resource_name must be set."]
    for bad in ("-1", "0", "abc", "nan", "inf"):
        assert alg.validate(SPACE, {"r_l": bad, "resource_name": "epochs"}, None) == [
            "r_l must be a positive float number."
        ]
    assert alg.validate(SPACE, {"r_l": "9", "resource_name": "steps"}, None) == [
        "value of resource_name setting must be in parameters."
    ]
    assert alg.validate(SPACE, {**SETTINGS, "bogus": "1"}, None) == [f"unknown setting bogus for algorithm {alg.name}"]
    assert alg.validate(SPACE, {**SETTINGS, "random_state": "-1"}, None) == [
        "random_state should be great or equal than zero"
    ]


def test_eta_reset_and_refused() -> None:
    # Katib resets eta <= 0 to 3; (0, 1] has no meaningful bracket and is refused with a clear message.
    assert Hyperband().validate(SPACE, {**SETTINGS, "eta": "-2"}, None) == []
    assert BracketPlan.from_settings({**SETTINGS, "eta": "0"}).eta == 3
    for bad in ("1", "0.5", "x"):
        (msg,) = Hyperband().validate(SPACE, {**SETTINGS, "eta": bad}, None)
        assert msg.startswith("eta must be a number greater than 1")


def test_resource_must_be_numeric() -> None:
    (msg,) = Hyperband().validate(SPACE, {"r_l": "9", "resource_name": "opt"}, None)
    assert "resource parameter opt" in msg
    space = SearchSpace((*SPACE.parameters, Parameter("steps", "discrete", values=("1", "3", "9"))))
    assert Hyperband().validate(space, {"r_l": "9", "resource_name": "steps"}, None) == []


def test_no_parallel_trial_count_requirement() -> None:
    result = Hyperband().suggest(SPACE, [], 1, SETTINGS, 0, "minimize")
    assert len(result.assignments) == 1 and not result.exhausted


def test_invalid_settings_raise_in_suggest() -> None:
    with pytest.raises(ValueError, match=r"r_l and resource_name must be set\."):
        Hyperband().suggest(SPACE, [], 3, {}, 0, "minimize")


# --- arithmetic ----------------------------------------------------------------------------------------------


def test_bracket_plan_is_hyperbands_table() -> None:
    plan = BracketPlan.from_settings({"r_l": "81", "eta": "3"})
    assert plan.s_max == 4  # log(81)/log(3) is 3.9999999999999996 in floating point
    assert [plan.rung_sizes(s) for s in range(4, -1, -1)] == [
        [81, 27, 9, 3, 1],
        [34, 11, 3, 1],
        [15, 5, 1],
        [8, 2],
        [5],
    ]
    assert [plan.resource(4, i) for i in range(5)] == pytest.approx([1, 3, 9, 27, 81])
    assert BracketPlan.from_settings({"r_l": "0.5"}).s_max == 0
    assert Hyperband().total_trials(SPACE, SETTINGS) == sum(EXPECTED_RUNGS.values())


def test_format_resource_respects_type_bounds_and_step() -> None:
    assert format_resource(Parameter("e", "int", 1, 27), 3.0000000001) == "3"
    assert format_resource(Parameter("e", "int", 1, 27), 2.9999999999) == "3"
    assert format_resource(Parameter("e", "int", 1, 27), 2.5) == "2"
    assert format_resource(Parameter("e", "int", 5, 20), 1.0) == "5"
    assert format_resource(Parameter("e", "int", 5, 20), 27.0) == "20"
    assert format_resource(Parameter("e", "int", 0, 30, step=10), 9.0) == "10"
    assert format_resource(Parameter("f", "double", 0.1, 1.0), 1 / 3) == repr(1 / 3)
    assert format_resource(Parameter("d", "discrete", values=("1", "4", "16")), 9.0) == "4"
    assert format_resource(Parameter("d", "discrete", values=("1", "4", "16")), 10.0) == "16"


# --- simulated runs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [1, 3, 8])
def test_hyperband_run_creates_every_bracket_and_rung(parallel: int) -> None:
    history = simulate(Hyperband(), parallel)
    assert rung_counts(history) == EXPECTED_RUNGS
    for t in history:
        s, i = int(t.labels[BRACKET_LABEL]), int(t.labels[RUNG_LABEL])
        assert int(t.assignment["epochs"]) == int(27 * 3.0 ** (i - s) + 1e-9)
    # The finished search answers "exhausted" with nothing more.
    final = Hyperband().suggest(SPACE, history, 5, SETTINGS, 1, "minimize")
    assert final.assignments == [] and final.exhausted


@pytest.mark.parametrize("objective", ["minimize", "maximize"])
def test_promotes_the_best_of_each_rung(objective: ObjectiveType) -> None:
    fn = loss if objective == "minimize" else (lambda a: -loss(a))
    history = simulate(Hyperband(), 4, objective=objective, fn=fn)
    by_name = {t.name: t for t in history}
    sign = 1 if objective == "maximize" else -1
    for (s, i), size in EXPECTED_RUNGS.items():
        upper = [t for t in history if rung_counts([t]) == {(s, i): 1}]
        if i == 0:
            assert all(PARENT_LABEL not in t.labels for t in upper)
            continue
        lower = [t for t in history if rung_counts([t]) == {(s, i - 1): 1}]
        best = sorted(lower, key=lambda t: -sign * (t.objective or 0.0))[:size]
        assert {t.labels[PARENT_LABEL] for t in upper} == {t.name for t in best}
        for t in upper:
            parent = by_name[t.labels[PARENT_LABEL]]
            assert {k: v for k, v in t.assignment.items() if k != "epochs"} == {
                k: v for k, v in parent.assignment.items() if k != "epochs"
            }
            assert int(t.assignment["epochs"]) == 3 * int(parent.assignment["epochs"])


def test_failed_trials_rank_last_and_do_not_block() -> None:
    history = simulate(Hyperband(), 3, failing=lambda t: t.assignment["opt"] == "sgd")
    assert rung_counts(history) == EXPECTED_RUNGS
    assert any(t.status == "failed" for t in history)
    for (s, i) in EXPECTED_RUNGS:
        if i == 0:
            continue
        lower = [t for t in history if rung_counts([t]) == {(s, i - 1): 1}]
        upper = [t for t in history if rung_counts([t]) == {(s, i): 1}]
        promoted = {t.labels[PARENT_LABEL] for t in upper}
        succeeded = {t.name for t in lower if t.status == "succeeded"}
        # A failed config is promoted only once every successful one already is.
        assert promoted <= succeeded or succeeded <= promoted


@pytest.mark.parametrize("parallel", [1, 3, 8])
def test_successive_halving_runs_one_bracket(parallel: int) -> None:
    history = simulate(SuccessiveHalving(), parallel)
    assert rung_counts(history) == {(3, 0): 27, (3, 1): 9, (3, 2): 3, (3, 3): 1}
    winner = next(t for t in history if t.labels[RUNG_LABEL] == "3")
    assert winner.assignment["epochs"] == "27"


def test_brackets_overlap_instead_of_idling() -> None:
    # With the first rung of the biggest bracket handed out and running, the next call starts the next bracket.
    first = Hyperband().suggest(SPACE, [], 27, SETTINGS, 0, "minimize")
    history = [Trial(f"t{i}", a, "running", labels=lab) for i, (a, lab) in enumerate(zip(first.assignments,
                                                                                            first.labels,
                                                                                            strict=True))]
    nxt = Hyperband().suggest(SPACE, history, 5, SETTINGS, 0, "minimize")
    assert [lab[BRACKET_LABEL] for lab in nxt.labels] == ["2"] * 5


def test_waits_for_a_rung_without_exhausting() -> None:
    result = SuccessiveHalving().suggest(SPACE, [], 100, SETTINGS, 0, "minimize")
    assert len(result.assignments) == 27 and not result.exhausted
    history = [Trial(f"t{i}", a, "running", labels=lab) for i, (a, lab) in enumerate(zip(result.assignments,
                                                                                             result.labels,
                                                                                             strict=True))]
    again = SuccessiveHalving().suggest(SPACE, history, 5, SETTINGS, 0, "minimize")
    assert again.assignments == [] and not again.exhausted


def test_small_space_caps_the_bracket_and_stays_distinct() -> None:
    space = SearchSpace((Parameter("epochs", "int", 1, 9), Parameter("opt", "categorical", values=("a", "b"))))
    settings = {"r_l": "9", "resource_name": "epochs"}
    history = simulate(Hyperband(), 4, settings=settings, space=space, fn=lambda a: float(a["opt"] == "a"))
    counts = rung_counts(history)
    assert counts[(2, 0)] == 2 and counts[(1, 0)] == 2 and counts[(0, 0)] == 2
    keys = [tuple(sorted(t.assignment.items())) for t in history if t.labels[RUNG_LABEL] == "0"]
    assert len(keys) == len(set(keys))


def test_katib_example_resource_range_is_respected() -> None:
    # Katib's hyperband.yaml gives num-epochs the range [1, 1] with r_l = 2: every rung is clipped to 1.
    space = SearchSpace(
        (
            Parameter("lr", "double", 0.01, 0.03),
            Parameter("num-layers", "int", 2, 5),
            Parameter("optimizer", "categorical", values=("sgd", "adam", "ftrl")),
            Parameter("num-epochs", "int", 1, 1),
        )
    )
    settings = {"resource_name": "num-epochs", "eta": "2", "r_l": "2"}
    assert Hyperband().validate(space, settings, 2) == []
    history = simulate(Hyperband(), 2, settings=settings, space=space, fn=lambda a: float(a["lr"]))
    assert rung_counts(history) == {(1, 0): 2, (1, 1): 1, (0, 0): 2}
    assert {t.assignment["num-epochs"] for t in history} == {"1"}


def test_rung_zero_configs_are_distinct_and_valid() -> None:
    result = Hyperband().suggest(SPACE, [], 100, SETTINGS, 3, "minimize")
    assert len(result.assignments) == 27 + 12 + 6 + 4
    configs = {(a["lr"], a["opt"]) for a in result.assignments}
    assert len(configs) == len(result.assignments)
    for a in result.assignments:
        assert 1e-4 <= float(a["lr"]) <= 1.0


def test_state_comes_from_history_only() -> None:
    history = simulate(Hyperband(), 3)[:30]
    a = Hyperband().suggest(SPACE, history, 4, SETTINGS, 9, "minimize")
    b = Hyperband().suggest(SPACE, list(history), 4, dict(SETTINGS), 9, "minimize")
    assert a == b
    # Trials without Hyperband's labels (another algorithm's, a hand-made one) do not count toward any rung.
    stray = [Trial("x", {"lr": "0.1", "epochs": "1", "opt": "sgd"}, "succeeded", 0.0)]
    assert len(Hyperband().suggest(SPACE, stray, 100, SETTINGS, 9, "minimize").assignments) == 49
