"""The NATS bus: the only module that talks to nats-py. Streams, durable consumers, KV and requests."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from natib.messages import subjects
from natib.runtime.auth import connect_options
from natib.runtime.errors import NatibError, PermanentError, RetryableError
from natib.runtime.logging import get_logger

log = get_logger("natib.bus")

WRONG_LAST_SEQUENCE = 10071


class WrongLastSequence(RetryableError):
    """A conditional append lost: another writer appended first. Re-read and decide again.

    ``appended`` lists the (event, sequence) pairs of the same batch that had landed before the loss: they are
    facts now, and whatever they imply must still be done.
    """

    appended: list[tuple[object, int]]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.appended = []


class ConnectError(NatibError):
    """NATS cannot be reached, or refused natib's credentials."""


class NoResponders(RetryableError):
    """Nobody serves the requested endpoint (no natib actors are running)."""


@dataclass(frozen=True)
class RawMessage:
    """A message as read from a stream, with its stream sequence and headers."""

    subject: str
    data: bytes
    seq: int
    headers: dict[str, str] = field(default_factory=dict)
    time: datetime | None = None
    delivered: int = 1


Handler = Callable[[RawMessage], Awaitable[None]]


class Tail:
    """Messages of an ordered consumer, buffered; ``get`` waits for the next one."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.sub: Any = None
        self.pending = -1

    async def put(self, msg: Msg) -> None:
        """The subscription callback."""
        await self._queue.put(msg)

    async def get(self, timeout: float | None = None) -> RawMessage | None:
        """The next message, or None after ``timeout`` seconds without one."""
        try:
            msg = await asyncio.wait_for(self._queue.get(), timeout) if timeout else await self._queue.get()
        except TimeoutError:
            return None
        md = msg.metadata
        self.pending = int(md.num_pending)
        return RawMessage(msg.subject, msg.data, int(md.sequence.stream), dict(msg.headers or {}), md.timestamp)

    async def close(self) -> None:
        """Stop the subscription."""
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


class Bus:
    """A connection to NATS with natib's topology and the operations the actors need."""

    def __init__(self, nc: Client, *, log_max_age: float = 7 * 86400) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.log_max_age = log_max_age
        self._kv = None
        # Durable consumers and request endpoints this connection currently serves (for readiness probes).
        self.bound: set[str] = set()

    @classmethod
    async def connect(cls, url: str, *, name: str = "natib", log_max_age: float = 7 * 86400,
                      connect_timeout: float = 5.0) -> Bus:
        """Connect (retrying on reconnects forever once connected) and return a bus."""
        async def _disconnected() -> None:
            if not nc.is_closed and not nc.is_draining:
                log.warning("nats_disconnected", url=url)

        async def _reconnected() -> None:
            log.info("nats_reconnected", url=url)

        refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

        async def _error(exc: Exception) -> None:
            log.debug("nats_error", error=str(exc))
            denied = isinstance(exc, nats.errors.AuthorizationError | ssl.SSLError) or (
                "authorization" in str(exc).lower())
            if denied and not refused.done():
                refused.set_result(exc)

        nc: Client
        try:
            # nats-py keeps retrying the first connection too, so bound it here: a wrong address or
            # refused credentials must fail clearly instead of hanging.
            connecting = asyncio.ensure_future(nats.connect(
                url, name=name, connect_timeout=connect_timeout, max_reconnect_attempts=-1,
                reconnect_time_wait=0.25, allow_reconnect=True, disconnected_cb=_disconnected,
                reconnected_cb=_reconnected, error_cb=_error, **connect_options(),
            ))
            waiting: set[asyncio.Future[Any]] = {connecting, refused}
            done, _pending = await asyncio.wait(waiting, timeout=connect_timeout * 2,
                                                return_when=asyncio.FIRST_COMPLETED)
            if connecting not in done:
                connecting.cancel()
                with contextlib.suppress(BaseException):
                    await connecting
                raise refused.result() if refused in done else TimeoutError("no answer")
            nc = connecting.result()
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise ConnectError(f"cannot connect to NATS at {url}: {exc!r}") from exc
        return cls(nc, log_max_age=log_max_age)

    async def close(self) -> None:
        """Drain and close the connection."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.drain(), 5)
        with contextlib.suppress(Exception):
            await self.nc.close()

    # -- topology ------------------------------------------------------------------------------

    async def ensure_topology(self) -> None:
        """Create (or update) every stream and bucket natib uses; safe to call from every process."""
        await self._ensure_stream(StreamConfig(
            name=subjects.EVENTS_STREAM, subjects=[subjects.EVENTS_ALL], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, duplicate_window=120.0,
        ))
        await self._ensure_stream(StreamConfig(
            name=subjects.COMMANDS_STREAM, subjects=[subjects.COMMANDS_ALL],
            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE, duplicate_window=120.0,
        ))
        await self._ensure_stream(StreamConfig(
            name=subjects.LOGS_STREAM, subjects=[subjects.LOGS_ALL], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, max_age=self.log_max_age, duplicate_window=120.0,
        ))
        await self._ensure_stream(StreamConfig(
            name=subjects.DEAD_LETTER_STREAM, subjects=[subjects.DEAD_LETTER_ALL],
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, max_age=30 * 86400,
        ))
        await self.kv()

    async def _ensure_stream(self, config: StreamConfig) -> None:
        try:
            await self.js.stream_info(config.name)  # type: ignore[arg-type]
        except nats.js.errors.NotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await self.js.add_stream(config)

    async def kv(self):  # type: ignore[no-untyped-def]
        """The natib-state KV bucket (materialised views), created on first use."""
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(subjects.STATE_BUCKET)
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
                self._kv = await self.js.create_key_value(
                    KeyValueConfig(bucket=subjects.STATE_BUCKET, history=1, storage=StorageType.FILE)
                )
        return self._kv

    # -- publishing ----------------------------------------------------------------------------

    async def append(self, subject: str, data: bytes, *, msg_id: str, expect_last_seq: int | None = None,
                     expect_filter: str | None = None, headers: dict[str, str] | None = None) -> int:
        """Append to a stream, conditionally on the last sequence of ``expect_filter``; returns the sequence."""
        hdrs = {"Nats-Msg-Id": msg_id, **(headers or {})}
        if expect_last_seq is not None:
            hdrs["Nats-Expected-Last-Subject-Sequence"] = str(expect_last_seq)
            if expect_filter:
                hdrs["Nats-Expected-Last-Subject-Sequence-Subject"] = expect_filter
        try:
            ack = await self.js.publish(subject, data, headers=hdrs, timeout=10)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise WrongLastSequence(str(exc.description)) from exc
            raise
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
            raise RetryableError(f"publish to {subject} failed: {exc!r}") from exc
        return int(ack.seq)

    async def publish(self, subject: str, data: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None) -> int:
        """Publish to a stream (deduplicated by ``msg_id`` when given); returns the stream sequence."""
        hdrs = dict(headers or {})
        if msg_id:
            hdrs["Nats-Msg-Id"] = msg_id
        try:
            ack = await self.js.publish(subject, data, headers=hdrs or None, timeout=10)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
            raise RetryableError(f"publish to {subject} failed: {exc!r}") from exc
        return int(ack.seq)

    # -- reading -------------------------------------------------------------------------------

    async def get_next(self, stream: str, start_seq: int, subject: str) -> RawMessage | None:
        """The first message at or after ``start_seq`` matching ``subject``, or None."""
        try:
            m = await self.js.get_msg(stream, seq=max(1, start_seq), next=True, subject=subject)
        except nats.js.errors.NotFoundError:
            return None
        return RawMessage(m.subject or "", m.data or b"", int(m.seq or 0), dict(m.headers or {}))

    async def get_last(self, stream: str, subject: str) -> RawMessage | None:
        """The last message on an exact subject, or None."""
        try:
            m = await self.js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return None
        return RawMessage(m.subject or "", m.data or b"", int(m.seq or 0), dict(m.headers or {}))

    async def read(self, stream: str, subject: str, *, start_seq: int = 1, until_seq: int | None = None,
                   follow: bool = False) -> AsyncIterator[RawMessage]:
        """Yield the messages of ``subject`` in stream order from ``start_seq``.

        Without ``follow`` it stops at the end of what is stored now (or at ``until_seq``); with it,
        it keeps yielding new messages as they arrive.
        """
        first = await self.get_next(stream, start_seq, subject)
        if first is None and not follow:
            return
        if first is not None and until_seq is not None and first.seq > until_seq:
            return
        tail = await self.tail(stream, subject, start_seq=first.seq if first is not None else start_seq)
        try:
            while True:
                raw = await tail.get()
                assert raw is not None
                if until_seq is not None and raw.seq > until_seq:
                    return
                yield raw
                if until_seq is not None and raw.seq >= until_seq:
                    return
                if not follow and tail.pending == 0:
                    return
        finally:
            await tail.close()

    async def tail(self, stream: str, subject: str, *, start_seq: int = 1) -> Tail:
        """An ordered, live view of ``subject`` from ``start_seq``; read it with ``await tail.get()``."""
        t = Tail()
        t.sub = await self.js.subscribe(
            subject, stream=stream, ordered_consumer=True, cb=t.put,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, config=ConsumerConfig(opt_start_seq=max(1, start_seq)),
        )
        return t

    # -- consuming -----------------------------------------------------------------------------

    async def consume(self, stream: str, durable: str, subject: str, handler: Handler, *,
                      stop: asyncio.Event, concurrency: int = 16, ack_wait: float = 30.0,
                      max_deliver: int = 20, key: Callable[[RawMessage], str | None] | None = None,
                      dead_letter_kind: str | None = None, drain_timeout: float = 10.0) -> None:
        """Run ``handler`` over a durable pull consumer shared by every replica until ``stop`` is set.

        Success acks; RetryableError (and unexpected errors) nak with a growing delay; PermanentError,
        or too many deliveries, sends the message to the dead-letter stream and terminates it. Messages
        with the same ``key`` are handled one at a time, in delivery order. Long handlers send
        in-progress heartbeats so the server does not redeliver them.
        """
        config = ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, max_deliver=max_deliver,
            max_ack_pending=max(concurrency * 4, 64), filter_subject=subject,
        )
        sub = await self._pull_subscribe(stream, durable, subject, config)
        self.bound.add(durable)
        sem = asyncio.Semaphore(concurrency)
        locks: dict[str, asyncio.Lock] = {}
        tasks: set[asyncio.Task[None]] = set()
        dlq = subjects.dead_letter(dead_letter_kind or durable)

        async def _one(msg: Msg) -> None:
            md = msg.metadata
            raw = RawMessage(msg.subject, msg.data, int(md.sequence.stream), dict(msg.headers or {}),
                             md.timestamp, int(md.num_delivered))
            k = key(raw) if key else None
            lock = locks.setdefault(k, asyncio.Lock()) if k else None
            try:
                if lock:
                    async with lock:
                        await self._handle(msg, raw, handler, ack_wait, max_deliver, dlq)
                else:
                    await self._handle(msg, raw, handler, ack_wait, max_deliver, dlq)
            finally:
                sem.release()
                if k and lock is not None and not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
                    locks.pop(k, None)

        try:
            while not stop.is_set():
                await sem.acquire()
                free = 1 + sum(1 for _ in range(sem._value))  # type: ignore[attr-defined]
                try:
                    msgs = await sub.fetch(min(free, 64), timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    sem.release()
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                        nats.js.errors.APIError, nats.js.errors.ServiceUnavailableError) as exc:
                    sem.release()
                    log.warning("fetch_failed", consumer=durable, error=repr(exc))
                    await _sleep_unless(stop, 0.5)
                    continue
                for i, msg in enumerate(msgs):
                    if i > 0:
                        await sem.acquire()
                    t = asyncio.create_task(_one(msg))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                if not msgs:
                    sem.release()
        finally:
            self.bound.discard(durable)
            if tasks:
                _done, pending = await asyncio.wait(tasks, timeout=drain_timeout)
                for t in pending:
                    t.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _pull_subscribe(self, stream: str, durable: str, subject: str, config: ConsumerConfig):  # type: ignore[no-untyped-def]
        try:
            await self.js.add_consumer(stream, config)
        except nats.js.errors.BadRequestError:
            pass  # exists with a different config: bind to it as it is
        return await self.js.pull_subscribe_bind(durable, stream=stream)

    async def _handle(self, msg: Msg, raw: RawMessage, handler: Handler, ack_wait: float, max_deliver: int,
                      dlq: str) -> None:
        heartbeat = asyncio.create_task(_heartbeat(msg, ack_wait / 3))
        try:
            await handler(raw)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except PermanentError as exc:
            await self._dead_letter(msg, raw, dlq, str(exc))
            return
        except Exception as exc:
            if raw.delivered >= max_deliver:
                await self._dead_letter(msg, raw, dlq, f"gave up after {raw.delivered} deliveries: {exc!r}")
                return
            delay = min(0.2 * 2 ** (raw.delivered - 1), 10.0)
            level = log.debug if isinstance(exc, RetryableError) else log.warning
            level("message_retry", subject=raw.subject, seq=raw.seq, delivered=raw.delivered,
                  error=repr(exc), delay=delay)
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
            return
        finally:
            heartbeat.cancel()
        with contextlib.suppress(Exception):
            await msg.ack()

    async def _dead_letter(self, msg: Msg, raw: RawMessage, dlq: str, reason: str) -> None:
        log.error("message_dead_lettered", subject=raw.subject, seq=raw.seq, reason=reason)
        with contextlib.suppress(Exception):
            await self.publish(dlq, raw.data, headers={
                "Natib-Original-Subject": raw.subject, "Natib-Original-Seq": str(raw.seq),
                "Natib-Reason": reason[:1000],
            })
        with contextlib.suppress(Exception):
            await msg.term()

    # -- KV ------------------------------------------------------------------------------------

    async def kv_put(self, key: str, value: bytes) -> None:
        """Write a materialised view."""
        kv = await self.kv()
        await kv.put(key, value)

    async def kv_get(self, key: str) -> bytes | None:
        """Read a materialised view, None when absent."""
        kv = await self.kv()
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.value

    async def kv_items(self, prefix: str) -> list[tuple[str, bytes]]:
        """Every (key, value) whose key starts with ``prefix``."""
        kv = await self.kv()
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        out = []
        for k in sorted(keys):
            if k.startswith(prefix):
                v = await self.kv_get(k)
                if v is not None:
                    out.append((k, v))
        return out

    async def kv_delete(self, key: str) -> None:
        """Remove a materialised view."""
        kv = await self.kv()
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await kv.purge(key)

    async def _objects(self):  # type: ignore[no-untyped-def]
        if getattr(self, "_obj", None) is None:
            try:
                self._obj = await self.js.object_store(subjects.SNAPSHOT_BUCKET)
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
                self._obj = await self.js.create_object_store(subjects.SNAPSHOT_BUCKET)
        return self._obj

    async def object_put(self, name: str, data: bytes) -> None:
        """Store a large blob (a snapshot), replacing any previous one of that name."""
        store = await self._objects()
        await asyncio.wait_for(store.put(name, data), 30)

    async def object_get(self, name: str) -> bytes | None:
        """A stored blob, None when absent."""
        store = await self._objects()
        try:
            # nats-py waits for every chunk without a deadline; an object replaced meanwhile never completes.
            result = await asyncio.wait_for(store.get(name), 10)
        except (TimeoutError, nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError,
                nats.js.errors.ObjectDeletedError):
            return None
        return bytes(result.data or b"")

    async def object_delete(self, name: str) -> None:
        """Remove a stored blob (no error when absent)."""
        store = await self._objects()
        with contextlib.suppress(nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError,
                                 nats.js.errors.ObjectDeletedError):
            await store.delete(name)

    async def purge(self, stream: str, subject: str) -> None:
        """Delete every message of ``subject`` from a stream."""
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.purge_stream(stream, subject=subject)

    # -- request / reply -------------------------------------------------------------------------

    async def serve(self, subject: str, handler: Callable[[bytes], Awaitable[bytes]], *, queue: str) -> None:
        """Answer requests on ``subject`` (one replica of the queue group answers each)."""
        async def _cb(msg: Msg) -> None:
            try:
                reply = await handler(msg.data)
            except Exception as exc:
                log.exception("request_failed", subject=subject)
                reply = b'{"ok": false, "error": ' + _json_str(repr(exc)) + b"}"
            with contextlib.suppress(Exception):
                await msg.respond(reply)

        await self.nc.subscribe(subject, queue=queue, cb=_cb)
        self.bound.add(subject)

    async def watch_subjects(self, subject: str, on_subject: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """Call ``on_subject`` with the subject of every core-NATS message on ``subject`` (a wildcard is fine),
        as a change notice: no delivery guarantee, the stream stays the truth. Returns the unsubscribe."""
        async def _cb(msg: Msg) -> None:
            on_subject(msg.subject)

        sub = await self.nc.subscribe(subject, cb=_cb)
        return sub.unsubscribe

    async def request(self, subject: str, data: bytes, *, timeout: float = 10.0) -> bytes:
        """Send a request and return the reply; NoResponders when nobody serves it."""
        try:
            msg = await self.nc.request(subject, data, timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise NoResponders(subject) from exc
        return msg.data


async def _heartbeat(msg: Msg, every: float) -> None:
    while True:
        await asyncio.sleep(max(every, 0.1))
        with contextlib.suppress(Exception):
            await msg.in_progress()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _json_str(text: str) -> bytes:
    import json

    return json.dumps(text).encode()
