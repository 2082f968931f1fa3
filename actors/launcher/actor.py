"""The trial launcher actor: turns LaunchTrial/StopTrial commands into running (or stopped) trials.

A launch is held (un-acked, with heartbeats) for as long as its trial runs, so if this process dies
the command is redelivered and the next launcher re-attaches to the still-running process, or reports
its exit, or runs it again; the trial's name keeps it from ever running twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

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
from natib.actors.launcher.template import TemplateError, find_primary_container, local_command
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.codec import UndecodableMessage
from natib.messages.commands import LaunchTrial, StopTrial
from natib.runtime.bus import RawMessage
from natib.runtime.errors import PermanentError
from natib.runtime.logging import get_logger

log = get_logger("natib.launcher")

KIND = "launcher"
CHUNK_BYTES = 64 * 1024
POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 5.0

H_ATTEMPT = "Natib-Attempt"
H_CHUNK = "Natib-Chunk"
H_OFFSET = "Natib-Offset"
H_EOF = "Natib-Eof"
H_EXIT = "Natib-Exit-Code"
H_STOP = "Natib-Stop-Reason"
H_STOP_MESSAGE = "Natib-Stop-Message"


class LocalLauncher:
    """Runs trials as local process groups, streaming their output to NATIB_LOGS."""

    kind = KIND

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.root = ctx.settings.trials_dir
        self._start_locks: dict[str, asyncio.Lock] = {}
        self._running: dict[str, int] = {}

    async def run(self) -> None:
        """Consume launcher commands until stopped."""
        await self.ctx.bus.consume(
            subjects.COMMANDS_STREAM, KIND, subjects.commands_for(KIND), self.on_command, stop=self.ctx.stop,
            concurrency=512, ack_wait=self.ctx.settings.ack_wait, drain_timeout=self.ctx.settings.drain_timeout,
        )

    async def on_command(self, raw: RawMessage) -> None:
        """Dispatch one command."""
        try:
            env = codec.decode(raw.data)
        except UndecodableMessage as exc:
            raise PermanentError(str(exc)) from exc
        if env is None:
            return
        if isinstance(env.body, LaunchTrial):
            await self.launch(env.experiment, env.body)
        elif isinstance(env.body, StopTrial):
            await self.stop(env.experiment, env.body)

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
            if td.stopped() is not None and td.read_pid() is None:
                await self._publish_end(experiment, cmd.trial, td, attempt=1, chunk=0, exit_code=None)
                return
            recorded = td.read_pid()
            proc: asyncio.subprocess.Process | None = None
            finished = recorded is not None and (
                alive(recorded[0], recorded[1]) or td.exit_code() is not None or td.stopped() is not None
            )
            if recorded is not None and finished:
                pid, attempt = recorded[0], recorded[2]
                log.info("trial_reattached", experiment=experiment, trial=cmd.trial, pid=pid)
            else:
                attempt = (recorded[2] + 1) if recorded else 1
                started = await self._start(experiment, cmd, td, attempt)
                if started is None:
                    return
                proc, pid = started, started.pid
            self._running[cmd.trial] = pid
        try:
            await self._follow(experiment, cmd.trial, td, pid, attempt, proc)
        finally:
            self._running.pop(cmd.trial, None)
            self._start_locks.pop(cmd.trial, None)

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
        if self.ctx.settings.nats_url:
            extra["NATS_URL"] = self.ctx.settings.nats_url
        env = trial_env(dict(os.environ), local.env, extra)
        cwd = working_dir(local.working_dir, cmd.source_dir, td.path)
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", WRAPPER, "natib-trial", str(td.output), str(td.exit_code_file), *local.argv,
                cwd=str(cwd), env=env, start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            await self._fail(experiment, cmd.trial, td, f"cannot start trial: {exc}")
            return None
        ticks = process_start_ticks(proc.pid) or 0
        (td.pid_file.with_suffix(".tmp")).write_text(f"{proc.pid} {ticks} {attempt}")
        os.replace(td.pid_file.with_suffix(".tmp"), td.pid_file)
        await self.ctx.store.append_fact(
            experiment, subjects.trial_event(experiment, cmd.trial, "trial.started"),
            ev.TrialStarted(trial=cmd.trial, attempt=attempt, pid=proc.pid, host=socket.gethostname(),
                            workdir=str(cwd)),
            msg_id=f"{cmd.trial}:started:{attempt}",
        )
        log.info("trial_started", experiment=experiment, trial=cmd.trial, pid=proc.pid, attempt=attempt,
                 argv0=local.argv[0])
        return proc

    async def _follow(self, experiment: str, trial: str, td: TrialDir, pid: int, attempt: int,
                      proc: asyncio.subprocess.Process | None) -> None:
        chunk, offset = await self._published_position(experiment, trial, attempt)
        ticks = (td.read_pid() or (pid, 0, attempt))[1]
        while True:
            chunk, offset = await self._ship(experiment, trial, td, attempt, chunk, offset)
            if proc is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), POLL_SECONDS * 4)
                if proc.returncode is not None:
                    break
            else:
                if not alive(pid, ticks):
                    break
                await asyncio.sleep(POLL_SECONDS * 4)
        chunk, offset = await self._ship(experiment, trial, td, attempt, chunk, offset)
        exit_code = td.exit_code()
        if exit_code is None and proc is not None and proc.returncode is not None and td.stopped() is None:
            exit_code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        await self._publish_end(experiment, trial, td, attempt=attempt, chunk=chunk, exit_code=exit_code)
        log.info("trial_exited", experiment=experiment, trial=trial, exit_code=exit_code,
                 stopped=(td.stopped() or ("", ""))[0] or None)

    async def _published_position(self, experiment: str, trial: str, attempt: int) -> tuple[int, int]:
        last = await self.ctx.bus.get_last(subjects.LOGS_STREAM, subjects.trial_log(experiment, trial))
        if last is None or int(last.headers.get(H_ATTEMPT, "0")) != attempt:
            prior = int(last.headers.get(H_CHUNK, "-1")) + 1 if last is not None else 0
            return prior, 0
        return int(last.headers.get(H_CHUNK, "0")) + 1, int(last.headers.get(H_OFFSET, "0"))

    async def _ship(self, experiment: str, trial: str, td: TrialDir, attempt: int, chunk: int,
                    offset: int) -> tuple[int, int]:
        try:
            with td.output.open("rb") as fh:
                fh.seek(offset)
                while True:
                    data = fh.read(CHUNK_BYTES)
                    if not data:
                        break
                    offset += len(data)
                    await self.ctx.bus.publish(
                        subjects.trial_log(experiment, trial), data, msg_id=f"{trial}:{attempt}:{chunk}",
                        headers={H_ATTEMPT: str(attempt), H_CHUNK: str(chunk), H_OFFSET: str(offset)},
                    )
                    chunk += 1
        except FileNotFoundError:
            pass
        return chunk, offset

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


def launcher_for(ctx: Context) -> LocalLauncher:
    """The launcher backend chosen by NATIB_LAUNCHER."""
    if ctx.settings.launcher != "local":
        raise PermanentError(f"NATIB_LAUNCHER={ctx.settings.launcher!r}: only the local backend is built in")
    return LocalLauncher(ctx)


__all__ = ["LocalLauncher", "launcher_for"]
