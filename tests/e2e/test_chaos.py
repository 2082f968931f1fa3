"""Chaos: SIGKILL random actor processes throughout an experiment, or restart nats-server under it.

Each experiment's trials print a known series of metric lines, so the checks can prove that every
trial was created once, started once, reported every line it printed exactly once, and ended once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from natib.actors.base import Context
from natib.actors.launcher.actor import H_ATTEMPT, H_CHUNK, H_EXIT, H_OFFSET, LocalLauncher
from natib.actors.metrics.collector import MetricsCollector
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.commands import LaunchTrial
from natib.messages.spec import load_experiment
from natib.messages.state import ExperimentState
from natib.runtime.bus import Bus
from natib.runtime.errors import RetryableError
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore
from tests.conftest import NATIB, run_cli, wait_for

pytestmark = pytest.mark.slow

KINDS = ("controller", "suggestion", "launcher", "collector", "early-stopping")
STEPS = 3
OUTCOMES = ("trial.succeeded", "trial.failed", "trial.metrics-unavailable", "trial.killed", "trial.early-stopped")


def experiment(name: str, trials: int, parallel: int) -> str:
    """Random search; each trial (about 1.5 s) prints ``score=X.1`` .. ``score=X.3`` 0.5 s apart, then ``score=X``."""
    script = (f"for i in $(seq 1 {STEPS}); do echo score=${{trialParameters.x}}.$i; sleep 0.5; done; "
              "echo score=${trialParameters.x}")
    doc = {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "metadata": {"name": name},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": "score"},
            "algorithm": {"algorithmName": "random"},
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "maxTrialCount": trials, "parallelTrialCount": parallel,
            "parameters": [{"name": "x", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "100000"}}],
            "trialTemplate": {
                "primaryContainerName": "main", "trialParameters": [{"name": "x", "reference": "x"}],
                "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                    "containers": [{"name": "main", "image": "x", "command": ["sh", "-c"], "args": [script]}]}}}},
            },
        },
    }
    return yaml.safe_dump(doc)


def printed(x: str) -> list[float]:
    """The metric values a trial with parameter ``x`` prints, in order."""
    return [float(f"{x}.{i}") for i in range(1, STEPS + 1)] + [float(x)]


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a natib process in its own process group (so its whole group can be killed)."""
    return subprocess.Popen([NATIB, *argv], env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"),
                            start_new_session=True)


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal a process group started by ``spawn`` and reap its leader."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextmanager
def running(procs: dict[str, subprocess.Popen[bytes]]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Stop every process still in ``procs`` (gracefully) when the block ends, however it ends."""
    try:
        yield procs
    finally:
        for proc in procs.values():
            kill(proc, signal.SIGTERM)


def events(env: dict[str, str], name: str) -> list[dict[str, object]]:
    """The experiment's raw event log."""
    out = run_cli(env, "events", name, "-o", "json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def finished(env: dict[str, str], name: str) -> dict[str, object] | None:
    """The experiment's terminal condition from ``natib get``, or None while it runs."""
    out = run_cli(env, "get", "experiments", name, "-o", "json", timeout=60)
    if out.returncode != 0:
        return None
    for item in json.loads(out.stdout)["items"]:
        for c in item["status"].get("conditions") or []:
            if c["type"] in ("Succeeded", "Failed") and c["status"] == "True":
                return c
    return None


def completed(env: dict[str, str], name: str) -> int:
    """How many trials have an outcome."""
    out = run_cli(env, "events", name, "-o", "json")
    return sum(1 for line in out.stdout.splitlines() if json.loads(line)["body"]["type"] in OUTCOMES)




def check_log(env: dict[str, str], name: str, trials: int) -> dict[str, int]:
    """Every invariant of a clean run, on the event log; returns counts worth reporting."""
    log = events(env, name)
    body = [e["body"] for e in log]
    created = {b["trial"]: b["assignment"]["x"] for b in body if b["type"] == "trial.created"}
    created_names = [b["trial"] for b in body if b["type"] == "trial.created"]
    assert len(created_names) == trials == len(created), f"every trial created once: {Counter(created_names)}"

    starts = Counter((b["trial"], b.get("attempt", 1)) for b in body if b["type"] == "trial.started")
    twice = {k: n for k, n in starts.items() if n > 1}
    assert not twice, f"an attempt was started twice: {twice}"
    assert {t for t, _ in starts} == set(created), \
        f"trials without a trial.started: {sorted(set(created) - {t for t, _ in starts})}"
    reruns = {t: a for t, a in starts if a > 1}
    assert not reruns, f"trials were run again although their process survived every crash: {reruns}"

    outcomes = Counter(b["trial"] for b in body if b["type"] in OUTCOMES)
    assert set(outcomes.values()) == {1} and set(outcomes) == set(created), f"one outcome per trial: {outcomes}"
    succeeded = {b["trial"]: b for b in body if b["type"] == "trial.succeeded"}
    assert len(succeeded) == trials, \
        f"every trial succeeds: {[(b['trial'], b['type']) for b in body if b['type'] in OUTCOMES[1:]]}"

    metrics: dict[str, list[dict[str, object]]] = {}
    for b in body:
        if b["type"] == "trial.metric":
            metrics.setdefault(b["trial"], []).append(b)
    for trial, outcome in succeeded.items():
        mine = sorted((m for m in metrics.get(trial, []) if m.get("attempt", 1) == outcome.get("attempt", 1)),
                      key=lambda m: m["step"])
        steps = [m["step"] for m in mine]
        assert steps == list(range(len(steps))), f"{trial}: metric steps missing or repeated: {steps}"
        expect = printed(created[trial])
        assert [float(m["value"]) for m in mine] == expect, f"{trial}: metrics {mine} != printed {expect}"
        obs = {o["name"]: o for o in outcome["observation"]}["score"]
        assert (float(obs["min"]), float(obs["max"]), float(obs["latest"])) == \
            (min(expect), max(expect), expect[-1]), f"{trial}: observation {obs}"

    got = json.loads(run_cli(env, "get", "experiments", name, "-o", "json").stdout)["items"][0]["status"]
    assert got["trials"] == trials and got["trialsSucceeded"] == trials, got
    return {"events": len(log), "metrics": sum(len(v) for v in metrics.values())}


def check_replay(env: dict[str, str], name: str) -> None:
    """``natib replay NAME --verify`` must agree with the log, where this natib has the command."""
    if run_cli(env, "replay", "--help").returncode != 0:
        warnings.warn("`natib replay` does not exist in this build: the replay --verify check was skipped",
                      stacklevel=2)
        return
    out = run_cli(env, "replay", name, "--verify", timeout=120)
    assert out.returncode == 0, f"replay --verify failed:\n{out.stdout}\n{out.stderr}"


def test_sigkill_random_actors_throughout_an_experiment(tmp_path: Path, natib_env: dict[str, str]) -> None:
    trials, seed = 60, 20261127
    path = tmp_path / "chaos.yaml"
    path.write_text(experiment("chaos", trials, parallel=6))
    log = tmp_path / "actors.log"
    rng = random.Random(seed)
    kills: Counter[str] = Counter()
    # Seeded rounds, each a random order of all five kinds, so even a short run kills every kind.
    schedule: list[str] = []
    with running({kind: spawn(["actor", kind], natib_env, log) for kind in KINDS}) as procs:
        created = run_cli(natib_env, "create", "-f", str(path))
        assert created.returncode == 0, created.stderr
        deadline = time.monotonic() + 240
        next_kill = time.monotonic() + rng.uniform(2, 3)
        status = None
        while status is None:
            assert time.monotonic() < deadline, f"experiment unfinished after kills {dict(kills)}; see {log}"
            if time.monotonic() >= next_kill:
                schedule = schedule or rng.sample(KINDS, len(KINDS))
                kind = schedule.pop()
                kill(procs[kind])
                kills[kind] += 1
                procs[kind] = spawn(["actor", kind], natib_env, log)
                next_kill = time.monotonic() + rng.uniform(2, 3)
            status = finished(natib_env, "chaos")
            time.sleep(max(0.0, min(0.5, next_kill - time.monotonic())))
    assert status["reason"] == "ExperimentMaxTrialsReached", status
    counts = check_log(natib_env, "chaos", trials)
    print(f"chaos: kills {dict(kills)}, {counts}")
    assert len(kills) == len(KINDS), f"every kind must be killed at least once for this test to mean anything: {kills}"
    check_replay(natib_env, "chaos")


def test_nats_server_restart_mid_experiment(tmp_path: Path, natib_env: dict[str, str],
                                            nats_server: TestServer) -> None:
    trials = 30
    path = tmp_path / "restart.yaml"
    path.write_text(experiment("restart", trials, parallel=6))
    log = tmp_path / "up.log"
    with running({"up": spawn(["up"], natib_env, log)}):
        created = run_cli(natib_env, "create", "-f", str(path))
        assert created.returncode == 0, created.stderr
        wait_for(lambda: completed(natib_env, "restart") >= 8, 60, "eight finished trials")
        nats_server.restart()
        at_restart = completed(natib_env, "restart")
        status = wait_for(lambda: finished(natib_env, "restart"), 120, f"the experiment to finish; see {log}")
    assert status["reason"] == "ExperimentMaxTrialsReached", status
    assert at_restart < trials, "the restart must hit a running experiment for this test to mean anything"
    check_log(natib_env, "restart", trials)
    check_replay(natib_env, "restart")


# -- one failed publish, deterministically ---------------------------------------------------------------
# A nats-server restart makes a few publishes fail while the actor that made them lives on. These inject
# exactly one such failure and then redeliver the message, as the consumer does after the nak.

class FlakyStore(EventStore):
    """An event store whose first append of one message id fails as a publish during a server restart does."""

    def __init__(self, bus: Bus, fail_suffix: str) -> None:
        super().__init__(bus)
        self.fail_suffix = fail_suffix
        self.failed = False

    async def append_fact(self, experiment: str, subject: str, event: ev.Event, *, msg_id: str,
                          causation: str | None = None) -> int:
        """Fail once for the chosen message id, then behave."""
        if msg_id.endswith(self.fail_suffix) and not self.failed:
            self.failed = True
            raise RetryableError(f"publish to {subject} failed: NoStreamResponseError()")
        return await super().append_fact(experiment, subject, event, msg_id=msg_id, causation=causation)


async def trial_events(bus: Bus, experiment: str) -> list[ev.Event]:
    """Every event of the experiment, decoded."""
    out = []
    async for raw in bus.read(subjects.EVENTS_STREAM, subjects.experiment_events(experiment)):
        env = codec.decode(raw.data)
        assert env is not None
        out.append(env.body)
    return out


@pytest.mark.parametrize("fail", [":metric:0", ":outcome"])
async def test_collector_publish_fails_once(tmp_path: Path, nats_server: TestServer, fail: str) -> None:
    bus = await Bus.connect(nats_server.url)
    try:
        await bus.ensure_topology()
        exp = load_experiment(yaml.safe_load(experiment("flaky", 1, 1)))
        await EventStore(bus).append_decisions(ExperimentState("flaky"), [
            ev.ExperimentCreated(experiment=exp, uid="uid", seed=1)])
        log_subject = subjects.trial_log("flaky", "flaky-t1", "out")
        await bus.publish(log_subject, b"score=1.5\n", msg_id="c0",
                          headers={H_ATTEMPT: "1", H_CHUNK: "0", H_OFFSET: "10"})
        await bus.publish(subjects.trial_log("flaky", "flaky-t1"), b"", msg_id="c1",
                          headers={H_ATTEMPT: "1", H_CHUNK: "1", "Natib-Eof": "1", H_OFFSET: "0", H_EXIT: "0"})
        chunks = [raw async for raw in bus.read(subjects.LOGS_STREAM, subjects.trial_logs("flaky", "flaky-t1"))]
        store = FlakyStore(bus, fail)
        settings = Settings(nats_url=nats_server.url, home=tmp_path / "home")
        collector = MetricsCollector(Context(bus=bus, store=store, settings=settings, stop=asyncio.Event()))
        for raw in chunks:
            for _delivery in range(2):
                try:
                    await collector.on_chunk(raw)
                    break
                except RetryableError:
                    continue
        assert store.failed
        got = await trial_events(bus, "flaky")
        metrics = [e.value for e in got if isinstance(e, ev.MetricReported)]
        outcomes = [e for e in got if isinstance(e, ev.TrialSucceeded)]
        assert metrics == ["1.5"], f"the metric was recorded once: {metrics}"
        assert len(outcomes) == 1, f"the trial has its outcome: {got}"
    finally:
        await bus.close()


async def test_launcher_started_publish_fails_once(tmp_path: Path, nats_server: TestServer) -> None:
    bus = await Bus.connect(nats_server.url)
    try:
        await bus.ensure_topology()
        store = FlakyStore(bus, ":started:1")
        settings = Settings(nats_url=nats_server.url, home=tmp_path / "home")
        launcher = LocalLauncher(Context(bus=bus, store=store, settings=settings, stop=asyncio.Event()))
        cmd = LaunchTrial(trial="flaky-t1", primary_container_name="main", run_spec={
            "apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {"containers": [
                {"name": "main", "image": "x", "command": ["sh", "-c", "sleep 0.3; echo score=1"]}]}}}})
        with pytest.raises(RetryableError):
            await launcher.launch("flaky", cmd)
        await asyncio.wait_for(launcher.launch("flaky", cmd), 30)
        got = await trial_events(bus, "flaky")
        assert [e.attempt for e in got if isinstance(e, ev.TrialStarted)] == [1], f"started once: {got}"
    finally:
        await bus.close()
