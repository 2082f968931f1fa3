"""Every algorithm's example experiment through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

EXAMPLES = REPO / "examples"


def copy_with(example: str, tag: str, **spec: object) -> Path:
    """A copy of an example next to it (so relative paths work) with some spec fields replaced."""
    doc = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    doc["spec"].update(spec)
    for p in doc["spec"]["parameters"]:
        if p["name"] == "epochs" and example not in ("hyperband", "successive-halving"):
            p["feasibleSpace"] = {"min": "2", "max": "3"}
    path = EXAMPLES / f".test-{example}-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("example", ["sobol", "tpe", "multivariate-tpe", "bayesianoptimization", "cmaes", "pbt",
                                     "auto"])
def test_algorithm_example_runs(example: str, tmp_path: Path, natib_env: dict[str, str]) -> None:
    budget = {"pbt": 10, "cmaes": 8}.get(example, 8)
    path = copy_with(example, tmp_path.name, maxTrialCount=budget, maxFailedTrialCount=0)
    try:
        run = run_cli(natib_env, "run", str(path), "-q", timeout=300)
    finally:
        path.unlink()
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"trials: {budget} total, {budget} succeeded" in run.stdout
    name = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())["metadata"]["name"]
    events = [json.loads(line) for line in run_cli(natib_env, "events", name, "-o", "json").stdout.splitlines()]
    answers = [e["body"] for e in events if e["body"]["type"] == "suggestion.made"]
    for answer in answers:
        points = [tuple(sorted(a.items())) for a in answer["assignments"]]
        assert len(points) == len(set(points)), f"a batch repeats a point: {answer}"
    chosen = {a["algorithm"] for a in answers}
    assert chosen == ({"multivariate-tpe"} if example == "auto" else {example}), chosen


@pytest.mark.slow
@pytest.mark.parametrize("example", ["hyperband", "successive-halving"])
def test_hyperband_ends_by_itself(example: str, tmp_path: Path, natib_env: dict[str, str]) -> None:
    path = copy_with(example, tmp_path.name, parallelTrialCount=8)
    try:
        run = run_cli(natib_env, "run", str(path), "-q", timeout=300)
    finally:
        path.unlink()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ExperimentSuggestionEndReached" in run.stdout
