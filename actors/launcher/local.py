"""The local trial backend: runs a trial's primary container command as a process group on this machine.

Each trial gets a directory under ``$NATIB_HOME/trials/<experiment>/<trial>``. The process runs
under a tiny ``sh`` wrapper that appends its output to ``output.log`` and writes the exit status to
``exit_code``, so a trial outlives a crash of natib and its result is still known afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# The wrapper records its own pid before anything runs (so a launcher that dies right after spawning
# still finds the trial), and keeps the trial's output and exit status on disk whatever happens to natib.
WRAPPER = (
    'out="$1"; ex="$2"; pf="$3"; shift 3; echo "$$ 0 ${NATIB_ATTEMPT:-1}" >"$pf.tmp" && mv "$pf.tmp" "$pf"; '
    '"$@" >>"$out" 2>&1; rc=$?; echo "$rc" >"$ex.tmp"; mv "$ex.tmp" "$ex"; exit "$rc"'
)


@dataclass(frozen=True)
class TrialDir:
    """The files of one trial on disk."""

    path: Path

    @property
    def output(self) -> Path:
        """Everything the trial printed, stdout and stderr together."""
        return self.path / "output.log"

    @property
    def exit_code_file(self) -> Path:
        """Written by the wrapper when the trial's command exits."""
        return self.path / "exit_code"

    @property
    def pid_file(self) -> Path:
        """``<pid> <start-ticks> <attempt>`` of the running process group."""
        return self.path / "pid"

    @property
    def stopped_file(self) -> Path:
        """The reason the trial was stopped (Killed, EarlyStopped, Deleted), when it was."""
        return self.path / "stopped"

    @property
    def done_file(self) -> Path:
        """Present once the trial's end was published; a repeated launch then does nothing."""
        return self.path / "done"

    def read_pid(self) -> tuple[int, int, int] | None:
        """(pid, start ticks, attempt) of the last process started, or None."""
        try:
            pid, ticks, attempt = (int(x) for x in self.pid_file.read_text().split())
        except (OSError, ValueError):
            return None
        if ticks == 0:  # written by the wrapper itself: read the start time from the process
            ticks = process_start_ticks(pid) or 0
        return pid, ticks, attempt

    def exit_code(self) -> int | None:
        """The command's exit status, once it is known."""
        try:
            return int(self.exit_code_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stopped(self) -> tuple[str, str] | None:
        """(reason, message) if the trial was stopped."""
        try:
            reason, _, message = self.stopped_file.read_text().partition("\n")
        except OSError:
            return None
        return reason.strip(), message.strip()

    def mark_stopped(self, reason: str, message: str) -> None:
        """Record a stop before killing, so the end of the trial is reported with this reason."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.stopped_file.exists():
            _write_atomic(self.stopped_file, f"{reason}\n{message}")

    def mark_done(self) -> None:
        """Record that the trial's end has been published."""
        _write_atomic(self.done_file, "done")


def trial_dir(root: Path, experiment: str, trial: str) -> TrialDir:
    """The directory of one trial."""
    return TrialDir(root / experiment / trial)


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a live trial from a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def alive(pid: int, ticks: int) -> bool:
    """True if the process ``pid`` is the one started at ``ticks`` and has not exited."""
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    now = process_start_ticks(pid)
    if now is None or now != ticks:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_group(pid: int, sig: int) -> None:
    """Signal a trial's whole process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def trial_env(base: dict[str, str], container_env: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """The environment of a trial: natib's own, this Python's bin directory first on PATH, the container's env.

    Putting natib's interpreter first means ``python`` in a trial command finds the packages natib
    was installed with.
    """
    env = dict(base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(container_env)
    env.update(extra)
    return env


def working_dir(requested: str | None, source_dir: str | None, fallback: Path) -> Path:
    """The container's workingDir when it exists here, else the experiment file's folder, else the trial dir."""
    for candidate in (requested, source_dir):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return fallback


def remove_trial_dir(td: TrialDir) -> None:
    """Delete a trial's files (when its experiment is deleted)."""
    shutil.rmtree(td.path, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

