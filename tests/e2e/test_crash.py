"""Kill ``natib up`` with SIGKILL in the middle of an experiment, start it again, and check nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import NATIB, run_cli, wait_for

pytestmark = pytest.mark.slow

TRIALS = 12


def experiment(name: str) -> str:
    """Twelve trials of about three seconds each, three at a time."""
    script = "for i in $(seq 1 12); do echo step=$i; sleep 0.25; done; echo score=${trialParameters.x}"
    doc = {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "metadata": {"name": name},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": "score"},
            "algorithm": {"algorithmName": "random"},
            "maxTrialCount": TRIALS, "parallelTrialCount": 3,
            "parameters": [{"name": "x", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "1000"}}],
            "trialTemplate": {
                "primaryContainerName": "main", "trialParameters": [{"name": "x", "reference": "x"}],
                "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                    "containers": [{"name": "main", "image": "x", "command": ["sh", "-c"], "args": [script]}]}}}},
            },
        },
    }
    return yaml.safe_dump(doc)


def start_up(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``natib up`` in its own process group."""
    return subprocess.Popen([NATIB, "up"], env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"),
                            start_new_session=True)


def events(env: dict[str, str], name: str) -> list[dict[str, object]]:
    """The experiment's raw event log."""
    out = run_cli(env, "events", name, "-o", "json")
    return [json.loads(line) for line in out.stdout.splitlines()]




OUTCOMES = ("trial.succeeded", "trial.failed", "trial.metrics-unavailable")


def _progress(env: dict[str, str], name: str) -> tuple[int, int]:
    """(trials with an outcome, trials started and still running), from one read of the log."""
    log_events = events(env, name)
    done = {e["body"]["trial"] for e in log_events if e["body"]["type"] in OUTCOMES}
    running = {e["body"]["trial"] for e in log_events if e["body"]["type"] == "trial.started"} - done
    return len(done), len(running)


def test_sigkill_mid_experiment_then_resume(tmp_path: Path, natib_env: dict[str, str]) -> None:
    path = tmp_path / "crash.yaml"
    path.write_text(experiment("crash"))
    log = tmp_path / "up.log"
    up = start_up(natib_env, log)
    try:
        created = run_cli(natib_env, "create", "-f", str(path))
        assert created.returncode == 0, created.stderr
        # Kill as soon as one read of the log shows finished trials and trials still running: each trial lasts
        # about three seconds, far longer than the gap between that read and the kill.
        wait_for(lambda: _ready_to_kill(*_progress(natib_env, "crash")), 90, "three finished trials and one running")
        os.killpg(up.pid, signal.SIGKILL)
        up.wait(10)
        at_kill = events(natib_env, "crash")
        in_flight = {e["body"]["trial"] for e in at_kill if e["body"]["type"] == "trial.started"} - {
            e["body"]["trial"] for e in at_kill if e["body"]["type"] in ("trial.succeeded", "trial.failed")}
        up = start_up(natib_env, log)
        status = wait_for(lambda: _finished(natib_env), 120, "the experiment to finish")
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(20)

    assert status["reason"] == "ExperimentMaxTrialsReached", status
    log_events = events(natib_env, "crash")
    created_names = [e["body"]["trial"] for e in log_events if e["body"]["type"] == "trial.created"]
    assert len(created_names) == TRIALS == len(set(created_names)), "every trial created once"
    outcomes = Counter(e["body"]["trial"] for e in log_events
                       if e["body"]["type"] in OUTCOMES)
    assert sorted(outcomes) == sorted(created_names), "every trial has an outcome"
    assert set(outcomes.values()) == {1}, f"no outcome reported twice: {outcomes}"
    succeeded = [e for e in log_events if e["body"]["type"] == "trial.succeeded"]
    assert len(succeeded) == TRIALS, "re-attached trials keep their result"
    starts = Counter((e["body"]["trial"], e["body"].get("attempt", 1)) for e in log_events
                     if e["body"]["type"] == "trial.started")
    assert all(n == 1 for n in starts.values()), "no attempt started twice"
    assert in_flight, "the kill must hit running trials for this test to mean anything"
    for name in in_flight:
        assert starts[(name, 1)] == 1 and (name, 2) not in starts, f"{name} was re-attached, not rerun"
    for e in succeeded:
        metrics = {m["name"]: m for m in e["body"]["observation"]}
        assert metrics["score"]["latest"] != "unavailable"
    got = json.loads(run_cli(natib_env, "get", "experiments", "-o", "json").stdout)["items"][0]["status"]
    assert got["trials"] == TRIALS and got["trialsSucceeded"] == TRIALS


def _ready_to_kill(done: int, running: int) -> bool:
    return done >= 3 and running >= 1


def _finished(env: dict[str, str]) -> dict[str, object] | None:
    out = run_cli(env, "get", "experiments", "-o", "json")
    if out.returncode != 0:
        return None
    items = json.loads(out.stdout)["items"]
    for c in items[0]["status"]["conditions"] if items else []:
        if c["type"] in ("Succeeded", "Failed") and c["status"] == "True":
            return c
    return None
