"""Population based training: settings, generations, exploit and explore, re-runs, checkpoints, determinism."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from natib.algorithms.pbt import (
    GENERATION_LABEL,
    MAX_ATTEMPTS,
    MEMBER_LABEL,
    PARENT_LABEL,
    PBT,
    checkpoint_plan,
    perturb,
)
from natib.algorithms.space import ObjectiveType, Parameter, SearchSpace, Trial

SPACE = SearchSpace(
    (
        Parameter("lr", "double", 0.001, 0.1, step=0.001, distribution="logUniform"),
        Parameter("units", "int", 8, 128, step=8),
        Parameter("act", "categorical", values=("relu", "tanh", "gelu")),
        Parameter("batch", "discrete", values=("16", "32", "64")),
    )
)
SETTINGS = {"suggestion_trial_dir": "/var/log/katib/checkpoints/", "n_population": "8", "truncation_threshold": "0.25"}


def score(a: Mapping[str, str]) -> float:
    """Higher is better: lr near 0.02, many units, gelu."""
    return -abs(math.log10(float(a["lr"])) - math.log10(0.02)) + int(a["units"]) / 128 + (a["act"] == "gelu")


def simulate(
    parallel: int,
    trials: int,
    *,
    settings: Mapping[str, str] = SETTINGS,
    objective: ObjectiveType = "maximize",
    fn: Callable[[Mapping[str, str]], float] = score,
    failing: Callable[[Trial], bool] = lambda t: False,
    seed: int = 4,
) -> list[Trial]:
    """Keep ``parallel`` trials busy until ``trials`` exist and all finished, completing them in random order."""
    history: list[Trial] = []
    running: list[int] = []
    order = np.random.default_rng(seed)
    while True:
        free = min(parallel - len(running), trials - len(history))
        if free > 0:
            result = PBT().suggest(SPACE, history, free, settings, seed, objective)
            assert not result.exhausted
            assert len(result.labels) == len(result.assignments) <= free
            for assignment, labels in zip(result.assignments, result.labels, strict=True):
                # A generation starts only once every member of the one before it has finished.
                g = int(labels[GENERATION_LABEL])
                assert not any(t.is_active and generation(t) == g - 1 for t in history)
                running.append(len(history))
                history.append(Trial(f"t{len(history)}", assignment, "running", labels=labels))
            assert result.assignments or running
        if not running:
            return history
        j = running.pop(int(order.integers(len(running))))
        t = history[j]
        if failing(t):
            history[j] = Trial(t.name, t.assignment, "failed", None, t.labels)
        else:
            history[j] = Trial(t.name, t.assignment, "succeeded", fn(t.assignment), t.labels)


def generation(t: Trial) -> int:
    return int(t.labels[GENERATION_LABEL])


# --- settings ------------------------------------------------------------------------------------------------


def test_settings_messages() -> None:
    pbt = PBT()
    assert pbt.validate(SPACE, SETTINGS, None) == []
    assert pbt.validate(SPACE, {**SETTINGS, "resample_probability": "0.3", "random_state": "2"}, None) == []
    assert pbt.validate(SPACE, {}, None) == [
        "Required params missing: suggestion_trial_dir, n_population, truncation_threshold"
    ]
    assert pbt.validate(SPACE, {"suggestion_trial_dir": "/d", "n_population": "5"}, None) == [
        "Required params missing: truncation_threshold"
    ]
    assert pbt.validate(SPACE, {**SETTINGS, "n_population": "4"}, None) == ["Param(n_population) should be >= 5"]
    (msg,) = pbt.validate(SPACE, {**SETTINGS, "n_population": "five"}, None)
    assert msg.startswith("failed to validate n_population(five)")
    for bad in ("-0.1", "1.01", "x", "nan"):
        assert pbt.validate(SPACE, {**SETTINGS, "truncation_threshold": bad}, None) == [
            "Param(truncation_threshold) should be between 0 and 1, inclusive"
        ]
        assert pbt.validate(SPACE, {**SETTINGS, "resample_probability": bad}, None) == [
            "Param(resample_probability) should be null to perturb at 0.8 or 1.2, or be between 0 and 1, "
            "inclusive, to resample"
        ]
    for edge in ("0", "1", "0.0", "1.0"):
        assert pbt.validate(SPACE, {**SETTINGS, "truncation_threshold": edge}, None) == []
    assert pbt.validate(SPACE, {**SETTINGS, "eta": "3"}, None) == ["unknown setting eta for algorithm pbt"]


def test_doubles_need_a_step() -> None:
    space = SearchSpace((Parameter("lr", "double", 0.001, 0.1), Parameter("units", "int", 8, 128)))
    (msg,) = PBT().validate(space, SETTINGS, None)
    assert msg.startswith("Param lr step is nil;") and "step" in msg.split(";")[1]
    with pytest.raises(ValueError, match="Param lr step is nil"):
        PBT().suggest(space, [], 5, SETTINGS, 0, "maximize")


# --- generations ---------------------------------------------------------------------------------------------


def test_generation_zero_is_a_random_population() -> None:
    result = PBT().suggest(SPACE, [], 100, SETTINGS, 0, "maximize")
    assert len(result.assignments) == 8 and not result.exhausted
    assert [lab[GENERATION_LABEL] for lab in result.labels] == ["0"] * 8
    assert [lab[MEMBER_LABEL] for lab in result.labels] == [str(k) for k in range(8)]
    assert all(PARENT_LABEL not in lab for lab in result.labels)
    assert len({tuple(sorted(a.items())) for a in result.assignments}) == 8
    # Asked one at a time, the population is the same: the plan does not depend on how it is handed out.
    history: list[Trial] = []
    for _ in range(8):
        (a,), (lab,) = (r := PBT().suggest(SPACE, history, 1, SETTINGS, 0, "maximize")).assignments, r.labels
        history.append(Trial(f"t{len(history)}", a, "running", labels=lab))
    assert [t.assignment for t in history] == result.assignments


@pytest.mark.parametrize("parallel", [1, 3, 8, 12])
def test_generations_progress(parallel: int) -> None:
    history = simulate(parallel, 8 * 6)
    counts = Counter(generation(t) for t in history)
    assert counts == {g: 8 for g in range(6)}
    for i, t in enumerate(history):
        if generation(t) > 0:
            assert t.labels[PARENT_LABEL] in {q.name for q in history[:i] if generation(q) == generation(t) - 1}
    best = [max(score(t.assignment) for t in history if generation(t) == g) for g in range(6)]
    assert best[-1] >= best[0]
    mean = [np.mean([score(t.assignment) for t in history if generation(t) == g]) for g in range(6)]
    assert mean[-1] > mean[0]


@pytest.mark.parametrize("objective", ["maximize", "minimize"])
def test_exploit_copies_a_top_member_and_explore_perturbs_its_own(objective: ObjectiveType) -> None:
    fn = score if objective == "maximize" else (lambda a: -score(a))
    history = simulate(8, 8 * 3, objective=objective, fn=fn)
    by_name = {t.name: t for t in history}
    sign = 1 if objective == "maximize" else -1
    exploits = explores = 0
    for g in (1, 2):
        previous = sorted((t for t in history if generation(t) == g - 1), key=lambda t: -sign * (t.objective or 0))
        top = {t.name for t in previous[:2]}  # 8 * 0.25
        bottom = {t.labels[MEMBER_LABEL] for t in previous[-2:]}
        for t in (t for t in history if generation(t) == g):
            parent = by_name[t.labels[PARENT_LABEL]]
            assert generation(parent) == g - 1
            if t.labels[MEMBER_LABEL] in bottom:
                exploits += 1
                assert parent.name in top
                assert t.assignment == parent.assignment
                continue
            explores += 1
            assert parent.labels[MEMBER_LABEL] == t.labels[MEMBER_LABEL]
            assert t.assignment != parent.assignment
            check_explored(parent.assignment, t.assignment)
    assert exploits == 4 and explores == 12


def check_explored(before: Mapping[str, str], after: Mapping[str, str]) -> None:
    """Every explored value is a valid point, on the step grid, one perturbation away from its parent's."""
    for p in SPACE.parameters:
        old, new = before[p.name], after[p.name]
        if not p.is_numeric_range:
            values = list(p.values)
            assert new in values
            assert new != old
            continue
        assert p.min is not None and p.max is not None and p.step is not None
        x = float(new)
        assert p.min <= x <= p.max
        k = (x - p.min) / p.step
        assert math.isclose(k, round(k), abs_tol=1e-6)
        ratio = x / float(old)
        at_bound = x in (p.min, p.max)
        assert at_bound or ratio != 1
        # x0.8 or x1.2, give or take the step it snaps to (and at least one step).
        assert 0.8 * float(old) - p.step <= x <= 1.2 * float(old) + p.step


