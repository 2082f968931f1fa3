"""natib's own nats-server: found, version-checked, started detached, reused, replaced and stopped."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest

from natib.runtime import server as srv
from natib.runtime.errors import ConfigError, ServerError
from natib.runtime.server import (
    TestServer,
    ensure_server,
    find_server_binary,
    server_status,
    server_version,
    start_test_server,
    stop_server,
)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    return srv._pid_alive(pid)


def fake_binary(path: Path, version: str, body: str = "exit 0") -> Path:
    path.write_text(
        f'#!/bin/sh\nif [ "$1" = --version ]; then echo "nats-server: {version}"; exit 0; fi\n{body}\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "home"
    yield path
    stop_server(path, timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the binary -------------------------------------------------------------------------------------------


def test_default_binary_is_the_venv_one_and_new_enough() -> None:
    exe = find_server_binary()
    assert exe == Path(sys.executable).parent / "nats-server"
    assert server_version(exe) >= (2, 11, 0)


def test_old_binary_is_rejected_with_path_and_version(tmp_path: Path) -> None:
    old = fake_binary(tmp_path / "nats-server", "v2.9.10")
    with pytest.raises(ConfigError) as err:
        find_server_binary(old)
    assert str(old) in str(err.value)
    assert "2.9.10" in str(err.value)
    assert "2.11" in str(err.value)


def test_missing_or_garbage_binary_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an executable"):
        find_server_binary(tmp_path / "nope")
    with pytest.raises(ConfigError, match="not a nats-server"):
        find_server_binary(fake_binary(tmp_path / "other", ""))


def test_search_skips_old_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = fake_binary(tmp_path / "nats-server", "v2.9.10")
    real = Path(sys.executable).parent / "nats-server"
    monkeypatch.setattr(srv, "_candidates", lambda: iter([old, real]))
    assert find_server_binary() == real
    monkeypatch.setattr(srv, "_candidates", lambda: iter([old]))
    with pytest.raises(ConfigError, match="no usable nats-server") as err:
        find_server_binary()
    assert "2.9.10" in str(err.value)


# -- natib's own server -----------------------------------------------------------------------------------


def test_start_then_reuse(home: Path) -> None:
    first = ensure_server(home)
    assert first.started
    assert first.url == f"nats://127.0.0.1:{first.port}"
    assert first.store_dir == home / "nats" / "store"
    record = json.loads((home / "nats" / "server.json").read_text())
    assert (record["pid"], record["port"], record["url"]) == (first.pid, first.port, first.url)
    # Detached: its own session, and not our child, so it outlives the command that started it.
    assert os.getsid(first.pid) != os.getsid(0)
    assert f"PPid:\t{os.getpid()}\n" not in Path(f"/proc/{first.pid}/status").read_text()

    second = ensure_server(home)
    assert not second.started
    assert (second.pid, second.url) == (first.pid, first.url)
    assert server_status(home) == second


def test_server_outlives_the_process_that_started_it(home: Path) -> None:
    code = "import sys; from natib.runtime.server import ensure_server; print(ensure_server(sys.argv[1]).pid)"
    out = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout)
    status = server_status(home)
    assert status is not None and status.pid == pid
    assert not ensure_server(home).started


def test_stale_record_with_dead_pid_is_replaced(home: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    nats_dir = home / "nats"
    nats_dir.mkdir(parents=True)
    port = free_port()
    (nats_dir / "server.json").write_text(
        json.dumps({"url": f"nats://127.0.0.1:{port}", "pid": dead.pid, "port": port})
    )
    assert server_status(home) is None
    info = ensure_server(home)
    assert info.started and info.pid != dead.pid
    assert json.loads((nats_dir / "server.json").read_text())["pid"] == info.pid


def test_stale_record_with_live_pid_but_silent_port_is_replaced(home: Path) -> None:
    nats_dir = home / "nats"
    nats_dir.mkdir(parents=True)
    port = free_port()
    # Our own pid: alive, but not a nats-server and not answering on the port. It must not be killed.
    record = {"url": f"nats://127.0.0.1:{port}", "pid": os.getpid(), "port": port}
    (nats_dir / "server.json").write_text(json.dumps(record))
    info = ensure_server(home)
    assert info.started and info.pid != os.getpid()
    assert server_status(home) == info.__class__(**{**info.__dict__, "started": False})


def test_garbage_record_is_replaced(home: Path) -> None:
    (home / "nats").mkdir(parents=True)
    (home / "nats" / "server.json").write_text("{not json")
    assert server_status(home) is None
    assert ensure_server(home).started


def test_stop(home: Path) -> None:
    assert not stop_server(home)
    info = ensure_server(home)
    assert stop_server(home)
    assert not alive(info.pid)
    assert not (home / "nats" / "server.json").exists()
    assert server_status(home) is None
    assert not stop_server(home)
    # The next start keeps the previous run's log for post-mortems.
    again = ensure_server(home)
    assert again.started and again.pid != info.pid
    assert (home / "nats" / "server.log.1").exists()


def test_stop_does_not_kill_an_unrelated_process(home: Path) -> None:
    (home / "nats").mkdir(parents=True)
    record = {"url": "nats://127.0.0.1:1", "pid": os.getpid(), "port": 1}
    (home / "nats" / "server.json").write_text(json.dumps(record))
    assert not stop_server(home)
    assert not (home / "nats" / "server.json").exists()


def test_concurrent_starts_agree_on_one_server(home: Path) -> None:
    code = (
        "import sys, json; from natib.runtime.server import ensure_server; "
        "i = ensure_server(sys.argv[1]); print(json.dumps([i.pid, i.started]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({pid for pid, _ in results}) == 1
    assert sum(started for _, started in results) == 1


def test_failed_start_reports_the_log_tail(home: Path, tmp_path: Path) -> None:
    broken = fake_binary(tmp_path / "nats-server", "v2.15.1", body='echo "config is broken" >&2; exit 3')
    with pytest.raises(ServerError, match="config is broken"):
        ensure_server(home, binary=broken, timeout=5)
    assert not (home / "nats" / "server.json").exists()


@pytest.mark.asyncio
async def test_jetstream_works_on_the_started_server(home: Path) -> None:
    info = ensure_server(home)
    nc = await nats.connect(info.url, connect_timeout=5)
    try:
        assert nc.max_payload == 8 * 1024 * 1024
        js = nc.jetstream(timeout=5)
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.a", b"x" * (2 * 1024 * 1024))
        assert (ack.stream, ack.seq) == ("T", 1)
    finally:
        await nc.close()


# -- throwaway servers for tests --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_test_server_restart_keeps_port_and_data(tmp_path: Path) -> None:
    with TestServer(tmp_path) as server:
        url = server.url
        nc = await nats.connect(url)
        await nc.jetstream().add_stream(name="S", subjects=["s"])
        await nc.jetstream().publish("s", b"kept")
        await nc.close()

        first_pid = server.pid
        assert server.restart() == url
        assert server.pid not in (None, first_pid)
        nc = await nats.connect(url)
        msg = await nc.jetstream().get_msg("S", 1)
        assert msg.data == b"kept"
        await nc.close()
        pid = server.pid
    assert pid is not None and not alive(pid)


def test_start_test_server_context(tmp_path: Path) -> None:
    with (
        start_test_server(tmp_path / "a") as url_a,
        start_test_server(tmp_path / "b", jetstream=False) as url_b,
    ):
        assert url_a != url_b
        port = int(url_a.rsplit(":", 1)[1])
        assert srv._probe(port) is not None
    eventually(lambda: srv._probe(port) is None)


def test_test_server_kill_and_url_before_start(tmp_path: Path) -> None:
    server = TestServer(tmp_path)
    with pytest.raises(ServerError):
        _ = server.url
    server.start()
    pid = server.pid
    assert pid is not None
    server.stop(kill=True)
    assert server.pid is None and not alive(pid)


def test_relative_home_is_the_same_server_from_anywhere(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    info = ensure_server(Path("home"))
    monkeypatch.chdir(home)
    assert not ensure_server(Path("..") / "home").started
    assert stop_server(Path("..") / "home")
    assert not alive(info.pid)
