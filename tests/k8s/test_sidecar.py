"""``natib sidecar``: a trial pod's metrics file or event files shipped to NATIB_LOGS, over a real NATS."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from natib.actors.launcher.actor import H_ATTEMPT, H_OFFSET
from natib.actors.launcher.kubernetes import H_SIDECAR_END
from natib.actors.launcher.sidecar import Sidecar, SidecarError
from natib.messages import subjects
from natib.runtime.bus import Bus, RawMessage
from natib.runtime.server import TestServer
from tests.conftest import eventually

NATIB = str(Path(sys.executable).parent / "natib")


async def _messages(bus: Bus, subject: str) -> list[RawMessage]:
    return [raw async for raw in bus.read(subjects.LOGS_STREAM, subject)]


@pytest.fixture
async def bus(nats_server: TestServer) -> Bus:
    b = await Bus.connect(nats_server.url)
    await b.ensure_topology()
    yield b  # type: ignore[misc]
    await b.close()


async def test_ships_a_files_lines_then_the_end_marker(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "metrics.log"
    sidecar = Sidecar(bus, experiment="e", trial="e-t1", collector="File", path=str(path))
    assert await sidecar.ship() == 0, "no file yet: nothing to ship"
    path.write_text("accuracy=0.5\n")
    assert await sidecar.ship() == 1
    with path.open("a") as fh:
        fh.write("accuracy=0.7\nloss=0.1\n")
    await sidecar.finish()
    msgs = await _messages(bus, subjects.trial_log("e", "e-t1", "file"))
    assert b"".join(m.data for m in msgs) == path.read_bytes()
    assert all(m.headers[H_ATTEMPT] == "1" for m in msgs)
    assert msgs[-1].data == b"" and msgs[-1].headers[H_SIDECAR_END] == "1"
    assert [m.headers.get(H_OFFSET) for m in msgs[:-1]] == ["13", str(len(path.read_bytes()))]
    assert all("Natib-Chunk" not in m.headers for m in msgs), "the launcher's chunk sequence is its own"
    assert msgs[0].headers["Natib-Path"] == "metrics.log"


async def test_a_restarted_sidecar_resumes_after_what_was_shipped(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "metrics.log"
    path.write_text("accuracy=0.5\n")
    first = Sidecar(bus, experiment="e", trial="e-t2", collector="File", path=str(path))
    await first.ship()
    with path.open("a") as fh:
        fh.write("accuracy=0.6\n")
    second = Sidecar(bus, experiment="e", trial="e-t2", collector="File", path=str(path))
    await second.resume()
    await second.ship()
    msgs = await _messages(bus, subjects.trial_log("e", "e-t2", "file"))
    assert [m.data for m in msgs] == [b"accuracy=0.5\n", b"accuracy=0.6\n"]


async def test_directory_of_metrics_files(bus: Bus, tmp_path: Path) -> None:
    root = tmp_path / "metrics"
    root.mkdir()
    sidecar = Sidecar(bus, experiment="e", trial="e-t3", collector="File", path=str(root), path_kind="Directory")
    (root / "a.log").write_text("accuracy=0.1\n")
    (root / "b.log").write_text("accuracy=0.2\n")
    await sidecar.finish()
    msgs = await _messages(bus, subjects.trial_log("e", "e-t3", "file"))
    assert {(m.headers.get("Natib-Path"), m.data) for m in msgs[:-1]} == {
        ("metrics/a.log", b"accuracy=0.1\n"), ("metrics/b.log", b"accuracy=0.2\n")}


async def test_tensorflow_event_scalars(bus: Bus, tmp_path: Path) -> None:
    tensorboardX = pytest.importorskip("tensorboardX")
    logdir = tmp_path / "tfevent"
    writer = tensorboardX.SummaryWriter(str(logdir))
    for step, value in enumerate([0.5, 0.75]):
        writer.add_scalar("accuracy", value, step)
    writer.close()
    sidecar = Sidecar(bus, experiment="e", trial="e-t4", collector="TensorFlowEvent", path=str(logdir),
                      metric_names=["accuracy"])
    await sidecar.finish()
    msgs = await _messages(bus, subjects.trial_log("e", "e-t4", "tfevent"))
    samples = [json.loads(line) for m in msgs for line in m.data.splitlines()]
    assert [(s["name"], s["value"], s["step"]) for s in samples] == [("accuracy", "0.5", 0), ("accuracy", "0.75", 1)]
    assert msgs[-1].headers[H_SIDECAR_END] == "1"


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"collector": "StdOut"}, "--collector: expected one of File, TensorFlowEvent, got 'StdOut'"),
    ({"path_kind": "Dir"}, "--path-kind: expected one of File, Directory, got 'Dir'"),
    ({"path": " "}, "--path: required"),
    ({"trial": "Bad_Name"}, "--trial 'Bad_Name' is not a DNS-1123 label"),
    ({"collector": "TensorFlowEvent"}, "--metric: TensorFlowEvent needs the metric names"),
])
async def test_bad_arguments_name_the_option(bus: Bus, kwargs: dict[str, str], reason: str) -> None:
    args = {"experiment": "e", "trial": "e-t1", "collector": "File", "path": "/m/metrics.log", **kwargs}
    with pytest.raises(SidecarError, match=reason.replace("(", r"\(")):
        Sidecar(bus, **args)  # type: ignore[arg-type]


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NATIB, "sidecar", *args], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_cli_refuses_bad_input(natib_env: dict[str, str]) -> None:
    result = _run(natib_env, "--experiment", "e", "--trial", "e-t1", "--collector", "Bogus", "--path", "/x")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --collector: expected one of File, TensorFlowEvent, got 'Bogus'"
    env = {k: v for k, v in natib_env.items() if k != "NATS_URL"}
    result = _run(env, "--experiment", "e", "--trial", "e-t1", "--path", "/x")
    assert result.returncode == 1 and "NATS_URL must be set" in result.stderr
    env = {k: v for k, v in natib_env.items() if k not in ("NATIB_EXPERIMENT", "NATIB_TRIAL_NAME")}
    result = _run(env, "--path", "/x")
    assert result.returncode == 1 and "--experiment and --trial" in result.stderr


@pytest.mark.slow
async def test_cli_ships_until_sigterm(natib_env: dict[str, str], nats_server: TestServer, tmp_path: Path) -> None:
    path = tmp_path / "m" / "metrics.log"
    proc = await asyncio.create_subprocess_exec(
        NATIB, "sidecar", "--path", str(path), "--interval", "0.1",
        env={**natib_env, "NATIB_EXPERIMENT": "cli", "NATIB_TRIAL_NAME": "cli-t1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    bus = await Bus.connect(nats_server.url)
    try:
        subject = subjects.trial_log("cli", "cli-t1", "file")
        path.parent.mkdir()
        path.write_text("accuracy=0.9\n")

        async def shipped() -> bool:
            return any(m.data for m in await _messages(bus, subject)) if await _has_stream(bus) else False

        await eventually(shipped, timeout=20)
        proc.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(proc.communicate(), 20))[0].decode()
        assert proc.returncode == 0, output
        msgs = await _messages(bus, subject)
        assert [m.data for m in msgs] == [b"accuracy=0.9\n", b""]
        assert msgs[-1].headers[H_SIDECAR_END] == "1"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await bus.close()


async def _has_stream(bus: Bus) -> bool:
    try:
        await bus.ensure_topology()
    except Exception:
        return False
    return True