def test_exploit_donors_spread_over_the_top() -> None:
    settings = {**SETTINGS, "n_population": "10", "truncation_threshold": "0.3"}
    history = simulate(10, 20, settings=settings)
    parents = [t.labels[PARENT_LABEL] for t in history if generation(t) == 1]
    copied = [p for t, p in zip((t for t in history if generation(t) == 1), parents, strict=True)
              if history[int(p[1:])].labels[MEMBER_LABEL] != t.labels[MEMBER_LABEL]]
    assert len(copied) == 3 and len(set(copied)) == 3


def test_zero_threshold_only_explores_and_one_only_exploits() -> None:
    history = simulate(8, 16, settings={**SETTINGS, "truncation_threshold": "0"})
    assert all(history[int(t.labels[PARENT_LABEL][1:])].labels[MEMBER_LABEL] == t.labels[MEMBER_LABEL]
               for t in history if generation(t) == 1)
    history = simulate(8, 16, settings={**SETTINGS, "truncation_threshold": "1"})
    gen1 = [t for t in history if generation(t) == 1]
    assert all(history[int(t.labels[PARENT_LABEL][1:])].labels[MEMBER_LABEL] != t.labels[MEMBER_LABEL]
               for t in gen1)


def test_resample_probability_one_redraws_everything() -> None:
    history = simulate(8, 16, settings={**SETTINGS, "resample_probability": "1", "truncation_threshold": "0"})
    gen1 = [t for t in history if generation(t) == 1]
    changed = sum(t.assignment != history[int(t.labels[PARENT_LABEL][1:])].assignment for t in gen1)
    assert changed == 8
    for t in gen1:
        assert float(t.assignment["lr"]) in {round(0.001 * k, 3) for k in range(1, 101)}


