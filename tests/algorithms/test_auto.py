"""``auto`` picks an algorithm from the space and the history length."""

from __future__ import annotations

from natib.algorithms.auto import GP_HISTORY_LIMIT, AutoSearch, choose_algorithm
from natib.algorithms.registry import KNOWN_ALGORITHMS, get_algorithm
from natib.algorithms.space import Parameter, SearchSpace

NUMERIC = SearchSpace((Parameter("x", "double", -1.0, 1.0), Parameter("n", "int", 1.0, 9.0)))
MIXED = SearchSpace((Parameter("x", "double", -1.0, 1.0), Parameter("opt", "categorical", values=("a", "b"))))


def test_numeric_spaces_get_a_gaussian_process_then_tpe() -> None:
    if "bayesianoptimization" in KNOWN_ALGORITHMS:
        assert choose_algorithm(NUMERIC, 0) == "bayesianoptimization"
        assert choose_algorithm(NUMERIC, GP_HISTORY_LIMIT - 1) == "bayesianoptimization"
    assert choose_algorithm(NUMERIC, GP_HISTORY_LIMIT) == "multivariate-tpe"


def test_categorical_spaces_get_tpe() -> None:
    assert choose_algorithm(MIXED, 0) == "multivariate-tpe"


def test_auto_is_registered_and_delegates() -> None:
    auto = get_algorithm("auto")
    assert isinstance(auto, AutoSearch)
    direct = get_algorithm("multivariate-tpe").suggest(MIXED, [], 3, {}, 5, "minimize")
    assert auto.suggest(MIXED, [], 3, {}, 5, "minimize") == direct
    assert auto.validate(MIXED, {"sigma": "1"}, None) == ["unknown setting sigma for algorithm auto"]
