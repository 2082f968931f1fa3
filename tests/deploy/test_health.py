"""The probe endpoint: /healthz and /readyz over real HTTP, readiness tied to a real NATS connection."""

from __future__ import annotations

import asyncio
import http.client
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable

import pytest

from natib.actors.app import readiness
from natib.runtime.bus import Bus
from natib.runtime.errors import ConfigError
from natib.runtime.health import HealthServer
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings
from tests.conftest import NATIB, REPO, eventually


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


async def _aget(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    return await asyncio.to_thread(_get, port, path, method)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_routes_and_methods() -> None:
    problem: list[str | None] = ["nats disconnected: x-0"]
    async with HealthServer(lambda: problem[0], port=0, host="127.0.0.1") as server:
        assert await _aget(server.port, "/healthz") == (200, "ok\n")
        assert await _aget(server.port, "/readyz") == (503, "nats disconnected: x-0\n")
        problem[0] = None
        assert await _aget(server.port, "/readyz?verbose=1") == (200, "ready\n")
        assert await _aget(server.port, "/readyz", "HEAD") == (200, "")
        status, body = await _aget(server.port, "/metrics")
        assert status == 404 and "/metrics" in body
        status, body = await _aget(server.port, "/readyz", "POST")
        assert status == 405 and "POST" in body


async def test_a_failing_check_is_not_ready_and_the_server_keeps_serving() -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    async with HealthServer(broken, port=0, host="127.0.0.1") as server:
        status, body = await _aget(server.port, "/readyz")
        assert status == 503 and "boom" in body
        assert await _aget(server.port, "/healthz") == (200, "ok\n")


async def test_garbage_and_silent_clients_do_not_break_it() -> None:
    async with HealthServer(lambda: None, port=0, host="127.0.0.1") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"NONSENSE\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 400 ")
        # A client that connects and hangs up without a request.
        _r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.close()
        assert await _aget(server.port, "/healthz") == (200, "ok\n")


async def test_readiness_follows_the_connection_and_bound_consumers(nats_server: TestServer) -> None:
    bus = await Bus.connect(nats_server.url, name="natib-test-0")
    try:
        assert readiness([], 1) == "starting: 0 of 1 actors connected to NATS"
        actors = [("test-0", bus, object())]
        assert readiness(actors, 1) == "consumers not bound yet: test-0"
        bus.bound.add("test")
        assert readiness(actors, 1) is None

        class OwnCheck:
            def ready(self) -> str | None:
                return "grpc port not listening"

        assert readiness([("db-0", bus, OwnCheck())], 1) == "db-0: grpc port not listening"
        nats_server.stop()
        await eventually(lambda: readiness(actors, 1) == "nats disconnected: test-0", timeout=10)
    finally:
        await bus.close()


def test_health_port_setting() -> None:
    assert Settings.from_env({}).health_port is None
    assert Settings.from_env({"NATIB_HEALTH_PORT": "8080"}).health_port == 8080
    for bad in ("0", "70000", "http", "-1"):
        with pytest.raises(ConfigError, match="NATIB_HEALTH_PORT: expected a TCP port"):
            Settings.from_env({"NATIB_HEALTH_PORT": bad})


def test_cli_rejects_a_bad_health_port(natib_env: dict[str, str]) -> None:
    proc = subprocess.run([NATIB, "actor", "collector", "--health-port", "0"], env=natib_env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 2 and "--health-port" in proc.stderr and "expected a TCP port" in proc.stderr


@pytest.mark.parametrize(("kind", "how"), [("suggestion", "flag"), ("suggestion", "env"), ("dbmanager", "flag")])
async def test_actor_process_is_ready_only_while_nats_is_up(
    natib_env: dict[str, str], nats_server: TestServer, kind: str, how: str
) -> None:
    port = _free_port()
    env = dict(natib_env)
    env["NATIB_DBMANAGER_PORT"] = str(_free_port())
    args = [NATIB, "actor", kind]
    if how == "flag":
        args += ["--health-port", str(port)]
    else:
        env["NATIB_HEALTH_PORT"] = str(port)
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL, cwd=REPO)

    async def status() -> int | None:
        try:
            return (await _aget(port, "/readyz"))[0]
        except OSError:
            return None

    try:
        await eventually(lambda: _is(status, 200), timeout=20)
        assert (await _aget(port, "/healthz"))[0] == 200
        nats_server.stop()
        await eventually(lambda: _is(status, 503), timeout=15)
        status_code, body = await _aget(port, "/readyz")
        assert status_code == 503 and f"nats disconnected: {kind}-0" in body
        assert (await _aget(port, "/healthz"))[0] == 200  # alive, just not ready: no restart wanted
        nats_server.start()
        await eventually(lambda: _is(status, 200), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _is(status: Callable[[], Awaitable[int | None]], want: int) -> bool:
    return await status() == want
