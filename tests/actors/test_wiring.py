"""The actors wired to a real nats-server: replicas share work, bad messages are dead-lettered, not dropped."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import msgspec
import yaml

from natib.actors.app import ACTOR_KINDS, run_actors
from natib.messages import codec, subjects
from natib.runtime.bus import Bus
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore
from tests.conftest import eventually


def experiment(name: str, trials: int) -> dict[str, object]:
    """A quick random-search experiment whose trials print a score."""
    return yaml.safe_load(f"""
apiVersion: kubeflow.org/v1beta1
kind: Experiment
metadata: {{name: {name}}}
spec:
  objective: {{type: minimize, objectiveMetricName: score}}
  algorithm: {{algorithmName: random}}
  maxTrialCount: {trials}
  parallelTrialCount: 4
  parameters:
    - {{name: x, parameterType: double, feasibleSpace: {{min: "-1", max: "1"}}}}
  trialTemplate:
    primaryContainerName: main
    trialParameters: [{{name: x, reference: x}}]
    trialSpec:
      apiVersion: batch/v1
      kind: Job
      spec: {{template: {{spec: {{containers: [{{name: main, image: x,
        command: [sh, -c, "echo score=${{trialParameters.x}}"]}}]}}}}}}
""")


async def test_three_replicas_of_every_actor_share_one_experiment(tmp_path: Path,
                                                                  nats_server: TestServer) -> None:
    settings = Settings(nats_url=nats_server.url, home=tmp_path / "home", ack_wait=5, drain_timeout=2)
    stop, ready = asyncio.Event(), asyncio.Event()
    actors = asyncio.create_task(run_actors(settings, nats_server.url, list(ACTOR_KINDS), stop, replicas=3,
                                            ready=ready))
    await ready.wait()
    bus = await Bus.connect(nats_server.url)
    try:
        reply = msgspec.json.decode(await bus.request(
            subjects.api("create"), msgspec.json.encode({"experiment": experiment("replicas", 24)}), timeout=10))
        assert reply["ok"], reply
        store = EventStore(bus)

        async def finished() -> bool:
            return (await store.load("replicas", fresh=True)).is_finished()

        await eventually(finished, timeout=60, interval=0.2)
        state = await store.load("replicas", fresh=True)
        assert state.phase == "Succeeded"
        assert len(state.trials) == 24 and state.counts()["Succeeded"] == 24
        kinds: Counter[str] = Counter()
        async for raw in bus.read(subjects.EVENTS_STREAM, subjects.experiment_events("replicas")):
            env = codec.decode(raw.data)
            assert env is not None
            kinds[f"{type(env.body).__name__}:{getattr(env.body, 'trial', '')}"] += 1
        duplicated = {k: n for k, n in kinds.items() if n > 1 and not k.startswith(("MetricReported",
                                                                                   "SuggestionRequested",
                                                                                   "TrialsSuggested"))}
        assert duplicated == {}, f"work done twice: {duplicated}"
    finally:
        stop.set()
        await actors
        await bus.close()


async def test_garbage_commands_are_dead_lettered(tmp_path: Path, nats_server: TestServer) -> None:
    settings = Settings(nats_url=nats_server.url, home=tmp_path / "home", ack_wait=5, drain_timeout=2)
    stop, ready = asyncio.Event(), asyncio.Event()
    actors = asyncio.create_task(run_actors(settings, nats_server.url, list(ACTOR_KINDS), stop, ready=ready))
    await ready.wait()
    bus = await Bus.connect(nats_server.url)
    try:
        garbage = {
            subjects.command("launcher", "junk"): b"\x00not json",
            subjects.command("suggestion", "junk"): b'{"id": 1}',
            subjects.controller_event("junk", "experiment.created"): b'{"id": "x", "body": 7}',
            subjects.trial_event("junk", "junk-1", "trial.metric"): b"\xff\xfe truncated",
            subjects.trial_log("junk", "junk-1"): b"accuracy=1.0 without natib's headers",
        }
        for subject, data in garbage.items():
            await bus.publish(subject, data)

        async def parked() -> list[str]:
            out = []
            async for raw in bus.read(subjects.DEAD_LETTER_STREAM, subjects.DEAD_LETTER_ALL):
                out.append(raw.headers.get("Natib-Original-Subject", ""))
            return out if len(out) >= len(garbage) + 1 else []

        got = await eventually(parked, timeout=20, interval=0.2)
        # The metric event is read by two consumers (controller and early stopping), so it is parked twice.
        assert sorted(got) == sorted([*garbage, subjects.trial_event("junk", "junk-1", "trial.metric")])
        assert await bus.get_next(subjects.COMMANDS_STREAM, 1, subjects.COMMANDS_ALL) is None, \
            "dead-lettered commands leave the work queue"
        reply = msgspec.json.decode(await bus.request(
            subjects.api("create"), msgspec.json.encode({"experiment": experiment("after-garbage", 4)}), timeout=10))
        assert reply["ok"], reply
        store = EventStore(bus)

        async def finished() -> bool:
            return (await store.load("after-garbage", fresh=True)).is_finished()

        await eventually(finished, timeout=30, interval=0.2)
        assert (await store.load("after-garbage", fresh=True)).counts()["Succeeded"] == 4, "the actors kept running"
    finally:
        stop.set()
        await actors
        await bus.close()
