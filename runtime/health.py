"""A tiny HTTP endpoint for container probes: ``/healthz`` (the process is alive) and ``/readyz`` (it can work).

`HealthServer` runs on the actor process's own event loop with nothing but asyncio streams, so a probe that
gets an answer also proves the loop is not blocked. ``/readyz`` answers 200 only when its check returns no
problem; otherwise 503 with the problem as the body, e.g. ``nats disconnected: natib-launcher-0``. Both
accept GET and HEAD; any other method gets 405 and any other path 404.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from natib.runtime.logging import get_logger

__all__ = ["HealthServer", "ReadyCheck"]

log = get_logger("natib.health")

ReadyCheck = Callable[[], str | None]
"""Returns None when ready, else a one-line reason why not."""

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0


class HealthServer:
    """Serves ``/healthz`` and ``/readyz`` on ``host:port`` until `stop`; port 0 picks a free port."""

    def __init__(self, ready: ReadyCheck, *, port: int, host: str = "0.0.0.0") -> None:
        self.ready = ready
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; afterwards `port` is the bound port."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("health_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(self, method: str, path: str) -> tuple[int, str]:
        """The status and body for one request (the routing, without any I/O)."""
        path = path.split("?", 1)[0]
        if path not in ("/healthz", "/readyz"):
            return 404, f"no such path {path!r}; try /healthz or /readyz"
        if method not in ("GET", "HEAD"):
            return 405, f"method {method} not allowed; use GET or HEAD"
        if path == "/healthz":
            return 200, "ok"
        try:
            problem = self.ready()
        except Exception as exc:  # a broken check means not ready, never a crashed probe server
            problem = f"readiness check failed: {exc!r}"
        return (503, problem) if problem else (200, "ready")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            if len(head) > _MAX_REQUEST:
                status, body, method = 400, "request too large", "GET"
            else:
                parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    status, body, method = 400, "malformed request line", "GET"
                else:
                    method = parts[0]
                    status, body = self.answer(method, parts[1])
            payload = (body + "\n").encode()
            header = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(header if method == "HEAD" else header + payload)
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(writer.drain(), _READ_TIMEOUT)
        except TimeoutError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
