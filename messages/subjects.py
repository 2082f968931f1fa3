"""Every NATS subject, stream and bucket name natib uses; no other module builds a subject by hand."""

from __future__ import annotations

import re

EVENTS_STREAM = "NATIB_EVENTS"
COMMANDS_STREAM = "NATIB_CMD"
LOGS_STREAM = "NATIB_LOGS"
DEAD_LETTER_STREAM = "NATIB_DLQ"
STATE_BUCKET = "natib-state"
SNAPSHOT_BUCKET = "natib-snapshots"

EVENTS_ALL = "natib.evt.>"
COMMANDS_ALL = "natib.cmd.>"
LOGS_ALL = "natib.log.>"
DEAD_LETTER_ALL = "natib.dlq.>"

_TOKEN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_token(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a DNS-1123 label (and so a safe NATS token), else raise ValueError."""
    if not value or len(value) > 63 or not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} is not a DNS-1123 label (lower case letters, digits and '-')")
    return value


def experiment_events(experiment: str) -> str:
    """All events of one experiment."""
    return f"natib.evt.{check_token(experiment, 'experiment')}.>"


def controller_events(experiment: str) -> str:
    """The events only the experiment controller writes; appends to them are conditional on this filter."""
    return f"natib.evt.{check_token(experiment, 'experiment')}.ctl.>"


def controller_event(experiment: str, event_type: str) -> str:
    """Subject of one controller decision, e.g. ``natib.evt.exp.ctl.trial-created``."""
    return f"natib.evt.{check_token(experiment, 'experiment')}.ctl.{_type_token(event_type)}"


def suggestion_event(experiment: str, request: int) -> str:
    """Subject of the suggestion actor's answer to one request."""
    return f"natib.evt.{check_token(experiment, 'experiment')}.sug.{int(request)}"


def trial_event(experiment: str, trial: str, event_type: str) -> str:
    """Subject of a fact about one trial reported by the launcher, collector or early stopper."""
    return (
        f"natib.evt.{check_token(experiment, 'experiment')}.trial.{check_token(trial, 'trial')}"
        f".{_type_token(event_type)}"
    )


def trial_events_of_type(event_type: str) -> str:
    """Trial facts of one type across all experiments (for a consumer filter)."""
    return f"natib.evt.*.trial.*.{_type_token(event_type)}"


def controller_events_of_type(event_type: str) -> str:
    """Controller decisions of one type across all experiments (for a consumer filter)."""
    return f"natib.evt.*.ctl.{_type_token(event_type)}"


def command(actor: str, experiment: str) -> str:
    """Work-queue subject of a command for one actor kind about one experiment."""
    return f"natib.cmd.{actor}.{check_token(experiment, 'experiment')}"


def commands_for(actor: str) -> str:
    """Every command for one actor kind (its durable consumer's filter)."""
    return f"natib.cmd.{actor}.>"


#: Where a trial's metrics come from: its output, a metrics file, TensorFlow event files, a Prometheus
#: endpoint, a custom collector process, or ``natib.report_metrics`` calls.
LOG_SOURCES = ("out", "file", "tfevent", "prom", "custom", "push")


def trial_log(experiment: str, trial: str, source: str = "out") -> str:
    """Raw output (``out``) or another metrics source of one trial."""
    if source not in LOG_SOURCES:
        raise ValueError(f"unknown trial log source {source!r}")
    return f"natib.log.{check_token(experiment, 'experiment')}.{check_token(trial, 'trial')}.{source}"


def trial_logs(experiment: str, trial: str) -> str:
    """Every source of one trial."""
    return f"natib.log.{check_token(experiment, 'experiment')}.{check_token(trial, 'trial')}.>"


def experiment_logs(experiment: str) -> str:
    """Raw output of every trial of one experiment."""
    return f"natib.log.{check_token(experiment, 'experiment')}.>"


def dead_letter(kind: str) -> str:
    """Where a consumer parks a message it cannot decode or handle."""
    return f"natib.dlq.{kind}"


def api(endpoint: str) -> str:
    """Request/reply endpoint served by the experiment controller (create, delete, patch, ping)."""
    return f"natib.api.{endpoint}"


def experiment_of(subject: str) -> str | None:
    """The experiment token of an event, command or log subject, or None."""
    parts = subject.split(".")
    if len(parts) >= 3 and parts[0] == "natib":
        if parts[1] in ("evt", "log"):
            return parts[2]
        if parts[1] == "cmd" and len(parts) >= 4:
            return parts[3]
    return None


def state_key(experiment: str) -> str:
    """KV key of an experiment's materialised status."""
    return f"experiment.{check_token(experiment, 'experiment')}"


def _type_token(event_type: str) -> str:
    return event_type.replace(".", "-")


def snapshot_name(experiment: str) -> str:
    """Object name of an experiment's folded-state snapshot."""
    return f"experiment.{check_token(experiment, 'experiment')}"
