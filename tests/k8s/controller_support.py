"""Helpers for the k8s-controller and dbmanager tests: natib's actors in this process, and Katib objects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import yaml

from natib.actors.app import run_actors
from natib.messages import subjects
from natib.runtime.bus import Bus
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore

CORE = ("controller", "suggestion", "launcher", "collector")


@contextlib.asynccontextmanager
async def natib_actors(url: str, home: Path, kinds: Sequence[str] = CORE, **settings: Any) -> AsyncIterator[Settings]:
    """natib's actors running in this process against ``url`` until the block ends."""
    s = Settings(nats_url=url, home=home, ack_wait=5, drain_timeout=2, **settings)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_actors(s, url, list(kinds), stop, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield s
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def natib_state(url: str, name: str) -> Any:
    """The folded state of one natib experiment, read fresh from NATS."""
    bus = await Bus.connect(url)
    try:
        return await EventStore(bus).load(name, fresh=True)
    finally:
        await bus.close()


async def natib_request(url: str, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Call natib's request API as the CLI does."""
    bus = await Bus.connect(url)
    try:
        reply: dict[str, Any] = msgspec.json.decode(
            await bus.request(subjects.api(endpoint), msgspec.json.encode(payload), timeout=10))
        return reply
    finally:
        await bus.close()


def experiment(name: str, *, command: str = "echo score=$X", trials: int = 3, parallel: int = 2,
               collector: str = "StdOut", namespace: str = "default", extra_spec: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """A small Katib Experiment whose trials run ``command`` (``sh -c``) with parameter ``x`` in [0, 1] as ``$X``."""
    doc: dict[str, Any] = yaml.safe_load(f"""
apiVersion: kubeflow.org/v1beta1
kind: Experiment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  objective: {{type: maximize, objectiveMetricName: score}}
  algorithm: {{algorithmName: random}}
  maxTrialCount: {trials}
  parallelTrialCount: {parallel}
  metricsCollectorSpec: {{collector: {{kind: {collector}}}}}
  parameters:
    - {{name: x, parameterType: double, feasibleSpace: {{min: "0", max: "1"}}}}
  trialTemplate:
    primaryContainerName: main
    trialParameters: [{{name: x, reference: x}}]
    trialSpec:
      apiVersion: batch/v1
      kind: Job
      spec:
        template:
          spec:
            restartPolicy: Never
            containers:
              - name: main
                image: busybox
                command: [sh, -c, placeholder]
                env: [{{name: X, value: "${{trialParameters.x}}"}}]
""")
    containers = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"]
    containers[0]["command"][2] = command
    doc["spec"].update(extra_spec or {})
    return doc


@contextlib.asynccontextmanager
async def k8s_controller(url: str, home: Path, kube_url: str, **settings: Any) -> AsyncIterator[Any]:
    """natib's k8s-controller in this process, watching the emulated API server at ``kube_url``."""
    from natib.actors.base import Context
    from natib.actors.k8s_controller import KubeController

    bus = await Bus.connect(url)
    stop = asyncio.Event()
    s = Settings(nats_url=url, home=home, drain_timeout=2, **settings)
    actor = KubeController(Context(bus=bus, store=EventStore(bus), settings=s, stop=stop), host=kube_url)
    actor.WATCH_SECONDS = 3
    actor.RESYNC_SECONDS = 1.0
    actor.BACKOFF_SECONDS = 0.2
    task = asyncio.create_task(actor.run())
    try:
        for _ in range(200):
            if actor.ready() is None or task.done():
                break
            await asyncio.sleep(0.05)
        if task.done():
            task.result()
        assert actor.ready() is None, actor.ready()
        yield actor
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await bus.close()


@contextlib.asynccontextmanager
async def dbmanager(url: str, home: Path) -> AsyncIterator[int]:
    """natib's dbmanager actor in this process on a free loopback port; yields the port."""
    from natib.actors.base import Context
    from natib.actors.dbmanager import DBManager

    bus = await Bus.connect(url)
    stop = asyncio.Event()
    settings = Settings(nats_url=url, home=home, drain_timeout=1, request_timeout=3)
    actor = DBManager(Context(bus=bus, store=EventStore(bus), settings=settings, stop=stop), host="127.0.0.1", port=0)
    task = asyncio.create_task(actor.run())
    try:
        for _ in range(200):
            if actor.ready() is None or task.done():
                break
            await asyncio.sleep(0.05)
        if task.done():
            task.result()
        assert actor.bound_port
        yield actor.bound_port
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await bus.close()
