"""The real ``natib`` command driving complete experiments: real trials, real NATS, real metric parsing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import NATIB, REPO, run_cli

EXAMPLES = REPO / "examples"


def experiment_yaml(name: str, script: str, *, params: list[dict[str, Any]], extra: dict[str, Any] | None = None,
                    objective: dict[str, Any] | None = None, algorithm: str = "random") -> str:
    """A small Experiment whose trial runs a shell script; every parameter is passed as a trialParameter."""
    spec: dict[str, Any] = {
        "objective": objective or {"type": "maximize", "objectiveMetricName": "score"},
        "algorithm": {"algorithmName": algorithm},
        "parameters": params,
        "trialTemplate": {
            "primaryContainerName": "main",
            "trialParameters": [{"name": p["name"], "reference": p["name"]} for p in params],
            "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c"], "args": [script]}],
            }}}},
        },
        **(extra or {}),
    }
    doc = {"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "metadata": {"name": name}, "spec": spec}
    return yaml.safe_dump(doc, sort_keys=False)


def int_param(name: str, lo: int, hi: int) -> dict[str, Any]:
    """An int parameter."""
    return {"name": name, "parameterType": "int", "feasibleSpace": {"min": str(lo), "max": str(hi)}}


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write an experiment file."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_run_example_to_completion_and_inspect(natib_env: dict[str, str]) -> None:
    run = run_cli(natib_env, "run", "examples/shell.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Succeeded (ExperimentMaxTrialsReached)" in run.stdout
    assert "best trial: shell-sh-" in run.stdout
    assert "a = 4" in run.stdout and "b = 3" in run.stdout and "latest=11.0000" in run.stdout

    got = run_cli(natib_env, "get", "experiments", "-o", "json")
    assert got.returncode == 0, got.stderr
    items = json.loads(got.stdout)["items"]
    [exp] = [i for i in items if i["metadata"]["name"] == "shell-sh"]
    status = exp["status"]
    assert status["trials"] == 12 and status["trialsSucceeded"] == 12
    assert len(status["succeededTrialList"]) == 12
    succeeded = [c for c in status["conditions"] if c["type"] == "Succeeded"]
    assert succeeded[0]["status"] == "True" and succeeded[0]["reason"] == "ExperimentMaxTrialsReached"
    running = [c for c in status["conditions"] if c["type"] == "Running"]
    assert running[0]["status"] == "False"
    best = status["currentOptimalTrial"]
    assert {p["name"]: p["value"] for p in best["parameterAssignments"]} == {"a": "4", "b": "3"}
    assert best["observation"]["metrics"][0] == {"name": "score", "min": "11.0000", "max": "11.0000",
                                                 "latest": "11.0000"}

    trials = json.loads(run_cli(natib_env, "get", "trials", "-e", "shell-sh", "-o", "json").stdout)["items"]
    names = [t["metadata"]["name"] for t in trials]
    assert len(names) == 12 == len(set(names))
    points = {tuple(p["value"] for p in t["spec"]["parameterAssignments"]) for t in trials}
    assert len(points) == 12, "grid search must not repeat a point"

    logs = run_cli(natib_env, "logs", best["bestTrialName"])
    assert logs.returncode == 0 and "score=11.0000" in logs.stdout

    events = run_cli(natib_env, "events", "shell-sh")
    lines = events.stdout.splitlines()
    assert "experiment.created" in lines[0] and "experiment.succeeded" in events.stdout
    assert sum("trial.created" in line for line in lines) == 12

    table = run_cli(natib_env, "get", "experiments")
    assert "shell-sh" in table.stdout and "Succeeded" in table.stdout

    described = run_cli(natib_env, "describe", "experiment", "shell-sh", "-o", "yaml")
    assert "currentOptimalTrial:" in described.stdout

    again = run_cli(natib_env, "run", "examples/shell.yaml")
    assert again.returncode == 1 and "already exists" in again.stderr

    deleted = run_cli(natib_env, "delete", "experiment", "shell-sh")
    assert deleted.returncode == 0, deleted.stderr
    assert "shell-sh" not in run_cli(natib_env, "get", "experiments").stdout


def test_grid_without_max_ends_with_suggestion_end(tmp_path: Path, natib_env: dict[str, str]) -> None:
    path = write(tmp_path, "grid-end", experiment_yaml(
        "grid-end", "echo score=${trialParameters.x}", algorithm="grid",
        params=[int_param("x", 1, 5)], extra={"parallelTrialCount": 2},
    ))
    run = run_cli(natib_env, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ExperimentSuggestionEndReached" in run.stdout
    assert "trials: 5 total, 5 succeeded" in run.stdout
    assert "x = 5" in run.stdout


def test_failing_trials_fail_the_experiment(tmp_path: Path, natib_env: dict[str, str]) -> None:
    path = write(tmp_path, "fails", experiment_yaml(
        "fails", "echo 'boom ${trialParameters.x}' >&2; exit 3",
        params=[int_param("x", 1, 100)],
        extra={"maxTrialCount": 6, "parallelTrialCount": 1, "maxFailedTrialCount": 2},
    ))
    run = run_cli(natib_env, "run", str(path))
    assert run.returncode == 1
    assert "Failed (ExperimentFailed): Experiment has failed because max failed count has reached" in run.stdout
    assert "trials: 2 total, 0 succeeded, 2 failed" in run.stdout
    trials = json.loads(run_cli(natib_env, "get", "trials", "-e", "fails", "-o", "json").stdout)["items"]
    failed = [c for t in trials for c in t["status"]["conditions"] if c["type"] == "Failed"]
    assert "exit code 3" in failed[0]["message"] and "boom" in failed[0]["message"]


def test_missing_metrics_are_metrics_unavailable(tmp_path: Path, natib_env: dict[str, str]) -> None:
    path = write(tmp_path, "quiet", experiment_yaml(
        "quiet", "echo nothing here ${trialParameters.x}",
        params=[int_param("x", 1, 100)], extra={"maxTrialCount": 3, "parallelTrialCount": 3},
    ))
    run = run_cli(natib_env, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 metrics unavailable" in run.stdout


def test_goal_stops_the_experiment_and_kills_running_trials(tmp_path: Path, natib_env: dict[str, str]) -> None:
    # Trial x=1 reaches the goal at once; the others sleep, so they are running when it is reached.
    path = write(tmp_path, "goal", experiment_yaml(
        "goal", "if [ ${trialParameters.x} = 1 ]; then echo score=10; else sleep 30; echo score=0; fi",
        algorithm="grid", objective={"type": "maximize", "goal": 5, "objectiveMetricName": "score"},
        params=[int_param("x", 1, 3)], extra={"parallelTrialCount": 3},
    ))
    run = run_cli(natib_env, "run", str(path), timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Succeeded (ExperimentGoalReached)" in run.stdout
    assert "1 succeeded, 0 failed, 2 killed" in run.stdout


def test_early_stopping_stops_hopeless_trials(tmp_path: Path, natib_env: dict[str, str]) -> None:
    script = "for i in 1 2 3 4 5 6; do echo accuracy=${trialParameters.x}; sleep 0.2; done"
    path = write(tmp_path, "es", experiment_yaml(
        "es", script, algorithm="grid", objective={"type": "maximize", "objectiveMetricName": "accuracy"},
        params=[{"name": "x", "parameterType": "discrete", "feasibleSpace": {"list": ["0.9", "0.8", "0.1", "0.2"]}}],
        extra={"parallelTrialCount": 1, "earlyStopping": {"algorithmName": "medianstop", "algorithmSettings": [
            {"name": "min_trials_required", "value": "2"}, {"name": "start_step", "value": "2"}]}},
    ))
    run = run_cli(natib_env, "run", str(path), timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 succeeded, 0 failed, 0 killed, 2 early stopped" in run.stdout
    trials = json.loads(run_cli(natib_env, "get", "trials", "-e", "es", "-o", "json").stdout)["items"]
    stopped = [t for t in trials if any(c["type"] == "EarlyStopped" for c in t["status"]["conditions"])]
    for t in stopped:
        latest = t["status"]["observation"]["metrics"][0]["latest"]
        assert latest in ("0.1", "0.2")


@pytest.mark.parametrize("name", ["random.yaml", "grid.yaml", "inline-python.yaml", "shell.yaml"])
def test_validate_accepts_examples(name: str, natib_env: dict[str, str]) -> None:
    result = run_cli(natib_env, "validate", str(EXAMPLES / name))
    assert result.returncode == 0, result.stdout
    assert "valid" in result.stdout


def test_validate_reports_every_error_with_path(tmp_path: Path, natib_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        apiVersion: kubeflow.org/v1beta1
        kind: Experiment
        metadata: {name: Bad_Name}
        spec:
          maxTrialCount: 0
          parallelTrialCount: 5
          objective: {type: maximise, objectiveMetricName: acc}
          algorithm: {algorithmName: random}
          parameters:
            - {name: lr, parameterType: double, feasibleSpace: {min: '0.5', max: '0.1'}}
          trialTemplate:
            primaryContainerName: main
            trialParameters: [{name: lr, reference: lr}]
            trialSpec:
              apiVersion: batch/v1
              kind: Job
              spec: {template: {spec: {containers: [{name: main, image: x, command: [echo, '${trialParameters.lr}']}]}}}
        """))
    good = EXAMPLES / "shell.yaml"
    result = run_cli(natib_env, "validate", str(good), str(bad))
    assert result.returncode == 1
    out = result.stdout
    assert "metadata.name: name must consist of lower case alphanumeric characters" in out
    assert "spec.maxTrialCount: must be greater than 0" in out
    assert "spec.objective.type: must be minimize or maximize" in out
    assert "spec.parameters[0].feasibleSpace" in out
    assert f"{good}: valid" in out


