"""The ask/tell library API over a Katib-style parameter list."""

from __future__ import annotations

import pytest

from natib.algorithms.registry import get_algorithm
from natib.algorithms.study import Study

PARAMS = [
    {"name": "x", "parameterType": "double", "feasibleSpace": {"min": "-5", "max": "5"}},
    {"name": "n", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "4"}},
    {"name": "kind", "parameterType": "categorical", "feasibleSpace": {"list": ["a", "b"]}},
]


def objective(params: dict[str, object]) -> float:
    return (float(params["x"]) - 1.0) ** 2 + (0.0 if params["kind"] == "a" else 1.0)  # type: ignore[arg-type]


def test_ask_tell_loop_improves_and_types_params() -> None:
    study = Study(PARAMS, algorithm="tpe", settings={"n_startup_trials": "5"}, seed=3)
    for _ in range(30):
        trial = study.ask()
        assert isinstance(trial.params["x"], float) and isinstance(trial.params["n"], int)
        assert trial.params["kind"] in ("a", "b")
        study.tell(trial, objective(trial.params))
    assert study.best is not None and study.best.value is not None and study.best.value < 0.5


def test_same_answers_as_the_algorithm_itself() -> None:
    study = Study(PARAMS, algorithm="random", seed=11)
    batch = study.ask_batch(4)
    direct = get_algorithm("random").suggest(study.space, [], 4, {}, 11, "minimize").assignments
    assert [t.assignment for t in batch] == direct


def test_bad_settings_and_exhaustion() -> None:
    with pytest.raises(ValueError, match="unknown setting sigma for algorithm random"):
        Study(PARAMS, algorithm="random", settings={"sigma": "1"})
    grid = Study([{"name": "n", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "2"}}], algorithm="grid")
    for t in grid.ask_batch(5):
        grid.tell(t, 0.0)
    assert grid.exhausted
    with pytest.raises(IndexError):
        grid.ask()
