"""The replay debugger through the real CLI: fold, ``--until``, ``--verify``, and export/import between servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from natib.runtime.server import TestServer
from tests.conftest import run_cli
from tests.e2e.test_cli import experiment_yaml, int_param, write

NAME = "rp"
SCRIPT = "for i in 1 2 3 4 5 6; do echo score=$(( ${trialParameters.x} * i )); sleep 0.1; done"


@dataclass
class Installation:
    """A nats-server and the environment the CLI needs to use it."""

    server: TestServer
    env: dict[str, str]


@dataclass
class Recorded:
    """The finished experiment, its export file and the export's lines."""

    home: Installation
    export: Path
    lines: list[dict[str, Any]]


def installation(root: Path) -> Iterator[Installation]:
    with TestServer(root / "nats") as server:
        env = dict(os.environ)
        env.update({"NATS_URL": server.url, "NATIB_HOME": str(root / "home"), "NATIB_ACK_WAIT": "2",
                    "NATIB_LOG_FORMAT": "json", "NATIB_DRAIN_TIMEOUT": "3"})
        yield Installation(server, env)


def run_many(env: dict[str, str], *commands: list[str] | tuple[dict[str, str], list[str]]
             ) -> list[subprocess.CompletedProcess[str]]:
    """Run independent CLI commands at once, each in ``env`` unless given as (its env, its arguments)."""
    jobs = [c if isinstance(c, tuple) else (env, c) for c in commands]
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: run_cli(job[0], *job[1]), jobs))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """A tpe experiment with medianstop, run to the end, and its export with logs."""
    root = tmp_path_factory.mktemp("recorded")
    for home in installation(root):
        path = write(root, NAME, experiment_yaml(
            NAME, SCRIPT, algorithm="tpe", params=[int_param("x", 1, 50)],
            extra={"maxTrialCount": 6, "parallelTrialCount": 2,
                   "earlyStopping": {"algorithmName": "medianstop", "algorithmSettings": [
                       {"name": "min_trials_required", "value": "2"}, {"name": "start_step", "value": "3"}]}},
        ))
        run = run_cli(home.env, "run", str(path), "-q", timeout=90)
        assert run.returncode == 0, run.stdout + run.stderr
        exported = run_cli(home.env, "export", NAME, "--logs")
        assert exported.returncode == 0, exported.stderr
        export = root / "rp.jsonl"
        export.write_text(exported.stdout)
        yield Recorded(home, export, [json.loads(line) for line in exported.stdout.splitlines()])


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    """A second, empty installation to import into."""
    yield from installation(tmp_path_factory.mktemp("elsewhere"))


def body_type(line: dict[str, Any]) -> str:
    data = line.get("data")
    return str(data.get("body", {}).get("type", "")) if isinstance(data, dict) else ""


def test_replay_prints_the_state_the_controller_sees(recorded: Recorded) -> None:
    replay, got, text = run_many(recorded.home.env, ["replay", NAME, "-o", "json"],
                                 ["get", "experiments", "-o", "json"], ["replay", NAME])
    assert replay.returncode == 0, replay.stderr
    doc = json.loads(replay.stdout)
    [item] = json.loads(got.stdout)["items"]
    assert doc["experiment"]["status"] == item["status"]
    status = doc["experiment"]["status"]
    assert status["trials"] == 6 == len(doc["trials"])
    assert status["trialsSucceeded"] + status.get("trialsEarlyStopped", 0) == 6
    listed = status["succeededTrialList"] + status.get("earlyStoppedTrialList", [])
    assert sorted(listed) == sorted(t["metadata"]["name"] for t in doc["trials"])
    events = [line for line in recorded.lines[1:] if "stream" not in line]
    assert doc["last_seq"] == events[-1]["seq"] and doc["events_applied"] == len(events)
    alg = doc["algorithm"]
    assert alg["name"] == "tpe" and isinstance(alg["seed"], int) and alg["search_space"][0]["name"] == "x"
    assert len(alg["history"]) == 6 and all(h["status"] in ("succeeded", "early_stopped") for h in alg["history"])
    assert doc["pending_assignments"] == [] and all(r["answered"] for r in doc["requests"])

    assert text.returncode == 0, text.stderr
    assert "Succeeded   True   ExperimentMaxTrialsReached" in text.stdout
    assert "Counts:       6 trials" in text.stdout and "REQUEST" in text.stdout
    for t in doc["trials"]:
        assert t["metadata"]["name"] in text.stdout


