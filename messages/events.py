"""Events: facts in the past tense that make up an experiment's log in the NATIB_EVENTS stream."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from natib.messages.spec import Experiment


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event; ``type`` (the tag) names the fact."""


class Metric(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A metric's summary as Katib reports it in a trial observation (values are strings)."""

    name: str
    min: str = "unavailable"
    max: str = "unavailable"
    latest: str = "unavailable"


class ExperimentCreated(Event, tag="experiment.created", frozen=True, kw_only=True):
    """An experiment was accepted: its full, defaulted spec, identity and random seed."""

    experiment: Experiment
    uid: str
    seed: int
    source_dir: str | None = None


class ExperimentRunning(Event, tag="experiment.running", frozen=True, kw_only=True):
    """The controller started (or restarted) creating trials."""

    message: str = "Experiment is running"


class ExperimentSucceeded(Event, tag="experiment.succeeded", frozen=True, kw_only=True):
    """The experiment finished successfully; ``reason`` is one of Katib's Succeeded reasons."""

    reason: str
    message: str


class ExperimentFailed(Event, tag="experiment.failed", frozen=True, kw_only=True):
    """The experiment failed; ``message`` says why."""

    reason: str = "ExperimentFailed"
    message: str


class ExperimentDeleted(Event, tag="experiment.deleted", frozen=True, kw_only=True):
    """The user deleted the experiment; its trials are being stopped."""


class BudgetChanged(Event, tag="experiment.budget-changed", frozen=True, kw_only=True):
    """The user edited parallelTrialCount, maxTrialCount or maxFailedTrialCount."""

    max_trial_count: int | None = None
    parallel_trial_count: int | None = None
    max_failed_trial_count: int | None = None


class SuggestionRequested(Event, tag="suggestion.requested", frozen=True, kw_only=True):
    """The controller asked the suggestion actor for ``count`` new assignments."""

    request: int
    count: int


class TrialsSuggested(Event, tag="suggestion.made", frozen=True, kw_only=True):
    """The algorithm's answer to a request, computed from the history up to stream sequence ``as_of``."""

    request: int
    algorithm: str
    as_of: int
    assignments: list[dict[str, str]]
    labels: list[dict[str, str]] = []
    exhausted: bool = False


class SuggestionFailed(Event, tag="suggestion.failed", frozen=True, kw_only=True):
    """The algorithm could not answer a request."""

    request: int
    message: str


class TrialCreated(Event, tag="trial.created", frozen=True, kw_only=True):
    """The controller created a trial from a suggested assignment, with its rendered run spec."""

    trial: str
    index: int
    request: int
    assignment: dict[str, str]
    run_spec: dict[str, Any]
    labels: dict[str, str] = {}


class TrialStarted(Event, tag="trial.started", frozen=True, kw_only=True):
    """The launcher started (or re-attached to) the trial's process or job."""

    trial: str
    attempt: int = 1
    pid: int | None = None
    host: str | None = None
    workdir: str | None = None


class MetricReported(Event, tag="trial.metric", frozen=True, kw_only=True):
    """One metric value reported by a running trial, in report order (``step``)."""

    trial: str
    name: str
    value: str
    step: int
    attempt: int = 1
    timestamp: datetime | None = None


class TrialSucceeded(Event, tag="trial.succeeded", frozen=True, kw_only=True):
    """The trial exited successfully and reported its objective metric."""

    trial: str
    observation: list[Metric]
    attempt: int = 1
    exit_code: int | None = 0
    message: str = "Trial has succeeded"


class TrialFailed(Event, tag="trial.failed", frozen=True, kw_only=True):
    """The trial could not run or exited with an error."""

    trial: str
    reason: str = "TrialFailed"
    message: str
    observation: list[Metric] = []
    attempt: int = 1
    exit_code: int | None = None


class TrialMetricsUnavailable(Event, tag="trial.metrics-unavailable", frozen=True, kw_only=True):
    """The trial exited successfully but its objective metric never appeared."""

    trial: str
    observation: list[Metric] = []
    attempt: int = 1
    exit_code: int | None = 0
    message: str = "Metrics are not available"


class TrialKilled(Event, tag="trial.killed", frozen=True, kw_only=True):
    """The trial was stopped because its experiment finished or was deleted."""

    trial: str
    observation: list[Metric] = []
    attempt: int = 1
    message: str = "Trial was killed"


class TrialEarlyStopped(Event, tag="trial.early-stopped", frozen=True, kw_only=True):
    """The trial was stopped by the early-stopping rule; its observation keeps what it reported."""

    trial: str
    observation: list[Metric] = []
    attempt: int = 1
    message: str = "Trial is early stopped"


AnyEvent = (
    ExperimentCreated
    | ExperimentRunning
    | ExperimentSucceeded
    | ExperimentFailed
    | ExperimentDeleted
    | BudgetChanged
    | SuggestionRequested
    | TrialsSuggested
    | SuggestionFailed
    | TrialCreated
    | TrialStarted
    | MetricReported
    | TrialSucceeded
    | TrialFailed
    | TrialMetricsUnavailable
    | TrialKilled
    | TrialEarlyStopped
)

TRIAL_OUTCOMES = (TrialSucceeded, TrialFailed, TrialMetricsUnavailable, TrialKilled, TrialEarlyStopped)


def event_type(event: Event) -> str:
    """The tag of an event, e.g. ``trial.created``."""
    return str(type(event).__struct_config__.tag)
