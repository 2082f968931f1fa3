"""The trial launcher actor: turns LaunchTrial/StopTrial commands into running (or stopped) trials.

A launch is held (un-acked, with heartbeats) for as long as its trial runs, so if this process dies
the command is redelivered and the next launcher re-attaches to the still-running process, or reports
its exit, or runs it again; the trial's name keeps it from ever running twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natib.actors.base import Context
from natib.actors.launcher.local import (
    WRAPPER,
    TrialDir,
    alive,
    kill_group,
    process_start_ticks,
    remove_trial_dir,
    trial_dir,
    trial_env,
    working_dir,
)
from natib.actors.launcher.sources import (
    Chunk,
    CustomSource,
    FileSource,
    FileTail,
    PrometheusSource,
    TFEventSource,
    collector_kind,
    local_mount,
    mount_path,
    poll_all,
    rewrite,
)
from natib.actors.launcher.template import TemplateError, find_primary_container, local_command
from natib.algorithms.pbt import checkpoint_plan
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.codec import UndecodableMessage
from natib.messages.commands import LaunchTrial, StopTrial
from natib.messages.subjects import LOG_SOURCES
from natib.runtime.bus import RawMessage
from natib.runtime.errors import PermanentError
from natib.runtime.logging import get_logger

log = get_logger("natib.launcher")

KIND = "launcher"
POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 5.0
CUSTOM_GRACE_SECONDS = 10.0

H_ATTEMPT = "Natib-Attempt"
H_CHUNK = "Natib-Chunk"
H_OFFSET = "Natib-Offset"
H_EOF = "Natib-Eof"
H_EXIT = "Natib-Exit-Code"
H_STOP = "Natib-Stop-Reason"
H_STOP_MESSAGE = "Natib-Stop-Message"


@dataclass
class Position:
    """How far a trial's sources have been shipped: the next chunk number and each source's byte offset."""

    chunk: int = 0
    offsets: dict[str, int] = field(default_factory=dict)


async def dispatch(raw: RawMessage, launch: Callable[[str, LaunchTrial], Awaitable[None]],
                   stop: Callable[[str, StopTrial], Awaitable[None]]) -> None:
    """Decode one launcher command and hand it to ``launch`` or ``stop`` (a command of a newer natib is skipped)."""
    try:
        env = codec.decode(raw.data)
    except UndecodableMessage as exc:
        raise PermanentError(str(exc)) from exc
    if env is None:
        return
    if isinstance(env.body, LaunchTrial):
        await launch(env.experiment, env.body)
    elif isinstance(env.body, StopTrial):
        await stop(env.experiment, env.body)


class LocalLauncher:
    """Runs trials as local process groups, streaming their output to NATIB_LOGS."""

    kind = KIND

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.root = ctx.settings.trials_dir
        self._start_locks: dict[str, asyncio.Lock] = {}
        self._running: dict[str, int] = {}
        self._following: dict[str, asyncio.Event] = {}

    async def run(self) -> None:
        """Consume launcher commands until stopped."""
        await self.ctx.bus.consume(
            subjects.COMMANDS_STREAM, KIND, subjects.commands_for(KIND), self.on_command, stop=self.ctx.stop,
            concurrency=512, ack_wait=self.ctx.settings.ack_wait, drain_timeout=self.ctx.settings.drain_timeout,
        )

    async def on_command(self, raw: RawMessage) -> None:
        """Dispatch one command."""
        await dispatch(raw, self.launch, self.stop)

    # -- launch --------------------------------------------------------------------------------

    async def launch(self, experiment: str, cmd: LaunchTrial) -> None:
        """Run the trial to its end (or re-attach to it) and publish its output and end marker."""
        td = trial_dir(self.root, experiment, cmd.trial)
        if td.done_file.exists():
            return
        lock = self._start_locks.setdefault(cmd.trial, asyncio.Lock())
        async with lock:
            if td.done_file.exists():
                return
            # A redelivery while the trial is already followed here (this process was too busy to renew the
            # message in time) waits for that to end instead of shipping the output twice.
            following = self._following.get(cmd.trial)
            if following is None:
                started = await self._attach_or_start(experiment, cmd, td)
                if started is None:
                    return
                pid, attempt, proc = started
                self._running[cmd.trial] = pid
                done = self._following[cmd.trial] = asyncio.Event()
        if following is not None:
            await following.wait()
            return
        try:
            await self._follow(experiment, cmd.trial, td, pid, attempt, proc, cmd)
        finally:
            self._running.pop(cmd.trial, None)
            self._start_locks.pop(cmd.trial, None)
            self._following.pop(cmd.trial, None)
            done.set()

    async def _attach_or_start(self, experiment: str, cmd: LaunchTrial,
                               td: TrialDir) -> tuple[int, int, asyncio.subprocess.Process | None] | None:
        """(pid, attempt, our child or None) of the trial's process: the one already running, or a new one."""
        if td.stopped() is not None and td.read_pid() is None:
            await self._publish_end(experiment, cmd.trial, td, attempt=1, chunk=0, exit_code=None)
            return None
        recorded = td.read_pid()
        finished = recorded is not None and (
            alive(recorded[0], recorded[1]) or td.exit_code() is not None or td.stopped() is not None
        )
        if recorded is not None and finished:
            pid, attempt = recorded[0], recorded[2]
            log.info("trial_reattached", experiment=experiment, trial=cmd.trial, pid=pid)
            # The start may never have been announced if the last launcher died right after spawning.
            await self._announce_start(experiment, cmd.trial, attempt, pid, td)
            return pid, attempt, None
        attempt = (recorded[2] + 1) if recorded else 1
        proc = await self._start(experiment, cmd, td, attempt)
        return (proc.pid, attempt, proc) if proc is not None else None

    async def _start(self, experiment: str, cmd: LaunchTrial, td: TrialDir,
                     attempt: int) -> asyncio.subprocess.Process | None:
        td.path.mkdir(parents=True, exist_ok=True)
        try:
            container = find_primary_container(cmd.run_spec, cmd.primary_container_name)
            local = local_command(container)
        except TemplateError as exc:
            await self._fail(experiment, cmd.trial, td, str(exc))
            return None
        if local.image:
            log.info("trial_image_ignored", trial=cmd.trial, image=local.image,
                     detail="the local backend runs the command on this machine")
        for name in local.skipped_env:
            log.warning("trial_env_skipped", trial=cmd.trial, env=name, detail="valueFrom needs Kubernetes")
        td.output.unlink(missing_ok=True)
        td.exit_code_file.unlink(missing_ok=True)
        extra = {
            "KATIB_TRIAL_NAME": cmd.trial, "NATIB_TRIAL_NAME": cmd.trial, "NATIB_EXPERIMENT": experiment,
            "NATIB_TRIAL_DIR": str(td.path), "NATIB_ATTEMPT": str(attempt),
        }
        nats_url = self._nats_url()
        if nats_url:
            extra["NATS_URL"] = nats_url
        env = trial_env(dict(os.environ), local.env, extra)
        cwd = working_dir(local.working_dir, cmd.source_dir, td.path)
        argv = list(local.argv)
        mount = mount_path(cmd.metrics_collector)
        if mount is not None:
            mounted, local_dir = local_mount(td.path, *mount)
            local_dir.mkdir(parents=True, exist_ok=True)
            argv = rewrite(argv, mounted, local_dir)
            env = dict(zip(env, rewrite(list(env.values()), mounted, local_dir), strict=True))
            env["NATIB_METRICS_PATH"] = rewrite([mount[0]], mounted, local_dir)[0]
        if cmd.checkpoint_dir:
            own = self._checkpoints(experiment, cmd)
            argv = rewrite(argv, cmd.checkpoint_dir.rstrip("/"), own)
            env = dict(zip(env, rewrite(list(env.values()), cmd.checkpoint_dir.rstrip("/"), own), strict=True))
            env["NATIB_CHECKPOINT_DIR"] = str(own)
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", WRAPPER, "natib-trial", str(td.output), str(td.exit_code_file), str(td.pid_file),
                *argv,
                cwd=str(cwd), env=env, start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            await self._fail(experiment, cmd.trial, td, f"cannot start trial: {exc}")
            return None
        if collector_kind(cmd.metrics_collector) == "Custom":
            await self._start_custom(cmd, td, env, cwd, mount)
        ticks = process_start_ticks(proc.pid) or 0
        # The wrapper records the pid too (through pid.tmp): a temporary file of our own, so neither rename
        # takes the other's file away; whichever lands last, the pid is the same.
        mine = td.pid_file.with_suffix(".launcher.tmp")
        mine.write_text(f"{proc.pid} {ticks} {attempt}")
        os.replace(mine, td.pid_file)
        await self._announce_start(experiment, cmd.trial, attempt, proc.pid, td, cwd)
        log.info("trial_started", experiment=experiment, trial=cmd.trial, pid=proc.pid, attempt=attempt,
                 argv0=local.argv[0])
        return proc

    async def _announce_start(self, experiment: str, trial: str, attempt: int, pid: int, td: TrialDir,
                              cwd: Path | None = None) -> None:
        """Publish TrialStarted (deduplicated by trial and attempt, so announcing twice is harmless)."""
        await self.ctx.store.append_fact(
            experiment, subjects.trial_event(experiment, trial, "trial.started"),
            ev.TrialStarted(trial=trial, attempt=attempt, pid=pid, host=socket.gethostname(),
                            workdir=str(cwd) if cwd else None),
            msg_id=f"{trial}:started:{attempt}",
        )

    def _checkpoints(self, experiment: str, cmd: LaunchTrial) -> Path:
        """The trial's own checkpoint directory, starting as a copy of its parent's (population based training)."""
        own_name, parent_name = checkpoint_plan(cmd.trial, cmd.labels)
        root = self.ctx.settings.home / "checkpoints" / experiment
        own = root / own_name
        parent = root / parent_name if parent_name else None
        if parent is not None and parent.is_dir() and parent != own and not own.exists():
            shutil.copytree(parent, own)
        own.mkdir(parents=True, exist_ok=True)
        return own

    def _nats_url(self) -> str | None:
        """The NATS address trials use for ``natib.report_metrics``."""
        url = self.ctx.settings.nats_url
        if url:
            return url
        connected = getattr(self.ctx.bus.nc, "connected_url", None)
        return connected.geturl() if connected is not None else None

    async def _start_custom(self, cmd: LaunchTrial, td: TrialDir, env: dict[str, str], cwd: Path,
                            mount: tuple[str, str] | None) -> None:
        """Run the experiment's custom collector container beside the trial, its output going to custom.log."""
        container = ((cmd.metrics_collector or {}).get("collector") or {}).get("customCollector") or {}
        try:
            custom = local_command(container)
        except TemplateError as exc:
            log.warning("custom_collector_unusable", trial=cmd.trial, error=str(exc))
            return
        argv, cenv = list(custom.argv), {**env, **custom.env}
        if mount is not None:
            mounted, local_dir = local_mount(td.path, *mount)
            argv = rewrite(argv, mounted, local_dir)
            cenv = dict(zip(cenv, rewrite(list(cenv.values()), mounted, local_dir), strict=True))
        log_path = td.path / "custom.log"
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", WRAPPER, "natib-collector", str(log_path), str(td.path / "custom.exit"),
            str(td.path / "custom.wrapper.pid"), *argv,
            cwd=str(cwd), env=cenv, start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        (td.path / "custom.pid").write_text(f"{proc.pid} {process_start_ticks(proc.pid) or 0}")
        log.info("custom_collector_started", trial=cmd.trial, pid=proc.pid, argv0=argv[0])

    def _sources(self, cmd: LaunchTrial, td: TrialDir) -> list[Any]:
        """The metric sources to follow next to this trial, from the experiment's collector spec."""
        kind = collector_kind(cmd.metrics_collector)
        mount = mount_path(cmd.metrics_collector)
        if kind == "File" and mount is not None:
            _mounted, local_dir = local_mount(td.path, *mount)
            return [FileSource(local_dir, mount[1], mount[0])]
        if kind == "TensorFlowEvent" and mount is not None:
            _mounted, local_dir = local_mount(td.path, *mount)
            return [TFEventSource(local_dir, cmd.metric_names)]
        if kind == "PrometheusMetric":
            return [PrometheusSource(cmd.metrics_collector or {}, cmd.metric_names)]
        if kind == "Custom":
            return [CustomSource(td.path / "custom.log")]
        return []

    async def _follow(self, experiment: str, trial: str, td: TrialDir, pid: int, attempt: int,
                      proc: asyncio.subprocess.Process | None, cmd: LaunchTrial) -> None:
        pos = await self._published_position(experiment, trial, attempt)
        sources = self._sources(cmd, td)
        for source in sources:
            if isinstance(source, CustomSource):
                source.tail.offset = pos.offsets.get("custom", 0)
            elif isinstance(source, FileSource) and source.kind == "File":
                source.tails[source.root] = FileTail(source.root, pos.offsets.get("file", 0))
        ticks = (td.read_pid() or (pid, 0, attempt))[1]
        while True:
            await self._ship(experiment, trial, td, attempt, pos, sources)
            if proc is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), POLL_SECONDS * 4)
                if proc.returncode is not None:
                    break
            else:
                if not alive(pid, ticks):
                    break
                await asyncio.sleep(POLL_SECONDS * 4)
        await self._finish_custom(td, experiment, trial, attempt, pos, sources)
        await self._ship(experiment, trial, td, attempt, pos, sources)
        exit_code = td.exit_code()
        if exit_code is None and proc is not None and proc.returncode is not None and td.stopped() is None:
            exit_code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        await self._publish_end(experiment, trial, td, attempt=attempt, chunk=pos.chunk, exit_code=exit_code)
        log.info("trial_exited", experiment=experiment, trial=trial, exit_code=exit_code,
                 stopped=(td.stopped() or ("", ""))[0] or None)

    async def _finish_custom(self, td: TrialDir, experiment: str, trial: str, attempt: int, pos: Position,
                             sources: list[Any]) -> None:
        """Give a custom collector a few seconds to report the trial's final values, then stop it."""
        try:
            pid, ticks = (int(x) for x in (td.path / "custom.pid").read_text().split())
        except (OSError, ValueError):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CUSTOM_GRACE_SECONDS
        while alive(pid, ticks) and loop.time() < deadline:
            await self._ship(experiment, trial, td, attempt, pos, sources)
            await asyncio.sleep(POLL_SECONDS * 2)
        if alive(pid, ticks):
            kill_group(pid, 15)

    async def _published_position(self, experiment: str, trial: str, attempt: int) -> Position:
        """Where this attempt's shipping stopped: next chunk number and per-source byte offsets."""
        pos = Position()
        for source in LOG_SOURCES:
            if source == "push":
                continue
            last = await self.ctx.bus.get_last(subjects.LOGS_STREAM, subjects.trial_log(experiment, trial, source))
            if last is None:
                continue
            pos.chunk = max(pos.chunk, int(last.headers.get(H_CHUNK, "-1")) + 1)
            if int(last.headers.get(H_ATTEMPT, "0")) == attempt and not last.headers.get(H_EOF):
                pos.offsets[source] = int(last.headers.get(H_OFFSET, "0"))
        return pos

    async def _ship(self, experiment: str, trial: str, td: TrialDir, attempt: int, pos: Position,
                    sources: list[Any]) -> None:
        """Publish the trial's new output and whatever its metric sources have produced."""
        out = FileTail(td.output, pos.offsets.get("out", 0))
        chunks: list[Chunk] = []
        while data := await asyncio.to_thread(out.read):
            chunks.append(Chunk("out", data, {H_OFFSET: str(out.offset)}))
        for chunk in await poll_all(sources):
            headers = dict(chunk.headers)
            if isinstance(getattr(chunk, "source", None), str) and chunk.source in ("file", "custom"):
                tail = next((s for s in sources if s.name == chunk.source), None)
                if isinstance(tail, CustomSource):
                    headers[H_OFFSET] = str(tail.tail.offset)
                elif isinstance(tail, FileSource) and tail.kind == "File":
                    headers[H_OFFSET] = str(tail.tails[tail.root].offset)
            chunks.append(Chunk(chunk.source, chunk.data, headers))
        for chunk in chunks:
            await self.ctx.bus.publish(
                subjects.trial_log(experiment, trial, chunk.source), chunk.data,
                msg_id=f"{trial}:{attempt}:{pos.chunk}",
                headers={H_ATTEMPT: str(attempt), H_CHUNK: str(pos.chunk), **chunk.headers},
            )
            pos.chunk += 1
            if H_OFFSET in chunk.headers:
                pos.offsets[chunk.source] = int(chunk.headers[H_OFFSET])

    async def _publish_end(self, experiment: str, trial: str, td: TrialDir, *, attempt: int, chunk: int,
                           exit_code: int | None) -> None:
        headers = {H_ATTEMPT: str(attempt), H_CHUNK: str(chunk), H_EOF: "1", H_OFFSET: "0"}
        if exit_code is not None:
            headers[H_EXIT] = str(exit_code)
        stopped = td.stopped()
        if stopped is not None:
            headers[H_STOP], headers[H_STOP_MESSAGE] = stopped[0], stopped[1][:500]
        await self.ctx.bus.publish(subjects.trial_log(experiment, trial), b"", headers=headers,
                                   msg_id=f"{trial}:{attempt}:{chunk}:eof")
        td.path.mkdir(parents=True, exist_ok=True)
        td.mark_done()
        if stopped is not None and stopped[0] == "Deleted":
            remove_trial_dir(td)

    async def _fail(self, experiment: str, trial: str, td: TrialDir, message: str) -> None:
        log.warning("trial_launch_failed", experiment=experiment, trial=trial, error=message)
        await self.ctx.store.append_fact(
            experiment, subjects.trial_event(experiment, trial, "trial.failed"),
            ev.TrialFailed(trial=trial, reason="LaunchFailed", message=message),
            msg_id=f"{trial}:launch-failed",
        )
        td.mark_done()

    # -- stop ----------------------------------------------------------------------------------

    async def stop(self, experiment: str, cmd: StopTrial) -> None:
        """Stop a trial: record why, then TERM its process group, and KILL it after a grace period."""
        td = trial_dir(self.root, experiment, cmd.trial)
        if td.done_file.exists():
            if cmd.reason == "Deleted":
                remove_trial_dir(td)
            return
        lock = self._start_locks.setdefault(cmd.trial, asyncio.Lock())
        async with lock:
            td.mark_stopped(cmd.reason, cmd.message)
            recorded = td.read_pid()
            if recorded is None:
                await self._publish_end(experiment, cmd.trial, td, attempt=1, chunk=0, exit_code=None)
                return
        pid, ticks, _attempt = recorded
        if not alive(pid, ticks):
            return
        log.info("trial_stopping", experiment=experiment, trial=cmd.trial, reason=cmd.reason, pid=pid)
        kill_group(pid, 15)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE_SECONDS
        while alive(pid, ticks) and loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)
        if alive(pid, ticks):
            kill_group(pid, 9)


def launcher_for(ctx: Context) -> Any:
    """The launcher actor: each experiment's commands go to the backend its ``natib.io/launcher`` annotation
    names (``local`` or ``kubernetes``), else to the one NATIB_LAUNCHER names."""
    from natib.actors.launcher.kubernetes import LauncherRouter  # imports this module

    return LauncherRouter(ctx)


__all__ = ["LocalLauncher", "launcher_for"]
