"""The dbmanager actor: Katib's ``api.v1.beta1.DBManager`` gRPC service, backed by natib's streams.

Trial code written for Katib pushes its metrics with ``katib.report_metrics(...)``, a gRPC call to the
``katib-db-manager`` Service on port 6789. This actor serves that call and turns every reported value into
a natib push metric of the trial (the same message ``natib.report_metrics`` publishes), so the collector,
early stopping and the experiment status see it. ``GetObservationLog`` answers from the event log.

The few protobuf messages involved (see ``dbmanager.proto`` next to this file) are encoded and decoded by
hand, so natib needs grpcio but no protobuf runtime (the Katib SDK pins an old one).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from natib.actors.base import Context
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.codec import UndecodableMessage
from natib.messages.state import as_float
from natib.runtime.logging import get_logger

log = get_logger("natib.dbmanager")

KIND = "dbmanager"
SERVICE = "api.v1.beta1.DBManager"
HEALTH_SERVICE = "grpc.health.v1.Health"

# -- protobuf wire format (just what these messages use) -------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message of the expected shape."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Every field of a message as (number, wire type, value): int for varints, bytes otherwise."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
            out.append((number, wire, value))
        elif wire == _LEN:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise WireError(f"field {number}: length {size} runs past the end of the message")
            out.append((number, wire, data[pos:pos + size]))
            pos += size
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > len(data):
                raise WireError(f"field {number}: truncated fixed-width value")
            out.append((number, wire, data[pos:pos + size]))
            pos += size
        else:
            raise WireError(f"field {number}: unsupported wire type {wire}")
    return out


def _string_field(number: int, value: str) -> bytes:
    if not value:
        return b""  # proto3 leaves default values out
    raw = value.encode()
    return _varint(number << 3 | _LEN) + _varint(len(raw)) + raw


def _message_field(number: int, raw: bytes, *, always: bool = False) -> bytes:
    if not raw and not always:
        return b""
    return _varint(number << 3 | _LEN) + _varint(len(raw)) + raw


def _text(value: Any, what: str) -> str:
    if not isinstance(value, bytes):
        raise WireError(f"{what}: expected a string")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"{what}: not UTF-8") from exc


def _strings(data: bytes, names: dict[int, str], what: str) -> dict[str, str]:
    out = dict.fromkeys(names.values(), "")
    for number, _wire, value in fields(data):
        if number in names:
            out[names[number]] = _text(value, f"{what}.{names[number]}")
    return out


@dataclass(frozen=True)
class MetricLog:
    """One reported value: Katib's ``MetricLog{time_stamp, metric{name, value}}``."""

    time_stamp: str
    name: str
    value: str


@dataclass(frozen=True)
class ReportRequest:
    """``ReportObservationLogRequest{trial_name = 1, observation_log = 2}``."""

    trial_name: str
    metric_logs: list[MetricLog] = field(default_factory=list)


@dataclass(frozen=True)
class GetRequest:
    """``GetObservationLogRequest{trial_name = 1, metric_name = 2, start_time = 3, end_time = 4}``."""

    trial_name: str
    metric_name: str = ""
    start_time: str = ""
    end_time: str = ""


def encode_metric_log(m: MetricLog) -> bytes:
    """``MetricLog{time_stamp = 1, metric = 2}`` with ``Metric{name = 1, value = 2}``."""
    metric = _string_field(1, m.name) + _string_field(2, m.value)
    return _string_field(1, m.time_stamp) + _message_field(2, metric)


def encode_observation_log(logs: list[MetricLog]) -> bytes:
    """``ObservationLog{repeated metric_logs = 1}``."""
    return b"".join(_message_field(1, encode_metric_log(m), always=True) for m in logs)


def decode_observation_log(data: bytes) -> list[MetricLog]:
    """The metric logs of an ``ObservationLog``."""
    out = []
    for number, _wire, value in fields(data):
        if number != 1:
            continue
        if not isinstance(value, bytes):
            raise WireError("observation_log.metric_logs: expected a message")
        entry = {"time_stamp": "", "name": "", "value": ""}
        for n, _w, v in fields(value):
            if n == 1:
                entry["time_stamp"] = _text(v, "metric_logs.time_stamp")
            elif n == 2:
                if not isinstance(v, bytes):
                    raise WireError("metric_logs.metric: expected a message")
                entry.update(_strings(v, {1: "name", 2: "value"}, "metric_logs.metric"))
        out.append(MetricLog(**entry))
    return out