def test_failed_members_rerun_with_same_params() -> None:
    first = PBT().suggest(SPACE, [], 8, SETTINGS, 0, "maximize")
    history = [
        Trial(f"t{i}", a, "failed" if i == 2 else "succeeded", None if i == 2 else float(i), labels=lab)
        for i, (a, lab) in enumerate(zip(first.assignments, first.labels, strict=True))
    ]
    again = PBT().suggest(SPACE, history, 8, SETTINGS, 0, "maximize")
    assert again.assignments == [history[2].assignment]
    assert again.labels == [history[2].labels]
    # After MAX_ATTEMPTS failures the member ranks last and the next generation begins.
    for attempt in range(1, MAX_ATTEMPTS):
        history.append(Trial(f"r{attempt}", history[2].assignment, "failed", labels=history[2].labels))
    nxt = PBT().suggest(SPACE, history, 8, SETTINGS, 0, "maximize")
    assert [lab[GENERATION_LABEL] for lab in nxt.labels] == ["1"] * 8
    assert nxt.labels[2][PARENT_LABEL] in {"t7", "t6"}  # the failed member exploits a top member


def test_waits_for_the_generation_without_exhausting() -> None:
    first = PBT().suggest(SPACE, [], 8, SETTINGS, 0, "maximize")
    history = [
        Trial(f"t{i}", a, "running" if i == 5 else "succeeded", None if i == 5 else 1.0, labels=lab)
        for i, (a, lab) in enumerate(zip(first.assignments, first.labels, strict=True))
    ]
    result = PBT().suggest(SPACE, history, 8, SETTINGS, 0, "maximize")
    assert result.assignments == [] and not result.exhausted


def test_deterministic_and_seeded() -> None:
    history = simulate(3, 20)
    a = PBT().suggest(SPACE, history, 8, SETTINGS, 7, "maximize")
    b = PBT().suggest(SPACE, list(history), 8, dict(SETTINGS), 7, "maximize")
    assert a == b
    c = PBT().suggest(SPACE, history, 8, SETTINGS, 8, "maximize")
    assert a.assignments != c.assignments
    assert simulate(4, 24) == simulate(4, 24)


# --- pieces --------------------------------------------------------------------------------------------------


def test_perturb_moves_on_the_grid() -> None:
    rng = np.random.default_rng(0)
    units = Parameter("units", "int", 0, 10)
    assert {perturb(units, "0", rng) for _ in range(50)} == {"0", "1"}  # scaling 0 does nothing; a step does
    assert {perturb(units, "10", rng) for _ in range(50)} == {"8", "10"}  # clipped at max, x0.8 -> 8
    assert {perturb(units, "2", rng) for _ in range(50)} == {"1", "3"}  # a sub-step change still moves
    lr = Parameter("lr", "double", 0.1, 1.0, step=0.1)
    assert {perturb(lr, "0.5", rng) for _ in range(50)} == {"0.4", "0.6"}
    cat = Parameter("c", "categorical", values=("a", "b", "c"))
    assert {perturb(cat, "c", rng) for _ in range(50)} == {"b", "a"}  # categorical lists wrap around
    disc = Parameter("d", "discrete", values=("1", "2", "4"))
    assert {perturb(disc, "4", rng) for _ in range(50)} == {"2"}  # ordered lists do not
    assert perturb(disc, "3", rng) in disc.values  # a value off the list is redrawn


def test_checkpoint_plan() -> None:
    assert checkpoint_plan("exp-abc-3", {GENERATION_LABEL: "0", MEMBER_LABEL: "3"}) == ("exp-abc-3", None)
    assert checkpoint_plan("exp-abc-9", {PARENT_LABEL: "exp-abc-3"}) == ("exp-abc-9", "exp-abc-3")
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(ValueError):
            checkpoint_plan("t", {PARENT_LABEL: bad}) if bad else checkpoint_plan(bad, {})
    # Every generated assignment leaves checkpoint paths to the launcher.
    assert all(set(a) == set(SPACE.names()) for a in PBT().suggest(SPACE, [], 8, SETTINGS, 0, "maximize").assignments)
