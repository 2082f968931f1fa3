"""A LaunchTrial redelivered to the launcher that is still following the trial ships its output once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from natib.actors.base import Context
from natib.actors.launcher.actor import H_EOF, LocalLauncher
from natib.messages import subjects
from natib.messages.commands import LaunchTrial
from natib.runtime.bus import Bus
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore


async def test_concurrent_deliveries_of_one_launch(tmp_path: Path, nats_server: TestServer) -> None:
    bus = await Bus.connect(nats_server.url)
    try:
        await bus.ensure_topology()
        settings = Settings(nats_url=nats_server.url, home=tmp_path / "home")
        launcher = LocalLauncher(Context(bus=bus, store=EventStore(bus), settings=settings, stop=asyncio.Event()))
        cmd = LaunchTrial(trial="redo-t1", primary_container_name="main", run_spec={
            "apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {"containers": [
                {"name": "main", "image": "x", "command": ["sh", "-c", "echo a; sleep 0.5; echo b"]}]}}}})
        follows = 0
        follow = launcher._follow

        async def counted(*args: object) -> None:
            nonlocal follows
            follows += 1
            await follow(*args)  # type: ignore[arg-type]

        launcher._follow = counted  # type: ignore[method-assign]
        first = asyncio.create_task(launcher.launch("redo", cmd))
        await asyncio.sleep(0.2)  # the second delivery arrives while the first follows the running trial
        second = asyncio.create_task(launcher.launch("redo", cmd))
        await asyncio.wait_for(asyncio.gather(first, second), 30)
        third = await asyncio.wait_for(launcher.launch("redo", cmd), 10)  # after the end: nothing to do
        assert third is None
        assert follows == 1, "the trial's output was followed (and shipped) by one handler only"
        messages = [raw async for raw in bus.read(subjects.LOGS_STREAM, subjects.trial_logs("redo", "redo-t1"))]
        output = b"".join(m.data for m in messages if not m.headers.get(H_EOF))
        assert output == b"a\nb\n"
        assert sum(1 for m in messages if m.headers.get(H_EOF)) == 1
    finally:
        await bus.close()
