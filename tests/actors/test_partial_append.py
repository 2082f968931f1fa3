"""A batch of controller decisions that only partly lands before another writer must still be acted on.

The decisions of one reconcile are appended one by one, each conditional on the last. When another
controller replica appends in between, the rest of the batch is refused; the part that landed is a fact
that the other replica builds on, so the commands it implies (trial launches) are this replica's to send.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from natib.actors.base import Context, Outgoing
from natib.actors.experiment import Decision, ExperimentController, commands_for_landed
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.commands import LaunchTrial, StopTrial
from natib.runtime.bus import Bus
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore
from tests.actors.test_wiring import experiment


class RacedBus(Bus):
    """A bus on which another controller appends a decision of its own just before our second trial."""

    created = 0
    raced = False

    async def append(self, subject: str, data: bytes, **kwargs) -> int:  # type: ignore[no-untyped-def, override]
        if subject.endswith(".ctl.trial-created"):
            self.created += 1
            if self.created == 2 and not self.raced:
                self.raced = True
                env = codec.decode(data)
                assert env is not None and isinstance(env.body, ev.TrialCreated)
                # The other replica creates this very trial first (its own message id, so no deduplication).
                rival = codec.wrap(env.experiment, env.body, id=f"rival:{env.body.trial}")
                await super().append(subject, codec.encode(rival), msg_id=rival.id,
                                     expect_last_seq=kwargs["expect_last_seq"], expect_filter=kwargs["expect_filter"])
        return await super().append(subject, data, **kwargs)


async def launches(bus: Bus, name: str) -> list[str]:
    """The trials of every LaunchTrial command queued for ``name``."""
    out, seq = [], 1
    while (raw := await bus.get_next(subjects.COMMANDS_STREAM, seq, subjects.command("launcher", name))) is not None:
        env = codec.decode(raw.data)
        if env is not None and isinstance(env.body, LaunchTrial):
            out.append(env.body.trial)
        seq = raw.seq + 1
    return out


async def test_launches_of_a_partly_landed_batch_are_sent(tmp_path: Path, nats_server: TestServer) -> None:
    bus = await RacedBus.connect(nats_server.url)
    try:
        await bus.ensure_topology()
        settings = Settings(nats_url=nats_server.url, home=tmp_path / "home")
        controller = ExperimentController(Context(bus=bus, store=EventStore(bus), settings=settings,
                                                  stop=asyncio.Event()))
        reply = msgspec.json.decode(await controller.api_create(
            msgspec.json.encode({"experiment": experiment("raced", 8)})))
        assert reply["ok"], reply
        state = await EventStore(bus).load("raced", fresh=True)
        request = state.outstanding_request()
        assert request is not None and request.count == 4
        answer = ev.TrialsSuggested(request=request.request, algorithm="random", as_of=state.last_seq,
                                    assignments=[{"x": str(i / 10)} for i in range(4)])
        await EventStore(bus).append_fact("raced", subjects.suggestion_event("raced", request.request), answer,
                                          msg_id=f"answer:{request.request}")

        await controller.reconcile("raced")

        assert bus.raced, "the rival append must have happened for this test to mean anything"
        state = await EventStore(bus).load("raced", fresh=True)
        trials = sorted(state.trials.values(), key=lambda t: t.index)
        assert len(trials) == 4
        launched = await launches(bus, "raced")
        rival = trials[1].name  # created by the rival, whose launch is the rival's to send
        assert set(launched) == {t.name for t in trials} - {rival}, launched
        assert trials[0].name in launched, "the trial that landed before the race must be launched"
    finally:
        await bus.close()


def test_commands_for_landed_keep_only_what_landed() -> None:
    created = [ev.TrialCreated(trial=f"e-{i}", index=i, request=1, assignment={}, run_spec={}) for i in range(3)]
    # e-1 failed at creation (a template error), so it has no launch
    d = Decision(events=[created[0], created[1], ev.TrialFailed(trial="e-1", reason="TemplateError", message="m"),
                         created[2]])
    d.commands = [_launch(f"e-{i}") for i in (0, 2)]
    assert [c.command.trial for c in commands_for_landed(d, d.events[:1])] == ["e-0"]  # type: ignore[union-attr]
    assert [c.command.trial for c in commands_for_landed(d, d.events[:3])] == ["e-0"]  # type: ignore[union-attr]
    assert commands_for_landed(d, []) == []
    assert [c.command.trial for c in commands_for_landed(d, d.events)] == ["e-0", "e-2"]  # type: ignore[union-attr]
    stop = Decision(events=[ev.ExperimentSucceeded(reason="r", message="m")])
    stop.commands = [Outgoing("launcher", "e", StopTrial(trial="e-0", reason="Killed", message="m"), "id")]
    assert commands_for_landed(stop, stop.events) == stop.commands
    assert commands_for_landed(stop, []) == []


def _launch(trial: str) -> Outgoing:
    return Outgoing("launcher", "e", LaunchTrial(trial=trial, run_spec={}, primary_container_name="main"),
                    f"launch:{trial}")
