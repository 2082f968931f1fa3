"""The compression examples end to end through the real ``natib run``, with tiny budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="natib.trials needs PyTorch: pip install -e '.[nas]'")
import yaml

from tests.conftest import REPO, run_cli

EXAMPLES = REPO / "examples" / "compression"
TINY = {"prune": ["--epochs=2"], "quantize": ["--epochs=2", "--repeats=3"],
        "distill": ["--epochs=2", "--teacher-epochs=2"]}


def tiny_copy(example: str, directory: Path, trials: int) -> Path:
    """A copy of the example with a small budget and short training (its trials need no file beside it)."""
    doc = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    doc["spec"].update(maxTrialCount=trials, parallelTrialCount=2, maxFailedTrialCount=0)
    container = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    container["command"] = [*container["command"], *TINY[example]]
    path = directory / f"{example}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("example", ["prune", "quantize", "distill"])
def test_compression_example_runs(example: str, tmp_path: Path, natib_env: dict[str, str]) -> None:
    trials = 3
    path = tiny_copy(example, tmp_path, trials)
    run = run_cli(natib_env, "run", str(path), "-q", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"trials: {trials} total, {trials} succeeded" in run.stdout
    assert "Succeeded" in run.stdout
    doc = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    name = doc["metadata"]["name"]
    wanted = {doc["spec"]["objective"]["objectiveMetricName"], *doc["spec"]["objective"]["additionalMetricNames"]}
    listing = json.loads(run_cli(natib_env, "get", "trials", "-e", name, "-o", "json").stdout)
    assert len(listing["items"]) == trials
    for trial in listing["items"]:
        observed = {m["name"]: float(m["latest"]) for m in trial["status"]["observation"]["metrics"]}
        assert wanted <= set(observed), (wanted, observed)
        if example == "prune":
            assert observed["nonzero_params"] < observed["baseline_nonzero_params"]
            assert 0.45 < observed["sparsity"] < 0.95
        elif example == "quantize":
            assert observed["size_bytes"] < observed["baseline_size_bytes"]
        else:
            assert observed["size_bytes"] < observed["teacher_size_bytes"]
    # the baseline or teacher was trained once and shared through the cache under NATIB_HOME
    cached = list((Path(natib_env["NATIB_HOME"]) / "cache").glob("*.pt"))
    assert len(cached) == 1, cached
