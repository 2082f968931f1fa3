"""Random search and the shared sampler: distributions, steps, settings, deduplication and exhaustion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natib.algorithms.random import RandomSearch, UsedPoints
from natib.algorithms.sampling import finite_size, finite_values, from_unit, sample_value, space_size
from natib.algorithms.space import Parameter, SearchSpace, Trial, assignment_key

N = 20_000


def _draw(param: Parameter, n: int = N, seed: int = 1234) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([float(sample_value(param, rng)) for _ in range(n)])


# --- distributions -------------------------------------------------------------------------------------------


def test_uniform_double_mean_and_spread() -> None:
    x = _draw(Parameter("x", "double", 2.0, 10.0))
    assert x.min() >= 2.0 and x.max() <= 10.0
    assert abs(x.mean() - 6.0) < 0.1
    assert abs(x.std() - 8.0 / math.sqrt(12)) < 0.05


def test_log_uniform_median_is_geometric_mean() -> None:
    x = _draw(Parameter("x", "double", 1e-4, 1.0, distribution="logUniform"))
    assert x.min() >= 1e-4 and x.max() <= 1.0
    assert abs(np.log10(np.median(x)) - (-2.0)) < 0.06
    # Each decade gets a quarter of the draws.
    counts = np.histogram(np.log10(x), bins=[-4, -3, -2, -1, 0])[0] / N
    assert np.all(np.abs(counts - 0.25) < 0.02)


def test_normal_centre_sd_and_clipping() -> None:
    x = _draw(Parameter("x", "double", 0.0, 6.0, distribution="normal"))
    assert abs(x.mean() - 3.0) < 0.03
    assert abs(x.std() - 1.0) < 0.03
    assert x.min() >= 0.0 and x.max() <= 6.0
    # About 0.27% of a normal lies beyond 3 sd; those draws land exactly on the bounds instead of escaping.
    clipped = np.mean((x == 0.0) | (x == 6.0))
    assert 0.0005 < clipped < 0.006


def test_log_normal_on_log_scale() -> None:
    x = _draw(Parameter("x", "double", 1.0, math.exp(6.0), distribution="logNormal"))
    logs = np.log(x)
    assert x.min() >= 1.0 and x.max() <= math.exp(6.0)
    assert abs(logs.mean() - 3.0) < 0.03
    assert abs(logs.std() - 1.0) < 0.03


def test_uniform_int_gives_equal_weight_to_every_value() -> None:
    x = _draw(Parameter("x", "int", 1, 4))
    assert set(x) == {1.0, 2.0, 3.0, 4.0}
    for v in (1, 2, 3, 4):
        assert abs(np.mean(x == v) - 0.25) < 0.02


def test_uniform_stepped_double_gives_equal_weight() -> None:
    x = _draw(Parameter("x", "double", 0.0, 1.0, step=0.25))
    assert set(x) == {0.0, 0.25, 0.5, 0.75, 1.0}
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert abs(np.mean(x == v) - 0.2) < 0.02


def test_categorical_choice_is_uniform() -> None:
    rng = np.random.default_rng(5)
    draws = [sample_value(Parameter("c", "categorical", values=("a", "b", "c")), rng) for _ in range(9000)]
    for v in "abc":
        assert abs(draws.count(v) / 9000 - 1 / 3) < 0.03


def test_normal_int_with_step_stays_on_grid_and_in_bounds() -> None:
    x = _draw(Parameter("x", "int", 10, 100, step=7, distribution="normal"), n=5000)
    assert x.min() >= 10 and x.max() <= 94  # 94 is the last point 10 + 12 * 7 below the bound
    assert np.all((x - 10) % 7 == 0)


# --- steps and formatting ------------------------------------------------------------------------------------


def test_step_values_have_no_float_drift() -> None:
    assert finite_values(Parameter("x", "double", 0.1, 1.0, step=0.1)) == tuple(
        f"{k / 10}" for k in range(1, 11)
    )


def test_step_never_passes_max() -> None:
    assert finite_values(Parameter("x", "double", 0.0, 1.0, step=0.3)) == ("0.0", "0.3", "0.6", "0.9")
    assert from_unit(Parameter("x", "double", 0.0, 1.0, step=0.3), 0.999999) == "0.9"


def test_int_values_and_sizes() -> None:
    assert finite_values(Parameter("x", "int", 1, 10, step=3)) == ("1", "4", "7", "10")
    assert finite_size(Parameter("x", "int", 1, 1_000_000_000)) == 1_000_000_000
    assert finite_size(Parameter("x", "double", 0.0, 1.0)) is None
    assert finite_values(Parameter("x", "categorical", values=("a", "b", "a"))) == ("a", "b")


def test_from_unit_extremes_stay_in_bounds() -> None:
    for dist in ("uniform", "logUniform", "normal", "logNormal"):
        p = Parameter("x", "double", 0.5, 8.0, distribution=dist)  # type: ignore[arg-type]
        for u in (0.0, 1e-300, 0.5, 1.0 - 1e-16, 1.0):
            assert 0.5 <= float(from_unit(p, u)) <= 8.0


# --- settings ------------------------------------------------------------------------------------------------

SPACE = SearchSpace((Parameter("a", "int", 1, 3), Parameter("b", "categorical", values=("x", "y"))))
CONT = SearchSpace((Parameter("lr", "double", 1e-4, 1e-1, distribution="logUniform"),))


def test_validate_settings_messages() -> None:
    alg = RandomSearch()
    assert alg.validate(SPACE, {"random_state": "3"}, 100) == []
    assert alg.validate(SPACE, {"random_state": "-1"}, None) == [
        "random_state should be great or equal than zero"
    ]
    assert alg.validate(SPACE, {"random_state": "abc"}, None) == [
        "failed to validate random_state(abc): invalid literal for int() with base 10: 'abc'"
    ]
    assert alg.validate(SPACE, {"gamma": "0.2"}, None) == ["unknown setting gamma for algorithm random"]


def test_validate_rejects_log_scale_with_non_positive_min() -> None:
    space = SearchSpace((Parameter("lr", "double", 0.0, 1.0, distribution="logUniform"),))
    assert RandomSearch().validate(space, {}, None) == [
        "Param lr: min must be greater than zero for distribution logUniform"
    ]


def test_suggest_with_bad_random_state_raises() -> None:
    with pytest.raises(ValueError, match="random_state should be great or equal than zero"):
        RandomSearch().suggest(CONT, [], 1, {"random_state": "-3"}, 0, "minimize")


def test_random_state_replaces_seed() -> None:
    alg = RandomSearch()
    a = alg.suggest(CONT, [], 4, {"random_state": "42"}, 1, "minimize")
    b = alg.suggest(CONT, [], 4, {"random_state": "42"}, 2, "minimize")
    c = alg.suggest(CONT, [], 4, {"random_state": "43"}, 1, "minimize")
    assert a == b
    assert a != c


def test_history_length_changes_the_draws() -> None:
    alg = RandomSearch()
    first = alg.suggest(CONT, [], 2, {}, 1, "minimize").assignments
    history = [Trial("t0", first[0], "running")]
    assert alg.suggest(CONT, history, 2, {}, 1, "minimize").assignments != first


# --- deduplication and exhaustion ----------------------------------------------------------------------------


def test_finite_space_of_six_asked_for_ten() -> None:
    result = RandomSearch().suggest(SPACE, [], 10, {}, 0, "minimize")
    keys = {assignment_key(SPACE, a) for a in result.assignments}
    assert len(result.assignments) == 6 == len(keys)
    assert result.exhausted


def test_exhausted_only_when_nothing_is_left() -> None:
    alg = RandomSearch()
    part = alg.suggest(SPACE, [], 3, {}, 0, "minimize")
    assert len(part.assignments) == 3 and not part.exhausted
    history = [Trial(f"t{i}", a, "failed") for i, a in enumerate(part.assignments)]
    rest = alg.suggest(SPACE, history, 3, {}, 0, "minimize")
    assert rest.exhausted
    all_keys = {assignment_key(SPACE, a) for a in part.assignments + rest.assignments}
    assert len(all_keys) == 6
    done = alg.suggest(
        SPACE, history + [Trial("x", a, "pending") for a in rest.assignments], 2, {}, 0, "minimize"
    )
    assert done.assignments == [] and done.exhausted


def test_history_values_written_differently_count_as_used() -> None:
    history = [Trial(f"t{a}", {"a": f"{a}.0", "b": b}, "succeeded", 1.0) for a in (1, 2, 3) for b in "xy"]
    result = RandomSearch().suggest(SPACE, history, 3, {}, 0, "minimize")
    assert result.assignments == [] and result.exhausted


def test_points_outside_the_space_do_not_count_towards_exhaustion() -> None:
    history = [Trial(f"t{i}", {"a": str(10 + i), "b": "z"}, "succeeded", 1.0) for i in range(6)]
    result = RandomSearch().suggest(SPACE, history, 10, {}, 0, "minimize")
    assert len(result.assignments) == 6 and result.exhausted


def test_nearly_used_space_finds_the_last_free_points() -> None:
    space = SearchSpace((Parameter("a", "int", 0, 999),))
    history = [Trial(f"t{i}", {"a": str(i)}, "succeeded", 0.0) for i in range(1000) if i not in (17, 503)]
    result = RandomSearch().suggest(space, history, 5, {}, 0, "minimize")
    assert sorted(a["a"] for a in result.assignments) == ["17", "503"]
    assert result.exhausted


def test_continuous_space_never_exhausts_and_does_not_repeat() -> None:
    result = RandomSearch().suggest(CONT, [], 500, {}, 0, "minimize")
    assert len({a["lr"] for a in result.assignments}) == 500
    assert not result.exhausted
    assert space_size(CONT) is None


@settings(max_examples=300, deadline=None, database=None)
@given(
    lo=st.floats(-1e6, 1e6),
    step=st.floats(1e-3, 1e3),
    span_steps=st.floats(0.0, 500.0),
    u=st.floats(0.0, 1.0),
    dist=st.sampled_from(["uniform", "logUniform", "normal", "logNormal"]),
)
def test_stepped_values_stay_on_grid_and_in_bounds(
    lo: float, step: float, span_steps: float, u: float, dist: str
) -> None:
    if dist.startswith("log"):
        lo = abs(lo) + 1e-3
    hi = lo + span_steps * step
    p = Parameter("x", "double", lo, hi, step=step, distribution=dist)  # type: ignore[arg-type]
    value = float(from_unit(p, u))
    assert lo <= value <= hi
    k = (value - lo) / step
    assert math.isclose(k, round(k), rel_tol=1e-9, abs_tol=1e-6)


def test_int_step_must_be_whole() -> None:
    space = SearchSpace((Parameter("n", "int", 1, 10, step=2.5),))
    assert RandomSearch().validate(space, {}, None) == [
        "Param n: step must be a whole number for parameterType int"
    ]


def test_used_points_answer_as_the_full_key_set() -> None:
    # The continuous column is looked up first; the answer must match the set of every key.
    space = SearchSpace(
        (
            Parameter("x", "double", 0.0, 1.0),
            Parameter("n", "int", 1, 3),
            Parameter("c", "categorical", values=("a", "b")),
        )
    )
    history = [
        Trial("t0", {"x": "0.5", "n": "2", "c": "a"}, "succeeded", 1.0),
        Trial("t1", {"x": "0.25", "n": "2.0", "c": "b"}, "failed"),
        Trial("t2", {"n": "1", "c": "a"}, "succeeded", 1.0),
        Trial("t3", {"x": "oops", "n": "1", "c": "a"}, "succeeded", 1.0),
    ]
    used = UsedPoints(space, history)
    full = {assignment_key(space, t.assignment) for t in history}
    probes = [
        {"x": x, "n": n, "c": c}
        for x in ("0.5", "0.25", "0.75", "oops", "")
        for n in ("1", "2", "3")
        for c in ("a", "b")
    ]
    for a in probes:
        key = assignment_key(space, a)
        assert (key in used) == (key in full), a
    used.add(assignment_key(space, {"x": "0.75", "n": "3", "c": "b"}))
    assert ("0.75", "3", "b") in used and ("0.75", "3", "b") in used.all()


def test_a_continuous_point_already_in_history_is_not_suggested_again() -> None:
    # A history that already holds the next draw (a trial was deleted, then the same count came round again).
    first = RandomSearch().suggest(CONT, [], 3, {}, 0, "minimize").assignments
    history = [Trial(f"t{i}", a, "succeeded", 1.0) for i, a in enumerate(first)]
    nxt = RandomSearch().suggest(CONT, history, 1, {}, 0, "minimize").assignments[0]
    replaced = [*history[:2], Trial("again", nxt, "succeeded", 1.0)]
    again = RandomSearch().suggest(CONT, replaced, 1, {}, 0, "minimize").assignments[0]
    assert again != nxt
