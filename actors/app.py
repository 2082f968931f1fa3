"""Assembles actors into a running process: connect, create the topology, run the chosen kinds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from natib.actors.base import Context
from natib.actors.early_stopping import EarlyStopper
from natib.actors.experiment import ExperimentController
from natib.actors.launcher.actor import launcher_for
from natib.actors.metrics.collector import MetricsCollector
from natib.actors.suggestion import SuggestionService
from natib.runtime.bus import Bus
from natib.runtime.health import HealthServer
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore
from natib.runtime.supervisor import supervise

ACTOR_KINDS: dict[str, Callable[[Context], object]] = {
    "controller": ExperimentController,
    "suggestion": SuggestionService,
    "launcher": launcher_for,
    "collector": MetricsCollector,
    "early-stopping": EarlyStopper,
}


def _k8s_controller(ctx: Context) -> object:
    from natib.actors.k8s_controller import KubeController

    return KubeController(ctx)


def _dbmanager(ctx: Context) -> object:
    from natib.actors.dbmanager import DBManager

    return DBManager(ctx)


#: Kinds that face Kubernetes or Katib clients: they run only when named (`natib actor k8s-controller`),
#: never as part of `natib up` or `natib run`.
KATIB_KINDS: dict[str, Callable[[Context], object]] = {
    "k8s-controller": _k8s_controller,
    "dbmanager": _dbmanager,
}


def readiness(actors: Sequence[tuple[str, Bus, object]], expected: int) -> str | None:
    """None when every actor is connected to NATS and serving, else why not (for ``/readyz``).

    An actor serves once its durable consumers (or request endpoints) are bound; an actor with its own
    ``ready()`` method (returning None or a reason) is asked instead.
    """
    if len(actors) < expected:
        return f"starting: {len(actors)} of {expected} actors connected to NATS"
    for name, bus, actor in actors:
        if not bus.nc.is_connected:
            return f"nats disconnected: {name}"
        check = getattr(actor, "ready", None)
        if callable(check):
            problem = check()
            if problem:
                return f"{name}: {problem}"
        elif not bus.bound:
            return f"consumers not bound yet: {name}"
    return None


async def run_actors(settings: Settings, url: str, kinds: Sequence[str], stop: asyncio.Event, *,
                     replicas: int = 1, ready: asyncio.Event | None = None, health_port: int | None = None) -> None:
    """Run ``replicas`` replicas of each kind in this process until ``stop`` is set.

    With ``health_port`` it also serves ``/healthz`` and ``/readyz`` (see `natib.runtime.health`) on that port.
    """
    factories = {**ACTOR_KINDS, **KATIB_KINDS}
    unknown = [k for k in kinds if k not in factories]
    if unknown:
        raise ValueError(f"unknown actor kind(s) {', '.join(unknown)}; choose from {', '.join(factories)}")
    buses: list[Bus] = []
    services: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    running: list[tuple[str, Bus, object]] = []
    health = None
    if health_port is not None:
        health = HealthServer(lambda: readiness(running, len(kinds) * replicas), port=health_port)
        await health.start()
    try:
        for kind in kinds:
            for r in range(replicas):
                bus = await Bus.connect(url, name=f"natib-{kind}-{r}", log_max_age=settings.log_max_age)
                buses.append(bus)
                if len(buses) == 1:
                    await bus.ensure_topology()
                ctx = Context(bus=bus, store=EventStore(bus), settings=settings, stop=stop, replica=str(r))
                actor = factories[kind](ctx)
                services.append((f"{kind}-{r}", actor.run))  # type: ignore[attr-defined]
                running.append((f"{kind}-{r}", bus, actor))
        if ready is not None:
            ready.set()
        await supervise(services, stop)
    finally:
        for bus in buses:
            await bus.close()
        if health is not None:
            await health.stop()
