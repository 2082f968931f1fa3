"""An in-memory event log for pure tests: folds events into an ExperimentState with rising sequences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from natib.messages import events as ev
from natib.messages import subjects
from natib.messages.spec import Experiment
from natib.messages.state import ExperimentState

T0 = datetime(2024, 5, 1, tzinfo=UTC)


class EventLog:
    """Appends controller decisions and trial facts to a folded state, as the stream would deliver them."""

    def __init__(self, name: str, exp: Experiment, *, uid: str = "u", seed: int = 1) -> None:
        self.name = name
        self.state = ExperimentState(name)
        self.seq = 0
        self.ctl(ev.ExperimentCreated(experiment=exp, uid=uid, seed=seed))

    def apply(self, subject: str, event: ev.Event) -> None:
        """Fold one event at the next sequence."""
        self.seq += 1
        self.state.apply(self.seq, subject, T0 + timedelta(seconds=self.seq), event)

    def ctl(self, event: ev.Event) -> None:
        """A controller decision."""
        self.apply(subjects.controller_event(self.name, ev.event_type(event)), event)

    def fact(self, event: ev.Event) -> None:
        """A fact about a trial from another actor."""
        self.apply(subjects.trial_event(self.name, event.trial, ev.event_type(event)), event)  # type: ignore[attr-defined]