def test_replay_until_shows_the_past(recorded: Recorded) -> None:
    first_trial = next(line["seq"] for line in recorded.lines[1:] if body_type(line) == "trial.created")
    before, at = run_many(recorded.home.env, ["replay", NAME, "--until", str(first_trial - 1), "-o", "json"],
                          ["replay", NAME, "--until", str(first_trial), "-o", "json"])
    assert json.loads(before.stdout)["trials"] == []
    doc = json.loads(at.stdout)
    assert doc["last_seq"] == first_trial and len(doc["trials"]) == 1
    assert doc["experiment"]["status"]["trialsPending"] == 1
    assert doc["trials"][0]["status"]["conditions"][0]["type"] == "Created"
    assert "Running" in [c["type"] for c in doc["experiment"]["status"]["conditions"]]
    assert not any(c["type"] == "Succeeded" for c in doc["experiment"]["status"]["conditions"])


def test_verify_reproduces_every_decision(recorded: Recorded) -> None:
    answers = sum(body_type(line) == "suggestion.made" for line in recorded.lines)
    metrics = sum(body_type(line) == "trial.metric" for line in recorded.lines)
    verify = run_cli(recorded.home.env, "replay", NAME, "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert re.search(rf"^{answers} suggestions and {metrics} early-stopping decisions reproduced \(\d+ to stop",
                     verify.stdout, re.MULTILINE), verify.stdout


def test_export_holds_every_event_and_log(recorded: Recorded) -> None:
    header, *lines = recorded.lines
    assert header["natib_export"] == 1 and header["experiment"] == NAME and header["exported_at"]
    events = [line for line in lines if "stream" not in line]
    logs = [line for line in lines if line.get("stream") == "logs"]
    assert events[0]["data"]["body"]["type"] == "experiment.created"
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert all(e["subject"].startswith(f"natib.evt.{NAME}.") and e["data"]["experiment"] == NAME for e in events)
    assert logs and all(line["subject"].startswith(f"natib.log.{NAME}.") for line in logs)


def test_import_elsewhere_verifies_and_describes(recorded: Recorded, elsewhere: Installation) -> None:
    imported = run_cli(elsewhere.env, "import", str(recorded.export))
    assert imported.returncode == 0, imported.stderr
    assert f"experiment.kubeflow.org/{NAME} imported" in imported.stdout
    trial = next(line["data"]["body"]["trial"] for line in recorded.lines[1:] if body_type(line) == "trial.created")
    verify, described, trials, original, listed, again, logs = run_many(
        elsewhere.env, ["replay", NAME, "--verify"], ["describe", "experiment", NAME],
        ["get", "trials", "-e", NAME, "-o", "json"], (recorded.home.env, ["get", "trials", "-e", NAME, "-o", "json"]),
        ["get", "experiments"], ["import", str(recorded.export)], ["logs", trial])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "suggestions and" in verify.stdout and "reproduced" in verify.stdout
    assert described.returncode == 0, described.stderr
    assert "ExperimentMaxTrialsReached" in described.stdout
    assert json.loads(trials.stdout)["items"] == json.loads(original.stdout)["items"]
    assert NAME in listed.stdout and "Succeeded" in listed.stdout
    assert again.returncode == 1 and "already exists" in again.stderr
    assert logs.returncode == 0 and "score=" in logs.stdout


def test_a_tampered_suggestion_fails_verification(recorded: Recorded, elsewhere: Installation,
                                                  tmp_path: Path) -> None:
    header, *lines = recorded.lines
    target = next(line for line in lines if body_type(line) == "suggestion.made")
    body = target["data"]["body"]
    value = body["assignments"][0]["x"]
    body["assignments"][0]["x"] = "50" if value != "50" else "1"
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(json.dumps(x) for x in [header, *lines]) + "\n")

    imported = run_cli(elsewhere.env, "import", str(tampered), "--as", "tampered")
    assert imported.returncode == 0, imported.stderr
    events, verify = run_many(elsewhere.env, ["events", "tampered", "-o", "json"], ["replay", "tampered", "--verify"])
    [new_seq] = [e["seq"] for e in map(json.loads, events.stdout.splitlines())
                 if e["body"]["type"] == "suggestion.made" and e["body"]["request"] == body["request"]]
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"seq {new_seq} (exported seq {target['seq']}): suggestion for request {body['request']}" in verify.stdout
    assert verify.stdout.count("\nseq ") + verify.stdout.startswith("seq ") == 1
    assert "1 mismatch;" in verify.stdout
