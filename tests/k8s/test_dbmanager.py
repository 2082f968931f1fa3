"""The dbmanager actor: Katib's DBManager gRPC API over a real grpcio channel, real NATS and real trials."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from natib.actors.dbmanager import (
    GetRequest,
    MetricLog,
    ReportRequest,
    WireError,
    decode_get_reply,
    decode_get_request,
    decode_report_request,
    encode_get_request,
    encode_report_request,
    format_time,
    parse_time,
)
from natib.runtime.server import TestServer
from tests.conftest import NATIB, eventually
from tests.k8s.controller_support import dbmanager, experiment, natib_actors, natib_request, natib_state

REPORT = "/api.v1.beta1.DBManager/ReportObservationLog"
GET = "/api.v1.beta1.DBManager/GetObservationLog"
HEALTH = "/grpc.health.v1.Health/Check"


# -- the hand-written protobuf codec against the field numbers of Katib's api.proto ----------------------


def test_report_request_bytes_follow_the_field_numbers() -> None:
    req = ReportRequest("exp-abc", [MetricLog("2026-11-27T18:31:53Z", "acc", "0.91")])
    metric = b"\x0a\x03acc" + b"\x12\x040.91"                      # Metric{name = 1, value = 2}
    log = b"\x0a\x142026-11-27T18:31:53Z" + b"\x12" + bytes([len(metric)]) + metric  # MetricLog{1, 2}
    obs = b"\x0a" + bytes([len(log)]) + log                         # ObservationLog{metric_logs = 1}
    expected = b"\x0a\x07exp-abc" + b"\x12" + bytes([len(obs)]) + obs  # Request{trial_name = 1, log = 2}
    assert encode_report_request(req) == expected
    assert decode_report_request(expected) == req


def test_get_request_bytes_follow_the_field_numbers() -> None:
    data = encode_get_request(GetRequest("t-1", "loss", "2026-01-01T00:00:00Z", ""))
    assert data == b"\x0a\x03t-1" + b"\x12\x04loss" + b"\x1a\x142026-01-01T00:00:00Z"
    assert decode_get_request(data) == GetRequest("t-1", "loss", "2026-01-01T00:00:00Z", "")


def test_decoder_skips_unknown_fields_and_rejects_garbage() -> None:
    extra = b"\x48\x96\x01" + b"\x51" + b"\x00" * 8 + b"\x5d" + b"\x00" * 4  # varint 9, fixed64 10, fixed32 11
    req = decode_report_request(extra + encode_report_request(ReportRequest("t-1", [MetricLog("", "a", "1")])))
    assert req == ReportRequest("t-1", [MetricLog("", "a", "1")])
    for bad, reason in ((b"\x0a\x10abc", "runs past the end"), (b"\x0a", "truncated varint"),
                        (b"\x0b", "unsupported wire type"), (b"\x0a\x02\xff\xfe", "not UTF-8"),
                        (b"\x00\x01", "field number 0"), (b"\x08\x01", "expected a string")):
        with pytest.raises(WireError, match=reason):
            decode_report_request(bad)


def test_time_stamps() -> None:
    assert format_time(parse_time("2026-11-27T18:31:53Z", "t")) == "2026-11-27T18:31:53Z"
    assert format_time(parse_time("2026-11-27T19:31:53.250+01:00", "t")) == "2026-11-27T18:31:53.25Z"
    with pytest.raises(ValueError, match="start_time: 'yesterday' is not an RFC 3339 time stamp"):
        parse_time("yesterday", "start_time")


# -- the service, wired to NATS and natib's actors -----------------------------------------------------------


async def call(port: int, method: str, data: bytes) -> bytes:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply: bytes = await channel.unary_unary(method)(data, timeout=10)
        return reply


async def refused(port: int, method: str, data: bytes) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(port, method, data)
    return info.value.code(), info.value.details() or ""


def report(trial: str, *metrics: tuple[str, str], when: str = "") -> bytes:
    return encode_report_request(ReportRequest(trial, [MetricLog(when, n, v) for n, v in metrics]))


async def running_trial(url: str, name: str) -> str:
    async def first() -> str | None:
        state = await natib_state(url, name)
        running = [t.name for t in state.trials.values() if t.phase == "Running"]
        return running[0] if running else None

    return str(await eventually(first, timeout=20, interval=0.1))


async def test_pushed_values_become_the_trials_metrics(tmp_path: Path, nats_server: TestServer) -> None:
    go = tmp_path / "go"
    doc = experiment("push-grpc", trials=1, parallel=1, collector="Push",
                     command=f"while [ ! -f {go} ]; do sleep 0.05; done")
    async with natib_actors(nats_server.url, tmp_path / "home"), dbmanager(nats_server.url, tmp_path) as port:
        assert (await natib_request(nats_server.url, "create", {"experiment": doc}))["ok"]
        trial = await running_trial(nats_server.url, "push-grpc")
        assert await call(port, REPORT, report(trial, ("score", "0.25"), when="2026-11-27T18:31:53Z")) == b""
        assert await call(port, REPORT, report(trial, ("score", "0.75"), ("other", "3"))) == b""

        async def logged() -> list[MetricLog]:
            logs = decode_get_reply(await call(port, GET, encode_get_request(GetRequest(trial))))
            return logs if len(logs) == 2 else []

        logs = await eventually(logged, timeout=10, interval=0.1)
        assert [(m.name, m.value) for m in logs] == [("score", "0.25"), ("score", "0.75")]  # only known metrics
        assert logs[0].time_stamp == "2026-11-27T18:31:53Z"
        window = GetRequest(trial, "score", start_time="2026-11-27T18:31:53Z", end_time="2026-11-27T18:31:53Z")
        only = decode_get_reply(await call(port, GET, encode_get_request(window)))
        assert [(m.name, m.value) for m in only] == [("score", "0.25")]
        assert decode_get_reply(await call(port, GET, encode_get_request(GetRequest(trial, "loss")))) == []

        go.write_text("")

        async def done() -> object:
            return (await natib_state(nats_server.url, "push-grpc")).is_finished()

        await eventually(done, timeout=20, interval=0.1)
        state = await natib_state(nats_server.url, "push-grpc")
        t = state.trials[trial]
        assert t.phase == "Succeeded"
        assert [(m.name, m.min, m.max, m.latest) for m in t.final_observation] == [("score", "0.25", "0.75", "0.75")]
        code, details = await refused(port, REPORT, report(trial, ("score", "0.9")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details == f"trial {trial} has already finished (Succeeded); its observation is final"


async def test_bad_requests_get_clear_errors(tmp_path: Path, nats_server: TestServer) -> None:
    go = tmp_path / "go"
    doc = experiment("push-bad", trials=1, parallel=1, collector="Push",
                     command=f"while [ ! -f {go} ]; do sleep 0.05; done")
    async with natib_actors(nats_server.url, tmp_path / "home"), dbmanager(nats_server.url, tmp_path) as port:
        assert await call(port, HEALTH, b"") == b"\x08\x01"
        assert await refused(port, REPORT, report("nope-12345678", ("score", "1"))) == (
            grpc.StatusCode.NOT_FOUND, "trial nope-12345678 not found")
        assert await refused(port, GET, encode_get_request(GetRequest("nope-12345678"))) == (
            grpc.StatusCode.NOT_FOUND, "trial nope-12345678 not found")
        for name in ("nodash", "a--b", "-x"):
            code, details = await refused(port, REPORT, report(name, ("score", "1")))
            assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (name, code, details)
            assert name in details
        assert (await natib_request(nats_server.url, "create", {"experiment": doc}))["ok"]
        trial = await running_trial(nats_server.url, "push-bad")
        cases = [
            (report(trial, ("score", "abc")), "observation_log.metric_logs[0].metric.value: 'abc' of metric "
                                              "score is not a finite number"),
            (report(trial, ("score", "1"), ("score", "nan")), "observation_log.metric_logs[1].metric.value: "
                                                              "'nan' of metric score is not a finite number"),
            (report(trial, ("", "1")), "observation_log.metric_logs[0].metric.name: required"),
            (report(trial, ("score", "1"), when="noon"), "observation_log.metric_logs[0].time_stamp: 'noon' is not "
                                                         "an RFC 3339 time stamp"),
            (report(""), "trial_name: required"),
            (report(trial), "observation_log.metric_logs: at least one is needed"),
            (report("Bad_Name", ("score", "1")), "trial_name 'Bad_Name' is not a DNS-1123 label"),
            (b"\x0a\x10abc", "malformed request: field 1: length 16 runs past the end of the message"),
        ]
        for data, message in cases:
            code, details = await refused(port, REPORT, data)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert message in details
        code, details = await refused(port, GET, encode_get_request(GetRequest(trial, start_time="soon")))
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "start_time: 'soon' is not an RFC 3339 time stamp")
        code, _ = await refused(port, "/api.v1.beta1.DBManager/DeleteObservationLog", b"")
        assert code == grpc.StatusCode.UNIMPLEMENTED
        # None of the refused reports reached the trial; the service still works.
        assert decode_get_reply(await call(port, GET, encode_get_request(GetRequest(trial)))) == []
        assert await call(port, REPORT, report(trial, ("score", "0.5"))) == b""
        go.write_text("")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_natib_actor_dbmanager_serves_on_the_configured_port(natib_env: dict[str, str]) -> None:
    port = free_port()
    env = {**natib_env, "NATIB_DBMANAGER_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(NATIB, "actor", "dbmanager", env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    try:
        async def healthy() -> bool:
            try:
                return await call(port, HEALTH, b"") == b"\x08\x01"
            except grpc.aio.AioRpcError:
                return False

        await eventually(healthy, timeout=20, interval=0.2)
        assert await refused(port, REPORT, report("gone-12345678", ("score", "1"))) == (
            grpc.StatusCode.NOT_FOUND, "trial gone-12345678 not found")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    assert b"dbmanager_listening" in out


def test_bad_port_setting_is_named(natib_env: dict[str, str]) -> None:
    env = {**natib_env, "NATIB_DBMANAGER_PORT": "70000"}
    res = subprocess.run([NATIB, "actor", "dbmanager"], env=env, capture_output=True, text=True, timeout=30,
                         check=False)
    assert res.returncode == 1
    assert "NATIB_DBMANAGER_PORT: expected a TCP port from 1 to 65535, got '70000'" in res.stderr
    assert os.path.exists(NATIB)


async def test_nats_outage_is_unavailable_not_a_crash(tmp_path: Path, nats_server: TestServer) -> None:
    async with dbmanager(nats_server.url, tmp_path) as port:
        nats_server.stop()
        try:
            code, details = await refused(port, REPORT, report("gone-12345678", ("score", "1")))
            assert code == grpc.StatusCode.UNAVAILABLE
            assert details.startswith("natib could not serve the request")
        finally:
            nats_server.start()
        assert await call(port, HEALTH, b"") == b"\x08\x01"