def encode_report_request(req: ReportRequest) -> bytes:
    """The bytes a Katib client sends for ReportObservationLog."""
    return _string_field(1, req.trial_name) + _message_field(2, encode_observation_log(req.metric_logs))


def decode_report_request(data: bytes) -> ReportRequest:
    """Read a ReportObservationLogRequest."""
    trial, logs = "", []
    for number, _wire, value in fields(data):
        if number == 1:
            trial = _text(value, "trial_name")
        elif number == 2:
            if not isinstance(value, bytes):
                raise WireError("observation_log: expected a message")
            logs.extend(decode_observation_log(value))
    return ReportRequest(trial, logs)


def encode_get_request(req: GetRequest) -> bytes:
    """The bytes a Katib client sends for GetObservationLog."""
    return (_string_field(1, req.trial_name) + _string_field(2, req.metric_name)
            + _string_field(3, req.start_time) + _string_field(4, req.end_time))


def decode_get_request(data: bytes) -> GetRequest:
    """Read a GetObservationLogRequest."""
    return GetRequest(**_strings(data, {1: "trial_name", 2: "metric_name", 3: "start_time", 4: "end_time"},
                                 "GetObservationLogRequest"))


def encode_get_reply(logs: list[MetricLog]) -> bytes:
    """``GetObservationLogReply{observation_log = 1}``."""
    return _message_field(1, encode_observation_log(logs), always=True)


def decode_get_reply(data: bytes) -> list[MetricLog]:
    """Read a GetObservationLogReply."""
    out: list[MetricLog] = []
    for number, _wire, value in fields(data):
        if number == 1 and isinstance(value, bytes):
            out.extend(decode_observation_log(value))
    return out


# -- time stamps -------------------------------------------------------------------------------------------


def parse_time(text: str, what: str) -> datetime:
    """An RFC 3339 time stamp as an aware datetime; ValueError names the field."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not an RFC 3339 time stamp") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC with the fraction trimmed, as Katib's DB manager returns it."""
    when = when.astimezone(UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return text + "Z"


# -- the service -------------------------------------------------------------------------------------------


class RequestRefused(Exception):
    """A request that is answered with a gRPC error status and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_report(req: ReportRequest) -> None:
    """Refuse a report Katib's client would refuse: no trial name, no values, or a value that is no number."""
    if not req.trial_name:
        raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, "trial_name: required")
    if not req.metric_logs:
        raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, "observation_log.metric_logs: at least one is needed")
    for i, m in enumerate(req.metric_logs):
        where = f"observation_log.metric_logs[{i}]"
        if not m.name:
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, f"{where}.metric.name: required")
        if as_float(m.value) is None:
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"{where}.metric.value: {m.value!r} of metric {m.name} is not a finite number")
        if m.time_stamp:
            try:
                parse_time(m.time_stamp, f"{where}.time_stamp")
            except ValueError as exc:
                raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


