"""``natib.report_metrics``: trial code reports metric values straight to NATS (Katib's Push collector)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from natib.messages import subjects
from natib.runtime.errors import NatibError

_ENV = ("NATIB_EXPERIMENT", "NATIB_TRIAL_NAME", "NATS_URL")


class NotInATrial(NatibError):
    """``report_metrics`` was called outside a trial that natib started."""


def _payload(metrics: Mapping[str, object], step: int | None) -> bytes:
    if not metrics:
        raise ValueError("report_metrics needs at least one metric")
    when = datetime.now(UTC).isoformat()
    lines = []
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"metric {name}: value must be a number or a string, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {name}: value must be finite, got {value!r}")
        lines.append(json.dumps({"name": name, "value": value, "timestamp": when, "step": step}))
    return ("\n".join(lines) + "\n").encode()


async def _publish(url: str, subject: str, data: bytes, headers: dict[str, str], timeout: float) -> None:
    import nats

    from natib.runtime.auth import connect_options

    nc = await nats.connect(url, connect_timeout=timeout, max_reconnect_attempts=2, **connect_options())
    try:
        await nc.jetstream(timeout=timeout).publish(subject, data, headers=headers, timeout=timeout)
    finally:
        await nc.close()


def report_metrics(metrics: Mapping[str, object], step: int | None = None, *, timeout: float = 10.0) -> None:
    """Report metric values of the current trial, e.g. ``report_metrics({"accuracy": 0.9}, step=3)``.

    Works from any process the trial starts (it reads NATIB_EXPERIMENT, NATIB_TRIAL_NAME and NATS_URL,
    which natib's launcher sets). Raises NotInATrial outside a trial, ValueError for a bad value, and
    RuntimeError when NATS cannot be reached within ``timeout`` seconds.
    """
    missing = [name for name in _ENV if not os.environ.get(name)]
    if missing:
        raise NotInATrial(
            "natib.report_metrics must be called from a trial started by natib "
            f"({', '.join(missing)} not set)"
        )
    data = _payload(metrics, step)
    experiment, trial, url = (os.environ[name] for name in _ENV)
    subject = subjects.trial_log(experiment, trial, "push")
    attempt = os.environ.get("NATIB_ATTEMPT", "1")
    headers = {"Natib-Attempt": attempt, "Nats-Msg-Id": f"{trial}:{attempt}:push:{uuid.uuid4().hex}"}
    errors: list[BaseException] = []

    def _run() -> None:
        try:
            asyncio.run(_publish(url, subject, data, headers, timeout))
        except BaseException as exc:  # handed to the calling thread, which raises it
            errors.append(exc)

    # A private thread keeps this usable from async trial code that already runs an event loop.
    worker = threading.Thread(target=_run, name="natib-report-metrics")
    worker.start()
    worker.join()
    if errors:
        raise RuntimeError(f"unable to push metrics of trial {trial} to NATS at {url}: {errors[0]!r}") from errors[0]
