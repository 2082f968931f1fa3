"""Snapshots of an experiment's fold: saved by the controller, used on restart, ignored when stale."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from natib.actors.app import ACTOR_KINDS, run_actors
from natib.actors.experiment import ExperimentController
from natib.messages import subjects
from natib.runtime.bus import Bus
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore
from tests.actors.test_wiring import experiment
from tests.conftest import eventually


async def test_snapshot_is_saved_reused_and_dropped(tmp_path: Path, nats_server: TestServer) -> None:
    ExperimentController.SNAPSHOT_EVERY = 20  # small, so a short run saves several
    settings = Settings(nats_url=nats_server.url, home=tmp_path / "home", ack_wait=5, drain_timeout=2)
    stop, ready = asyncio.Event(), asyncio.Event()
    actors = asyncio.create_task(run_actors(settings, nats_server.url, list(ACTOR_KINDS), stop, ready=ready))
    await ready.wait()
    bus = await Bus.connect(nats_server.url)
    try:
        reply = msgspec.json.decode(await bus.request(
            subjects.api("create"), msgspec.json.encode({"experiment": experiment("snap", 12)}), timeout=10))
        assert reply["ok"], reply

        async def finished() -> bool:
            return (await EventStore(bus).load("snap", fresh=True)).is_finished()

        await eventually(finished, timeout=60, interval=0.2)
        full = await EventStore(bus).load("snap", fresh=True)
        saved = await EventStore(bus).snapshot("snap")
        assert saved is not None and 0 < saved.last_seq <= full.last_seq
        restored = await EventStore(bus).load("snap")  # starts from the snapshot, then reads the rest
        assert restored.last_seq == full.last_seq and restored.katib_status() == full.katib_status()
        assert restored.trials.keys() == full.trials.keys()

        deleted = msgspec.json.decode(await bus.request(subjects.api("delete"), b'{"name": "snap"}', timeout=10))
        assert deleted["ok"]
        assert await EventStore(bus).snapshot("snap") is None, "a deleted experiment's snapshot is never used"
    finally:
        ExperimentController.SNAPSHOT_EVERY = 5000
        stop.set()
        await actors
        await bus.close()


async def test_a_stale_snapshot_is_ignored(nats_server: TestServer) -> None:
    bus = await Bus.connect(nats_server.url)
    try:
        await bus.ensure_topology()
        await bus.object_put(subjects.snapshot_name("gone"), b"\x93not a snapshot")
        assert await EventStore(bus).snapshot("gone") is None
        assert (await EventStore(bus).load("gone")).experiment is None
    finally:
        await bus.close()