def test_run_refuses_features_natib_cannot_run_yet(tmp_path: Path, natib_env: dict[str, str]) -> None:
    doc = yaml.safe_load(experiment_yaml("from-cm", "true", params=[int_param("x", 1, 9)]))
    template = doc["spec"]["trialTemplate"]
    del template["trialSpec"]
    template["configMap"] = {"configMapName": "trial-templates", "configMapNamespace": "kubeflow",
                             "templatePath": "job.yaml"}
    template["successCondition"] = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
    template["failureCondition"] = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
    path = write(tmp_path, "from-cm", yaml.safe_dump(doc))
    assert run_cli(natib_env, "validate", str(path)).returncode == 0, "it is a valid Katib experiment"
    run = run_cli(natib_env, "run", str(path))
    assert run.returncode == 1
    assert "spec.trialTemplate.configMap: trial templates from ConfigMaps need the Kubernetes backend" in run.stderr


def test_output_into_a_closed_pipe_is_quiet(natib_env: dict[str, str]) -> None:
    import subprocess

    assert run_cli(natib_env, "run", "examples/shell.yaml", "-q").returncode == 0
    proc = subprocess.run(f"'{NATIB}' events shell-sh | head -1", shell=True, env=natib_env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert "experiment.created" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_parameter_values_never_reach_a_shell(tmp_path: Path, natib_env: dict[str, str]) -> None:
    marker = tmp_path / "pwned"
    doc = yaml.safe_load(experiment_yaml("inject", "unused", params=[{
        "name": "x", "parameterType": "categorical",
        "feasibleSpace": {"list": [f"$(touch {marker})", f"`touch {marker}`; touch {marker}"]}}],
        algorithm="grid"))
    container = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["python", "-c", "import sys; print('score=1'); print('arg=' + repr(sys.argv[1]))",
                            "${trialParameters.x}"]
    container.pop("args")
    run = run_cli(natib_env, "run", str(write(tmp_path, "inject", yaml.safe_dump(doc))))
    assert run.returncode == 0, run.stdout + run.stderr
    assert not marker.exists(), "a parameter value was run by a shell"
    for trial in json.loads(run_cli(natib_env, "get", "trials", "-e", "inject", "-o", "json").stdout)["items"]:
        logs = run_cli(natib_env, "logs", trial["metadata"]["name"]).stdout
        assert f"touch {marker}" in logs, logs


def test_readme_subscriber_prints_every_result(natib_env: dict[str, str]) -> None:
    import subprocess
    import time

    script = REPO / "examples" / "subscriber.py"
    assert run_cli(natib_env, "get", "experiments").returncode == 0  # natib's streams exist from here on
    sub = subprocess.Popen([str(Path(NATIB).parent / "python"), str(script), "shell-sh"], env=natib_env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert run_cli(natib_env, "run", "examples/shell.yaml", "-q").returncode == 0
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while len(lines) < 12 and time.monotonic() < deadline:
            lines.append(sub.stdout.readline())  # type: ignore[union-attr]
    finally:
        sub.kill()
        sub.wait(5)
    assert len(lines) == 12 and all(" TrialSucceeded {'score': " in line for line in lines), (
        lines, sub.stderr.read() if sub.stderr else "")
