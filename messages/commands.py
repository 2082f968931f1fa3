"""Commands: imperative requests with exactly one consumer, carried by the NATIB_CMD work queue."""

from __future__ import annotations

from typing import Any

import msgspec


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every command; ``type`` (the tag) names the request."""


class SuggestTrials(Command, tag="suggest-trials", frozen=True, kw_only=True):
    """Ask the suggestion actor for ``count`` assignments from the history up to stream sequence ``as_of``."""

    request: int
    count: int
    as_of: int


class LaunchTrial(Command, tag="launch-trial", frozen=True, kw_only=True):
    """Run a trial from its rendered run spec; idempotent by trial name."""

    trial: str
    run_spec: dict[str, Any]
    primary_container_name: str
    source_dir: str | None = None
    metrics_file: str | None = None
    metrics_collector: dict[str, Any] | None = None
    metric_names: list[str] = []
    labels: dict[str, str] = {}
    checkpoint_dir: str | None = None


class StopTrial(Command, tag="stop-trial", frozen=True, kw_only=True):
    """Stop a trial's process or job; ``reason`` is Killed, EarlyStopped or Deleted."""

    trial: str
    reason: str = "Killed"
    message: str = ""


AnyCommand = SuggestTrials | LaunchTrial | StopTrial
