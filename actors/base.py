"""What every actor shares: the context it runs in and helpers to publish its outputs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from natib.messages import codec, subjects
from natib.messages.commands import Command
from natib.runtime.bus import Bus
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore


@dataclass
class Context:
    """The runtime an actor works in: the bus, the event store, settings and the stop signal."""

    bus: Bus
    store: EventStore
    settings: Settings
    stop: asyncio.Event
    replica: str = "0"


@dataclass(frozen=True)
class Outgoing:
    """A command an actor wants sent: to which actor, about which experiment, with which dedup id."""

    actor: str
    experiment: str
    command: Command
    msg_id: str


async def send(ctx: Context, out: Outgoing, *, causation: str | None = None) -> None:
    """Publish a command to its actor's work queue."""
    env = codec.wrap(out.experiment, out.command, id=out.msg_id, causation=causation)
    await ctx.bus.publish(subjects.command(out.actor, out.experiment), codec.encode(env), msg_id=out.msg_id)


def experiment_key(raw_subject: str) -> str | None:
    """Messages about one experiment are handled one at a time."""
    return subjects.experiment_of(raw_subject)
