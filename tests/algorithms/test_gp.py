"""Bayesian optimisation: Katib's settings and messages, the encoding, batches, pending trials and search quality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from natib.algorithms.gp import (
    _GP,
    DEFAULT_N_INITIAL_POINTS,
    BayesianOptimization,
    UnitEncoder,
    _neg_log_likelihood,
    _neg_log_posterior,
    _score,
    _score_grad,
    _tune,
)
from natib.algorithms.random import RandomSearch
from natib.algorithms.space import Assignment, Parameter, SearchSpace, Trial

PLANE = SearchSpace((Parameter("x", "double", -5.0, 5.0), Parameter("y", "double", -5.0, 5.0)))
BRANIN = SearchSpace((Parameter("x", "double", -5.0, 10.0), Parameter("y", "double", 0.0, 15.0)))
MIXED = SearchSpace(
    (
        Parameter("lr", "double", 1e-4, 1.0, distribution="logUniform"),
        Parameter("units", "int", 16, 256, step=16, distribution="logUniform"),
        Parameter("depth", "int", 1, 8),
        Parameter("momentum", "double", 0.5, 0.95, step=0.05),
        Parameter("batch", "discrete", values=("64", "16", "32")),
        Parameter("opt", "categorical", values=("sgd", "adam")),
    )
)


def quadratic(a: Assignment) -> float:
    return (float(a["x"]) - 1.0) ** 2 + (float(a["y"]) + 2.0) ** 2


def branin(a: Assignment) -> float:
    x1, x2 = float(a["x"]), float(a["y"])
    return (
        (x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2
        + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1)
        + 10
    )


def _history(space: SearchSpace, f, n: int, seed: int = 0) -> list[Trial]:  # type: ignore[no-untyped-def]
    points = RandomSearch().suggest(space, [], n, {}, seed, "minimize").assignments
    return [Trial(f"t{i}", a, "succeeded", f(a)) for i, a in enumerate(points)]


def _run(alg, space: SearchSpace, f, budget: int, batch: int, seed: int, settings: dict[str, str]) -> float:  # type: ignore[no-untyped-def]
    history: list[Trial] = []
    while len(history) < budget:
        for a in alg.suggest(space, history, batch, settings, seed, "minimize").assignments:
            history.append(Trial(f"t{len(history)}", a, "succeeded", f(a)))
    return min(t.objective for t in history if t.objective is not None)


# --- settings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"base_estimator": "SVM"}, "base_estimator SVM is not supported in Bayesian optimization"),
        ({"n_initial_points": "-1"}, "n_initial_points should be great or equal than zero"),
        ({"acq_func": "UCB"}, "acq_func UCB is not supported in Bayesian optimization"),
        ({"acq_optimizer": "adam"}, "acq_optimizer adam is not supported in Bayesian optimization"),
        ({"random_state": "-3"}, "random_state should be great or equal than zero"),
        ({"kappa": "2"}, "unknown setting kappa for algorithm bayesianoptimization"),
    ],
)
def test_katib_messages(settings: dict[str, str], message: str) -> None:
    assert BayesianOptimization().validate(PLANE, settings, None) == [message]


def test_unparsable_integer_setting() -> None:
    errors = BayesianOptimization().validate(PLANE, {"n_initial_points": "ten"}, None)
    assert len(errors) == 1 and errors[0].startswith("failed to validate n_initial_points(ten)")


def test_every_documented_value_is_accepted() -> None:
    alg = BayesianOptimization()
    for est in ("GP", "RF", "ET", "GBRT"):
        for acq in ("gp_hedge", "LCB", "EI", "PI", "EIps", "PIps"):
            for opt in ("auto", "sampling", "lbfgs"):
                settings = {"base_estimator": est, "acq_func": acq, "acq_optimizer": opt}
                assert alg.validate(PLANE, settings | {"n_initial_points": "0", "random_state": "4"}, 5) == []


def test_suggest_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="acq_func"):
        BayesianOptimization().suggest(PLANE, [], 1, {"acq_func": "nope"}, 0, "minimize")


# --- encoding -------------------------------------------------------------------------------------------------


def test_encoding_round_trips_and_snaps() -> None:
    enc = UnitEncoder(MIXED.parameters)
    assert enc.dim == 7  # five single columns and a two-column one-hot
    a = {"lr": "0.01", "units": "64", "depth": "3", "momentum": "0.75", "batch": "32", "opt": "adam"}
    x = enc.encode(a)
    assert x is not None
    decoded = enc.decode(x)
    assert decoded | {"lr": "0.01"} == a
    assert math.isclose(float(decoded["lr"]), 0.01)
    assert math.isclose(x[0], 0.5)  # 0.01 is the log midpoint of [1e-4, 1]
    assert math.isclose(x[4], 0.5)  # "32" is the middle of the ascending list
    rng = np.random.default_rng(0)
    snapped = enc.snap(rng.random((50, enc.dim)))
    for row in snapped:
        decoded = enc.decode(row)
        again = enc.encode(decoded)
        assert again is not None and np.allclose(again, row)


# --- behaviour ------------------------------------------------------------------------------------------------


def test_initial_points_are_random_then_model_guided() -> None:
    alg = BayesianOptimization()
    history = _history(PLANE, quadratic, 4)
    settings = {"n_initial_points": "6"}
    first = alg.suggest(PLANE, history, 2, settings, 1, "minimize").assignments
    assert first == RandomSearch().suggest(PLANE, history, 2, {}, 1, "minimize").assignments
    more = _history(PLANE, quadratic, 12)
    best = min(t.objective for t in more if t.objective is not None)
    guided = alg.suggest(PLANE, more, 1, settings, 1, "minimize").assignments[0]
    assert quadratic(guided) < best + 1.0


def test_deterministic_with_a_model() -> None:
    history = _history(MIXED, lambda a: float(a["lr"]) * float(a["depth"]), 12)
    alg = BayesianOptimization()
    first = alg.suggest(MIXED, history, 4, {}, 3, "minimize")
    assert first == alg.suggest(MIXED, history, 4, {}, 3, "minimize")
    assert first != alg.suggest(MIXED, history, 4, {}, 4, "minimize")


@pytest.mark.parametrize("estimator", ["GP", "RF", "ET", "GBRT"])
def test_batch_is_distinct_and_spread(estimator: str) -> None:
    history = _history(PLANE, quadratic, 12)
    out = BayesianOptimization().suggest(PLANE, history, 8, {"base_estimator": estimator}, 2, "minimize").assignments
    pts = np.array([[float(a["x"]), float(a["y"])] for a in out])
    assert len(pts) == 8
    gaps = [np.linalg.norm(pts[i] - pts[j]) for i in range(8) for j in range(i)]
    assert min(gaps) > 1e-3


def test_pending_trials_push_new_points_away() -> None:
    history = _history(PLANE, quadratic, 12)
    alg = BayesianOptimization()
    alone = alg.suggest(PLANE, history, 1, {"acq_func": "EI"}, 5, "minimize").assignments[0]
    pending = [*history, Trial("p", alone, "running")]
    after = alg.suggest(PLANE, pending, 1, {"acq_func": "EI"}, 5, "minimize").assignments[0]
    assert after != alone


def test_mixed_space_suggestions_are_valid() -> None:
    history = _history(MIXED, lambda a: -math.log(float(a["lr"])) + float(a["depth"]), 12)
    for est in ("GP", "RF"):
        out = BayesianOptimization().suggest(MIXED, history, 5, {"base_estimator": est}, 1, "maximize").assignments
        assert len(out) == 5
        for a in out:
            assert MIXED.get("opt").values.count(a["opt"]) == 1
            assert 16 <= int(a["units"]) <= 256 and int(a["units"]) % 16 == 0
            assert 1e-4 <= float(a["lr"]) <= 1.0
            k = (float(a["momentum"]) - 0.5) / 0.05
            assert math.isclose(k, round(k), abs_tol=1e-9)


def test_eips_behaves_as_ei() -> None:
    history = _history(PLANE, quadratic, 12)
    alg = BayesianOptimization()
    assert alg.suggest(PLANE, history, 2, {"acq_func": "EIps"}, 1, "minimize") == alg.suggest(
        PLANE, history, 2, {"acq_func": "EI"}, 1, "minimize"
    )


def test_maximize_searches_the_other_way() -> None:
    history = [Trial(t.name, t.assignment, t.status, -(t.objective or 0.0)) for t in _history(PLANE, quadratic, 15)]
    out = BayesianOptimization().suggest(PLANE, history, 1, {"acq_func": "EI"}, 1, "maximize").assignments[0]
    assert quadratic(out) < min(-(t.objective or 0.0) for t in history) + 1.0


def test_small_finite_space_is_exhausted_without_repeats() -> None:
    space = SearchSpace((Parameter("a", "int", 0, 2), Parameter("b", "categorical", values=("x", "y"))))
    history = [
        Trial(f"t{i}", a, "succeeded", float(i))
        for i, a in enumerate(RandomSearch().suggest(space, [], 3, {}, 0, "minimize").assignments)
    ]
    result = BayesianOptimization().suggest(space, history, 10, {"n_initial_points": "0"}, 0, "minimize")
    keys = {tuple(a.items()) for a in result.assignments} | {tuple(t.assignment.items()) for t in history}
    assert len(result.assignments) == 3 and len(keys) == 6 and result.exhausted


@pytest.mark.parametrize(("space", "f"), [(PLANE, quadratic), (BRANIN, branin)], ids=["quadratic", "branin"])
def test_beats_random_search_on_average(space: SearchSpace, f) -> None:  # type: ignore[no-untyped-def]
    settings = {"n_initial_points": "5"}
    bo = [_run(BayesianOptimization(), space, f, 20, 5, seed, settings) for seed in range(3)]
    rs = [_run(RandomSearch(), space, f, 20, 5, seed, {}) for seed in range(3)]
    assert np.mean(bo) < np.mean(rs)


def test_repeated_and_foreign_points_in_history() -> None:
    history = _history(PLANE, quadratic, 8)
    history += [
        Trial("dup", history[0].assignment, "succeeded", 3.0),
        Trial("bad", {"x": "nan?", "y": "1"}, "succeeded", 1.0),
    ]
    out = BayesianOptimization().suggest(PLANE, history, 3, {"n_initial_points": "0"}, 0, "minimize").assignments
    assert len(out) == 3


def test_likelihood_and_gradient_match_scikit_learn() -> None:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    rng = np.random.default_rng(0)
    x = rng.random((40, 4))
    y = np.sin(3 * x[:, 0]) + x[:, 1] ** 2 + 0.01 * rng.normal(size=40)
    y = (y - y.mean()) / y.std()
    amp, scales, noise = 1.3, np.array([0.3, 0.7, 2.0, 0.5]), 1e-2
    kernel = ConstantKernel(amp) * Matern(scales, nu=2.5) + WhiteKernel(noise)
    reference = GaussianProcessRegressor(kernel, optimizer=None).fit(x, y)
    value, grad = reference.log_marginal_likelihood(reference.kernel_.theta, eval_gradient=True)
    mine, my_grad = _neg_log_likelihood(np.log(np.array([amp, *scales, noise])), x, y)
    assert math.isclose(-value, mine, rel_tol=1e-9)
    assert np.allclose(-grad, my_grad, rtol=1e-7, atol=1e-9)


def test_tuning_finds_the_relevant_dimension() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((60, 3))
    y = np.sin(6 * x[:, 0])
    amp, scales, noise = _tune(x, (y - y.mean()) / y.std(), 0)
    # Only the first dimension matters: its length scale is short, the others run to the upper bound.
    assert scales[0] < 1.0 and min(scales[1:]) > 5.0
    assert noise < 1e-2 and amp > 0


def test_posterior_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(2)
    x = rng.random((25, 3))
    y = np.sin(4 * x[:, 0]) + x[:, 1] ** 2
    y = (y - y.mean()) / y.std()
    theta = np.log(np.array([1.2, 0.4, 0.9, 3.0, 1e-3]))
    value, grad = _neg_log_posterior(theta, x, y)
    h = 1e-6
    numeric = np.array(
        [(_neg_log_posterior(theta + h * e, x, y)[0] - _neg_log_posterior(theta - h * e, x, y)[0]) / (2 * h)
         for e in np.eye(len(theta))]
    )
    assert math.isfinite(value)
    assert np.allclose(grad, numeric, rtol=1e-4, atol=1e-5)


def test_acquisition_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((20, 3))
    y = np.cos(3 * x[:, 0]) + x[:, 2]
    y = (y - y.mean()) / y.std()
    model = _GP(x, y, 0, params=(1.0, np.array([0.3, 0.5, 0.8]), 1e-4))
    pts = rng.random((6, 3))
    mu, sd, dmu, dsd = model.predict_grad(pts)
    mu0, sd0 = model.predict(pts)
    assert np.allclose(mu, mu0) and np.allclose(sd, sd0)
    best = float(y.min())
    h = 1e-6
    for acq in ("EI", "PI", "LCB"):
        _, grad = _score_grad(acq, mu, sd, dmu, dsd, best)
        numeric = np.empty_like(grad)
        for k in range(3):
            up, down = pts.copy(), pts.copy()
            up[:, k] += h
            down[:, k] -= h
            numeric[:, k] = (_score(acq, *model.predict(up), best) - _score(acq, *model.predict(down), best)) / (2 * h)
        assert np.allclose(grad, numeric, rtol=1e-3, atol=1e-4), acq


def test_default_acquisition_is_expected_improvement() -> None:
    history = _history(PLANE, quadratic, 12)
    alg = BayesianOptimization()
    assert alg.suggest(PLANE, history, 2, {}, 1, "minimize") == alg.suggest(
        PLANE, history, 2, {"acq_func": "EI"}, 1, "minimize"
    )
    assert alg.suggest(PLANE, history, 2, {"acq_func": "gp_hedge"}, 1, "minimize") == alg.suggest(
        PLANE, history, 2, {"acq_func": "EI"}, 1, "minimize"
    )


def test_default_initial_points() -> None:
    alg = BayesianOptimization()
    history = _history(PLANE, quadratic, DEFAULT_N_INITIAL_POINTS - 1)
    assert alg.suggest(PLANE, history, 1, {}, 1, "minimize").assignments == RandomSearch().suggest(
        PLANE, history, 1, {}, 1, "minimize"
    ).assignments
    more = _history(PLANE, quadratic, DEFAULT_N_INITIAL_POINTS)
    assert alg.suggest(PLANE, more, 1, {}, 1, "minimize").assignments != RandomSearch().suggest(
        PLANE, more, 1, {}, 1, "minimize"
    ).assignments


def test_refines_branin_to_its_optimum() -> None:
    # With defaults, 40 sequential trials put Branin within 5e-3 of its minimum (0.397887) on every seed
    # (about 2e-4 on seeds 0 and 1; random search is near 0.8 at 50 trials).
    regrets = [_run(BayesianOptimization(), BRANIN, branin, 40, 1, seed, {}) - 0.397887 for seed in range(2)]
    assert max(regrets) < 5e-3
