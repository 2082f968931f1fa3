"""Fixtures shared by every test: a real nats-server per test and an isolated NATIB_HOME."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from natib.runtime.server import TestServer

REPO = Path(__file__).resolve().parent.parent
NATIB = str(Path(sys.executable).parent / "natib")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[TestServer]:
    """A throwaway nats-server (the venv's binary, JetStream on) on a free loopback port."""
    with TestServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def natib_env(tmp_path: Path, nats_server: TestServer) -> dict[str, str]:
    """Environment for natib subprocesses: this test's server and home, short redelivery."""
    env = dict(os.environ)
    env.update({
        "NATS_URL": nats_server.url,
        "NATIB_HOME": str(tmp_path / "home"),
        "NATIB_ACK_WAIT": "2",
        "NATIB_LOG_FORMAT": "json",
        "NATIB_DRAIN_TIMEOUT": "3",
    })
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``natib`` console script."""
    return subprocess.run([NATIB, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd or REPO), check=False)


async def eventually(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> object:
    """Poll ``predicate`` (sync or async) until it returns a truthy value; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> Any:
    """Poll ``predicate`` (sync) from a test that drives natib processes; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
