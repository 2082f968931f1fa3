"""Budget edits and resume: `natib patch experiment` with Katib's rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import NATIB, run_cli
from tests.e2e.test_cli import experiment_yaml, int_param, write


def status(env: dict[str, str], name: str) -> dict[str, object]:
    """The experiment's Katib status."""
    items = json.loads(run_cli(env, "get", "experiments", name, "-o", "json").stdout)["items"]
    return items[0]["status"]  # type: ignore[no-any-return]


def finished(env: dict[str, str], name: str, trials: int, timeout: float = 60) -> dict[str, object]:
    """Wait until the experiment succeeded with ``trials`` trials."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(env, name)
        conds = {c["type"]: c for c in st.get("conditions", [])}  # type: ignore[union-attr]
        if conds.get("Succeeded", {}).get("status") == "True" and st.get("trials") == trials:
            return st
        time.sleep(0.2)
    raise AssertionError(f"{name} did not finish with {trials} trials: {status(env, name)}")


def resumable(tmp_path: Path, name: str, policy: str) -> Path:
    doc = yaml.safe_load(experiment_yaml(name, "echo score=${trialParameters.x}", params=[int_param("x", 1, 99)],
                                         extra={"maxTrialCount": 3, "parallelTrialCount": 3}))
    doc["spec"]["resumePolicy"] = policy
    return write(tmp_path, name, yaml.safe_dump(doc))


def test_raising_max_trials_restarts_a_long_running_experiment(tmp_path: Path, natib_env: dict[str, str]) -> None:
    up = subprocess.Popen([NATIB, "up"], env=natib_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        assert run_cli(natib_env, "create", "-f", str(resumable(tmp_path, "lr-resume", "LongRunning"))).returncode == 0
        finished(natib_env, "lr-resume", 3)
        patched = run_cli(natib_env, "patch", "experiment", "lr-resume", "--max-trials", "5", "--parallel", "2")
        assert patched.returncode == 0, patched.stderr
        assert "(restarting)" in patched.stdout
        st = finished(natib_env, "lr-resume", 5)
        assert st["trialsSucceeded"] == 5
        out = run_cli(natib_env, "events", "lr-resume", "-o", "json").stdout
        kinds = [json.loads(line)["body"]["type"] for line in out.splitlines()]
        kinds = [k.removeprefix("experiment.") for k in kinds if k.startswith("experiment.")]
        assert kinds == ["created", "running", "succeeded", "budget-changed", "running", "succeeded"], kinds
        lowered = run_cli(natib_env, "patch", "experiment", "lr-resume", "--max-trials", "4")
        assert lowered.returncode == 1
        assert "spec.maxTrialCount: must be greater than status.trials count" in lowered.stderr
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(20)


def test_never_policy_cannot_restart(tmp_path: Path, natib_env: dict[str, str]) -> None:
    run = run_cli(natib_env, "run", str(resumable(tmp_path, "never", "Never")))
    assert run.returncode == 0, run.stdout + run.stderr
    patched = run_cli(natib_env, "patch", "experiment", "never", "--max-trials", "6")
    assert patched.returncode == 1
    assert "Experiment can be restarted if it is in succeeded state by reaching max trials" in patched.stderr
    assert run_cli(natib_env, "patch", "experiment", "never").returncode == 1
