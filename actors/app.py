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


async def run_actors(settings: Settings, url: str, kinds: Sequence[str], stop: asyncio.Event, *,
                     replicas: int = 1, ready: asyncio.Event | None = None) -> None:
    """Run ``replicas`` replicas of each kind in this process until ``stop`` is set."""
    unknown = [k for k in kinds if k not in ACTOR_KINDS]
    if unknown:
        raise ValueError(f"unknown actor kind(s) {', '.join(unknown)}; choose from {', '.join(ACTOR_KINDS)}")
    buses: list[Bus] = []
    services: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    try:
        for kind in kinds:
            for r in range(replicas):
                bus = await Bus.connect(url, name=f"natib-{kind}-{r}", log_max_age=settings.log_max_age)
                buses.append(bus)
                if len(buses) == 1:
                    await bus.ensure_topology()
                ctx = Context(bus=bus, store=EventStore(bus), settings=settings, stop=stop, replica=str(r))
                actor = ACTOR_KINDS[kind](ctx)
                services.append((f"{kind}-{r}", actor.run))  # type: ignore[attr-defined]
        if ready is not None:
            ready.set()
        await supervise(services, stop)
    finally:
        for bus in buses:
            await bus.close()