class DBManager:
    """Serves Katib's DBManager gRPC API on ``settings.dbmanager_port`` until stopped."""

    kind = KIND

    def __init__(self, ctx: Context, *, host: str = "0.0.0.0", port: int | None = None) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port if port is not None else ctx.settings.dbmanager_port
        self.bound_port: int | None = None
        self._serving = False

    def ready(self) -> str | None:
        """None once the gRPC server listens."""
        return None if self._serving else "gRPC server not listening yet"

    async def run(self) -> None:
        """Start the gRPC server, serve until the stop signal, then stop it with a short grace period."""
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._handlers(),))
        self.bound_port = server.add_insecure_port(f"{self.host}:{self.port}")
        if not self.bound_port:
            raise OSError(f"dbmanager: cannot listen on {self.host}:{self.port}")
        await server.start()
        self._serving = True
        log.info("dbmanager_listening", host=self.host, port=self.bound_port, service=SERVICE)
        try:
            await self.ctx.stop.wait()
        finally:
            self._serving = False
            await server.stop(grace=min(self.ctx.settings.drain_timeout, 5.0))

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[[bytes], Any]) -> grpc.RpcMethodHandler:
            async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                limit = self.ctx.settings.request_timeout
                try:
                    result: bytes = await asyncio.wait_for(fn(request), limit)
                    return result
                except TimeoutError:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        f"natib could not serve the request within {limit:g} s (is NATS reachable?)")
                except WireError as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}")
                except RequestRefused as exc:
                    log.warning("dbmanager_refused", code=exc.code.name, reason=exc.message)
                    await context.abort(exc.code, exc.message)
                except Exception as exc:  # NATS unreachable and the like: the client may try again
                    log.warning("dbmanager_failed", error=repr(exc), exc_info=True)
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"natib could not serve the request: {exc}")
                raise AssertionError("unreachable")  # abort raises

            return grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=None, response_serializer=None)

        methods = {
            f"/{SERVICE}/ReportObservationLog": unary(self.report),
            f"/{SERVICE}/GetObservationLog": unary(self.get),
            f"/{HEALTH_SERVICE}/Check": unary(self.health),
        }

        class _Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                return methods.get(details.method)  # type: ignore[attr-defined]

        return _Handler()

    async def health(self, data: bytes) -> bytes:
        """``HealthCheckResponse{status = SERVING}``."""
        return _varint(1 << 3 | _VARINT) + _varint(1)

    async def _trial(self, trial: str) -> tuple[str, Any]:
        """The experiment a trial belongs to (its name less the 9-character suffix) and the trial's state."""
        try:
            subjects.check_token(trial, "trial_name")
        except ValueError as exc:
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        experiment = trial.rsplit("-", 1)[0] if "-" in trial else ""
        state = None
        try:
            subjects.check_token(experiment, "experiment")
        except ValueError:
            experiment = ""
        if experiment:
            state = await self.ctx.store.load(experiment)
            if trial not in state.trials:
                state = await self.ctx.store.load(experiment, fresh=True)
        if state is None or state.experiment is None or state.deleted or trial not in state.trials:
            raise RequestRefused(grpc.StatusCode.NOT_FOUND, f"trial {trial} not found")
        return experiment, state.trials[trial]

    async def report(self, data: bytes) -> bytes:
        """ReportObservationLog: publish the values as the trial's push metrics."""
        req = decode_report_request(data)
        check_report(req)
        experiment, trial = await self._trial(req.trial_name)
        if trial.is_completed:
            raise RequestRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"trial {req.trial_name} has already finished ({trial.phase}); "
                                 "its observation is final")
        now = datetime.now(UTC)
        lines = []
        for m in req.metric_logs:
            when = parse_time(m.time_stamp, "time_stamp") if m.time_stamp else now
            lines.append(json.dumps({"name": m.name, "value": m.value, "timestamp": when.isoformat(), "step": None}))
        attempt = str(max(trial.attempt, 1))
        await self.ctx.bus.publish(
            subjects.trial_log(experiment, req.trial_name, "push"), ("\n".join(lines) + "\n").encode(),
            msg_id=f"{req.trial_name}:{attempt}:push:{uuid.uuid4().hex}", headers={"Natib-Attempt": attempt},
        )
        log.info("observation_log_reported", experiment=experiment, trial=req.trial_name,
                 metrics=[m.name for m in req.metric_logs])
        return b""

    async def get(self, data: bytes) -> bytes:
        """GetObservationLog: the trial's reported values (its latest attempt), filtered like Katib's query."""
        req = decode_get_request(data)
        if not req.trial_name:
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, "trial_name: required")
        try:
            start = parse_time(req.start_time, "start_time") if req.start_time else None
            end = parse_time(req.end_time, "end_time") if req.end_time else None
        except ValueError as exc:
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        experiment, _trial = await self._trial(req.trial_name)
        found: list[tuple[int, datetime, ev.MetricReported]] = []
        subject = subjects.trial_event(experiment, req.trial_name, "trial.metric")
        async for raw in self.ctx.bus.read(subjects.EVENTS_STREAM, subject):
            try:
                env = codec.decode(raw.data)
            except UndecodableMessage:
                continue
            if env is None or not isinstance(env.body, ev.MetricReported):
                continue
            when = env.body.timestamp or env.time
            found.append((env.body.attempt, when if when.tzinfo else when.replace(tzinfo=UTC), env.body))
        latest = max((a for a, _, _ in found), default=0)
        out = [
            MetricLog(format_time(when), body.name, body.value)
            for attempt, when, body in found
            if attempt == latest and (not req.metric_name or body.name == req.metric_name)
            and (start is None or when >= start) and (end is None or when <= end)
        ]
        return encode_get_reply(out)


__all__ = ["DBManager", "GetRequest", "MetricLog", "ReportRequest", "WireError"]
