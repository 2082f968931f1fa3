"""Every metrics collector kind through the real CLI: values are observed as the trial reports them."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli
from tests.e2e.test_cli import experiment_yaml, int_param, write

EXAMPLES = REPO / "examples"


def trials_of(env: dict[str, str], name: str) -> list[dict[str, object]]:
    """The experiment's trials as Katib Trial objects."""
    return json.loads(run_cli(env, "get", "trials", "-e", name, "-o", "json").stdout)["items"]


def metric_history(env: dict[str, str], trial: str) -> dict[str, object]:
    """``natib get metrics TRIAL -o json``."""
    out = run_cli(env, "get", "metrics", trial, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def small(tmp_path: Path, example: str, trials: int = 2) -> Path:
    """A copy of an example with a smaller budget, next to the original so relative paths still work."""
    doc = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    doc["spec"]["maxTrialCount"] = trials
    doc["spec"]["maxFailedTrialCount"] = 0
    doc["spec"]["parallelTrialCount"] = min(trials, doc["spec"]["parallelTrialCount"])
    doc["spec"]["parameters"] = [
        p if p["name"] != "epochs" else {**p, "feasibleSpace": {"min": "3", "max": "3"}}
        for p in doc["spec"]["parameters"]
    ]
    path = EXAMPLES / f".test-{example}-{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("example", ["file-text", "file-json", "tfevent", "push", "custom", "prometheus"])
def test_collector_kind_observes_every_epoch(example: str, tmp_path: Path, natib_env: dict[str, str]) -> None:
    path = small(tmp_path, example)
    try:
        run = run_cli(natib_env, "run", str(path), timeout=180)
    finally:
        path.unlink()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 succeeded" in run.stdout, run.stdout
    for trial in trials_of(natib_env, example):
        name = trial["metadata"]["name"]  # type: ignore[index]
        history = metric_history(natib_env, name)
        accuracy = [float(m["value"]) for m in history["metrics"] if m["name"] == "accuracy"]
        if example == "prometheus":
            # A scrape reports a value when it changes, so two equal epochs read as one report.
            assert 2 <= len(accuracy) <= 3, f"{example}: a report per changed epoch, got {history['metrics']}"
        else:
            assert len(accuracy) == 3, f"{example}: one report per epoch, got {history['metrics']}"
        observed = {m["name"]: m for m in trial["status"]["observation"]["metrics"]}  # type: ignore[index]
        assert float(observed["accuracy"]["max"]) == max(accuracy)
        assert float(observed["accuracy"]["min"]) == min(accuracy)
        assert float(observed["accuracy"]["latest"]) == accuracy[-1]
        assert "loss" in observed


def test_values_arrive_while_the_trial_runs(natib_env: dict[str, str], tmp_path: Path) -> None:
    # Each epoch is a second apart; metric events must be in the log before the trial ends.
    script = "for i in 1 2 3; do echo acc=0.${i}${trialParameters.x}; sleep 1; done"
    path = write(tmp_path, "live", experiment_yaml(
        "live", script, params=[int_param("x", 1, 9)], objective={"type": "maximize", "objectiveMetricName": "acc"},
        extra={"maxTrialCount": 1, "parallelTrialCount": 1},
    ))
    assert run_cli(natib_env, "run", str(path)).returncode == 0
    events = [json.loads(line) for line in run_cli(natib_env, "events", "live", "-o", "json").stdout.splitlines()]
    metric_times = [datetime.fromisoformat(e["time"]) for e in events if e["body"]["type"] == "trial.metric"]
    [done] = [datetime.fromisoformat(e["time"]) for e in events if e["body"]["type"] == "trial.succeeded"]
    assert len(metric_times) == 3
    assert (done - metric_times[0]).total_seconds() > 1.5, "the first value was reported mid-run"


def test_malformed_output_never_breaks_collection(natib_env: dict[str, str], tmp_path: Path) -> None:
    script = (
        "echo 'garbage ### score'; echo score=nan; echo score=inf; echo score=1e999; "
        "printf 'score=\\377\\376 bad bytes\\n'; head -c 10485760 /dev/zero | tr '\\0' 'x'; echo; "
        "echo score=0.${trialParameters.x}; echo 'score=' ; echo score=-0.5e-1"
    )
    path = write(tmp_path, "messy", experiment_yaml(
        "messy", script, params=[int_param("x", 1, 9)], objective={"type": "minimize", "objectiveMetricName": "score"},
        extra={"maxTrialCount": 2, "parallelTrialCount": 2},
    ))
    run = run_cli(natib_env, "run", str(path), timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 succeeded" in run.stdout
    for trial in trials_of(natib_env, "messy"):
        values = [m["value"] for m in metric_history(natib_env, trial["metadata"]["name"])["metrics"]]  # type: ignore[index]
        assert len(values) == 2 and values[1] == "-0.5e-1", values
        assert all(v not in ("nan", "inf", "1e999") for v in values)


def test_hyperband_early_stopping_stops_the_worst(natib_env: dict[str, str], tmp_path: Path) -> None:
    script = "for i in 1 2 3 4 5 6 7 8; do echo acc=${trialParameters.x}; sleep 0.1; done"
    doc = yaml.safe_load(experiment_yaml(
        "asha", script, algorithm="grid", objective={"type": "maximize", "objectiveMetricName": "acc"},
        params=[{"name": "x", "parameterType": "discrete", "feasibleSpace": {"list": ["0.9", "0.2", "0.8", "0.1"]}}],
        extra={"parallelTrialCount": 4, "earlyStopping": {"algorithmName": "hyperband", "algorithmSettings": [
            {"name": "eta", "value": "2"}, {"name": "min_resource", "value": "2"}]}},
    ))
    path = write(tmp_path, "asha", yaml.safe_dump(doc))
    run = run_cli(natib_env, "run", str(path), timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    stopped = {t["spec"]["parameterAssignments"][0]["value"]  # type: ignore[index]
               for t in trials_of(natib_env, "asha")
               if any(c["type"] == "EarlyStopped" for c in t["status"]["conditions"])}  # type: ignore[index]
    # Each rung keeps the top half of the trials that reached it: the best goes on, the worst do not.
    assert "0.9" not in stopped and stopped & {"0.1", "0.2"}, stopped


def test_file_directory_collects_every_file(natib_env: dict[str, str], tmp_path: Path) -> None:
    script = ("mkdir -p /katib/dir && echo 'acc=0.${trialParameters.x}1' > /katib/dir/a.log && "
              "echo 'acc=0.${trialParameters.x}2' > /katib/dir/b.log")
    path = write(tmp_path, "dirmc", experiment_yaml(
        "dirmc", script, params=[int_param("x", 1, 9)], objective={"type": "maximize", "objectiveMetricName": "acc"},
        extra={"maxTrialCount": 1, "parallelTrialCount": 1, "metricsCollectorSpec": {
            "collector": {"kind": "File"},
            "source": {"fileSystemPath": {"path": "/katib/dir", "kind": "Directory", "format": "TEXT"}}}},
    ))
    run = run_cli(natib_env, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    [trial] = trials_of(natib_env, "dirmc")
    values = sorted(m["value"] for m in metric_history(natib_env, trial["metadata"]["name"])["metrics"])  # type: ignore[index]
    assert len(values) == 2 and values[0].endswith("1") and values[1].endswith("2")
    assert not Path("/katib/dir/a.log").exists(), "the trial wrote into its own copy of the directory"


def test_early_stopping_works_with_push(natib_env: dict[str, str], tmp_path: Path) -> None:
    script = ("python -c \"import time, natib\n"
              "for step in range(6):\n"
              "    natib.report_metrics({'acc': ${trialParameters.x}}, step=step); time.sleep(0.1)\"")
    path = write(tmp_path, "pushstop", experiment_yaml(
        "pushstop", script, algorithm="grid", objective={"type": "maximize", "objectiveMetricName": "acc"},
        params=[{"name": "x", "parameterType": "discrete", "feasibleSpace": {"list": ["0.9", "0.8", "0.1"]}}],
        extra={"parallelTrialCount": 1, "metricsCollectorSpec": {"collector": {"kind": "Push"}},
               "earlyStopping": {"algorithmName": "medianstop", "algorithmSettings": [
                   {"name": "min_trials_required", "value": "2"}, {"name": "start_step", "value": "2"}]}},
    ))
    run = run_cli(natib_env, "run", str(path), timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 succeeded, 0 failed, 0 killed, 1 early stopped" in run.stdout
