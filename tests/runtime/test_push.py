"""natib.report_metrics: clear errors outside a trial or for bad values, and a real publish inside one."""

from __future__ import annotations

import asyncio
import json

import pytest

import natib
from natib.messages import subjects
from natib.runtime.bus import Bus
from natib.runtime.server import TestServer


def test_outside_a_trial_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NATIB_EXPERIMENT", "NATIB_TRIAL_NAME", "NATS_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(natib.NotInATrial, match="must be called from a trial started by natib"):
        natib.report_metrics({"accuracy": 0.9})


@pytest.mark.parametrize(("metrics", "message"), [
    ({}, "at least one metric"),
    ({"acc": float("nan")}, "acc: value must be finite"),
    ({"acc": True}, "acc: value must be a number or a string"),
    ({"acc": [1]}, "acc: value must be a number or a string"),
])
def test_bad_values_are_named(metrics: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATIB_EXPERIMENT", "e")
    monkeypatch.setenv("NATIB_TRIAL_NAME", "e-1")
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    with pytest.raises(ValueError, match=message):
        natib.report_metrics(metrics)


def test_unreachable_nats_is_a_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATIB_EXPERIMENT", "e")
    monkeypatch.setenv("NATIB_TRIAL_NAME", "e-1")
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    with pytest.raises(RuntimeError, match="unable to push metrics of trial e-1"):
        natib.report_metrics({"acc": 0.5}, timeout=1)


def test_publishes_to_the_trial_push_subject(nats_server: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async def setup() -> None:
        bus = await Bus.connect(nats_server.url)
        await bus.ensure_topology()
        await bus.close()

    asyncio.run(setup())
    monkeypatch.setenv("NATIB_EXPERIMENT", "exp")
    monkeypatch.setenv("NATIB_TRIAL_NAME", "exp-abc")
    monkeypatch.setenv("NATIB_ATTEMPT", "2")
    monkeypatch.setenv("NATS_URL", nats_server.url)
    natib.report_metrics({"accuracy": 0.91, "genotype": "Genotype(normal=[])"}, step=3)

    async def read() -> list[dict[str, object]]:
        bus = await Bus.connect(nats_server.url)
        raw = await bus.get_last(subjects.LOGS_STREAM, subjects.trial_log("exp", "exp-abc", "push"))
        await bus.close()
        assert raw is not None and raw.headers["Natib-Attempt"] == "2"
        return [json.loads(line) for line in raw.data.splitlines()]

    lines = asyncio.run(read())
    assert [(x["name"], x["value"], x["step"]) for x in lines] == [
        ("accuracy", 0.91, 3), ("genotype", "Genotype(normal=[])", 3)]
