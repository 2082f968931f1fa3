"""Experiment event log access: folded state with incremental catch-up, and conditional appends."""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.codec import UndecodableMessage
from natib.messages.state import ExperimentState
from natib.runtime.bus import Bus, RawMessage, WrongLastSequence
from natib.runtime.logging import get_logger

log = get_logger("natib.store")

_snapshot_decoder = msgspec.msgpack.Decoder(ExperimentState)


def apply_raw(state: ExperimentState, raw: RawMessage) -> None:
    """Decode one stored event and fold it into ``state`` (unknown or garbage events are skipped)."""
    try:
        env = codec.decode(raw.data)
    except UndecodableMessage as exc:
        log.warning("event_undecodable", subject=raw.subject, seq=raw.seq, error=str(exc))
        env = None
    if env is None or not isinstance(env.body, ev.Event):
        state.last_seq = max(state.last_seq, raw.seq)
        return
    state.apply(raw.seq, raw.subject, env.time, env.body)


class EventStore:
    """Reads experiments' folded state from NATIB_EVENTS and appends events to them.

    Folded states are cached per experiment and brought up to date by reading only the events
    after the cached sequence, so each actor pays for an experiment's history once.
    """

    def __init__(self, bus: Bus, *, cache_size: int = 256) -> None:
        self.bus = bus
        self._cache: OrderedDict[str, ExperimentState] = OrderedDict()
        self._cache_size = cache_size
        self._history: dict[str, ExperimentState] = {}

    async def load(self, experiment: str, *, until_seq: int | None = None, fresh: bool = False) -> ExperimentState:
        """The experiment's state with every stored event (or those up to ``until_seq``) applied."""
        if until_seq is not None:
            return await self._fold_new(experiment, until_seq)
        state = None if fresh else self._cache.get(experiment)
        if state is None:
            state = await self.snapshot(experiment) or ExperimentState(experiment)
        elif await self._catch_up_directly(experiment, state):
            self._remember(experiment, state)
            return state
        async for raw in self.bus.read(subjects.EVENTS_STREAM, subjects.experiment_events(experiment),
                                       start_seq=state.last_seq + 1):
            apply_raw(state, raw)
        self._remember(experiment, state)
        return state

    async def _catch_up_directly(self, experiment: str, state: ExperimentState, *, limit: int = 32,
                                 until_seq: int | None = None) -> bool:
        """Apply a few new events by direct gets; False if more remain (a stream read is cheaper then)."""
        for _ in range(limit):
            raw = await self.bus.get_next(subjects.EVENTS_STREAM, state.last_seq + 1,
                                          subjects.experiment_events(experiment))
            if raw is None or (until_seq is not None and raw.seq > until_seq):
                return True
            apply_raw(state, raw)
        return False

    async def _fold_new(self, experiment: str, until_seq: int) -> ExperimentState:
        cached = self._history.get(experiment)
        if cached is not None and cached.last_seq <= until_seq:
            state = cached
        else:
            state = ExperimentState(experiment)
        if not await self._catch_up_directly(experiment, state, until_seq=until_seq):
            async for raw in self.bus.read(subjects.EVENTS_STREAM, subjects.experiment_events(experiment),
                                           start_seq=state.last_seq + 1, until_seq=until_seq):
                apply_raw(state, raw)
        self._history[experiment] = state
        while len(self._history) > self._cache_size:
            self._history.pop(next(iter(self._history)))
        return state

    async def snapshot(self, experiment: str) -> ExperimentState | None:
        """The last saved fold of an experiment, if it still matches the log (a deleted-and-recreated
        experiment, or a log that was purged, makes it useless)."""
        data = await self.bus.object_get(subjects.snapshot_name(experiment))
        if not data:
            return None
        try:
            state = _snapshot_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("snapshot_unreadable", experiment=experiment, error=str(exc))
            return None
        first = await self.bus.get_next(subjects.EVENTS_STREAM, 1, subjects.controller_events(experiment))
        if first is None or state.last_seq < first.seq or not state.uid or first.data.find(state.uid.encode()) < 0:
            return None
        return state

    async def save_snapshot(self, state: ExperimentState) -> None:
        """Save the fold so a restart reads only the events after it."""
        await self.bus.object_put(subjects.snapshot_name(state.name), msgspec.msgpack.encode(state))

    def cached_names(self) -> list[str]:
        """The experiments whose folded state is cached here."""
        return list(self._cache)

    def cached_seq(self, experiment: str) -> int:
        """The last sequence folded into the cached state of an experiment (0 when not cached)."""
        state = self._cache.get(experiment)
        return state.last_seq if state else 0

    def _remember(self, experiment: str, state: ExperimentState) -> None:
        self._cache[experiment] = state
        self._cache.move_to_end(experiment)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self, experiment: str) -> None:
        """Drop a cached state (after a lost conditional append, or a delete)."""
        self._cache.pop(experiment, None)
        self._history.pop(experiment, None)

    async def append_decisions(self, state: ExperimentState, decisions: list[ev.Event], *,
                               causation: str | None = None) -> list[int]:
        """Append controller decisions conditionally on the state's last controller event.

        Raises WrongLastSequence when another writer got there first, with the decisions that had already
        landed in its ``appended``; the caller acts on those, reloads and decides again. Each event's message
        id is derived from the experiment uid and the decision, so a retried append of the same decision is
        deduplicated.
        """
        seqs: list[int] = []
        for event in decisions:
            kind = ev.event_type(event)
            env = codec.wrap(state.name, event, id=decision_id(state, event), causation=causation)
            try:
                seq = await self.bus.append(
                    subjects.controller_event(state.name, kind), codec.encode(env), msg_id=env.id,
                    expect_last_seq=state.last_controller_seq, expect_filter=subjects.controller_events(state.name),
                )
            except WrongLastSequence as exc:
                exc.appended = list(zip(decisions, seqs, strict=False))
                raise
            if seq == state.last_seq + 1:
                state.apply(seq, subjects.controller_event(state.name, kind), env.time, event)
            else:
                # Other actors' facts landed in between: fold them first, in log order.
                await self._catch_up_directly(state.name, state, limit=1 << 30, until_seq=seq)
            seqs.append(seq)
        return seqs

    async def append_fact(self, experiment: str, subject: str, event: ev.Event, *, msg_id: str,
                          causation: str | None = None) -> int:
        """Append a fact reported by a non-controller actor (deduplicated by ``msg_id``)."""
        env = codec.wrap(experiment, event, id=msg_id, causation=causation)
        return await self.bus.publish(subject, codec.encode(env), msg_id=msg_id)


def decision_id(state: ExperimentState, event: ev.Event) -> str:
    """A deterministic id for a controller decision, so redelivered work never duplicates a fact."""
    kind = ev.event_type(event)
    uid = state.uid or "new"
    if isinstance(event, ev.TrialCreated):
        return f"{uid}:trial:{event.trial}"
    if isinstance(event, ev.SuggestionRequested):
        return f"{uid}:request:{event.request}"
    if isinstance(event, ev.ExperimentCreated):
        return f"{event.uid}:created"
    # Lifecycle events can repeat across restarts, so the sequence they follow is part of the id.
    return f"{uid}:{kind}:{state.last_controller_seq}"

