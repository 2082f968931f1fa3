"""Both NAS examples through the real CLI: real trial processes, real metrics parsing, replay, and an ENAS
experiment whose suggestion actor is killed and restarted midway."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import NATIB, REPO, run_cli, wait_for

pytest.importorskip("torch", reason="the NAS algorithms and trial programs need the nas extra")

EXAMPLES = REPO / "examples"


def tiny(example: str, tmp_path: Path, **spec: Any) -> Path:
    """A copy of an example with a smaller budget."""
    doc = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    doc["spec"].update(spec)
    container = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    container["command"] = [a.replace("--num_epochs=2", "--num_epochs=1") for a in container["command"]]
    if example == "darts":
        doc["spec"]["algorithm"]["algorithmSettings"] = [
            {"name": "num_epochs", "value": "1"}, {"name": "num_nodes", "value": "1"},
            {"name": "init_channels", "value": "2"}, {"name": "stem_multiplier", "value": "1"}]
    path = tmp_path / f"{example}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def describe(env: dict[str, str], name: str) -> dict[str, Any]:
    out = run_cli(env, "describe", "experiment", name, "-o", "json")
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.slow
def test_darts_example_succeeds_with_a_genotype(tmp_path: Path, natib_env: dict[str, str]) -> None:
    run = run_cli(natib_env, "run", str(tiny("darts", tmp_path)), "-q", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "experiment darts-digits Succeeded" in run.stdout
    status = describe(natib_env, "darts-digits")["status"]
    metrics = {m["name"]: m for m in status["currentOptimalTrial"]["observation"]["metrics"]}
    genotype = metrics["Best-Genotype"]["latest"]
    assert genotype.startswith("Genotype(normal=[[(") and genotype.endswith("reduce_concat=range(2, 3))")
    assert 0.0 <= float(metrics["Validation-Accuracy"]["latest"]) <= 1.0
    params = {p["name"]: p["value"] for p in status["currentOptimalTrial"]["parameterAssignments"]}
    assert params["num-layers"] == "2"
    assert params["search-space"] == "['separable_convolution_3x3', 'max_pooling_3x3', 'skip_connection']"
    assert run_cli(natib_env, "replay", "darts-digits", "--verify").returncode == 0


def suggestions(env: dict[str, str], name: str) -> list[dict[str, Any]]:
    out = run_cli(env, "events", name, "-o", "json")
    return [e["body"] for e in map(json.loads, out.stdout.splitlines()) if e["body"]["type"] == "suggestion.made"]


@pytest.mark.slow
def test_enas_example_succeeds_and_replays(tmp_path: Path, natib_env: dict[str, str]) -> None:
    run = run_cli(natib_env, "run", str(tiny("enas", tmp_path, maxTrialCount=4)), "-q", timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "trials: 4 total, 4 succeeded" in run.stdout
    made = suggestions(natib_env, "enas-digits")
    assert {m["algorithm"] for m in made} == {"enas"}
    assert made[-1]["labels"][0]["enas.natib/round"] != "0"  # later requests learnt from results
    for m in made:
        for a in m["assignments"]:
            assert set(a) == {"architecture", "nn_config"}
            assert json.loads(a["architecture"])[0][0] in range(12)
    verify = run_cli(natib_env, "replay", "enas-digits", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{len(made)} suggestions" in verify.stdout


def start(env: dict[str, str], kind: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([NATIB, "actor", kind], env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"),
                            start_new_session=True)




@pytest.mark.slow
def test_enas_replays_after_the_suggestion_actor_restarts(tmp_path: Path, natib_env: dict[str, str]) -> None:
    path = tiny("enas", tmp_path, maxTrialCount=4, parallelTrialCount=1)
    procs = {kind: start(natib_env, kind, tmp_path / f"{kind}.log")
             for kind in ("controller", "launcher", "collector", "suggestion")}
    try:
        assert run_cli(natib_env, "create", "-f", str(path)).returncode == 0
        wait_for(lambda: len(suggestions(natib_env, "enas-digits")) >= 2, 200, "two suggestions")
        procs["suggestion"].send_signal(signal.SIGKILL)
        procs["suggestion"].wait(10)
        procs["suggestion"] = start(natib_env, "suggestion", tmp_path / "suggestion-2.log")
        wait_for(lambda: describe(natib_env, "enas-digits")["status"].get("completionTime"), 300, "the end")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    status = describe(natib_env, "enas-digits")["status"]
    assert status["trials"] == 4 and status.get("trialsSucceeded") == 4, status
    assert len(suggestions(natib_env, "enas-digits")) == 4
    assert "suggestion_made" in (tmp_path / "suggestion-2.log").read_text()  # the restarted actor answered
    verify = run_cli(natib_env, "replay", "enas-digits", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "4 suggestions" in verify.stdout
