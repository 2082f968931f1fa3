"""``natib sidecar``: ships a trial pod's metrics file or TensorFlow event files to NATS.

The Kubernetes launcher adds this as a (native) sidecar container of the trial's primary pod, sharing an
emptyDir mounted at the metrics directory. It follows the File collector's file (or every file of a
Directory) or decodes new scalars of every event file under a TensorFlowEvent directory, with the same
sources the local launcher uses, and publishes them to ``natib.log.<experiment>.<trial>.file|tfevent``; the
collector parses them exactly as in local mode. On SIGTERM (the trial's containers have ended) it ships what
is left and publishes a last, empty message with header ``Natib-Sidecar-End``, after which the launcher
publishes the trial's end marker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

from natib.actors.launcher.actor import H_ATTEMPT, H_OFFSET
from natib.actors.launcher.kubernetes import H_SIDECAR_END
from natib.actors.launcher.sources import FileSource, FileTail, TFEventSource, poll_all
from natib.messages import subjects
from natib.runtime.bus import Bus
from natib.runtime.logging import get_logger

log = get_logger("natib.sidecar")

COLLECTORS = {"File": "file", "TensorFlowEvent": "tfevent"}
PATH_KINDS = ("File", "Directory")


class SidecarError(ValueError):
    """An argument the sidecar cannot use, naming the option and the reason."""


class Sidecar:
    """Follows one trial's metrics source and publishes what appears."""

    def __init__(self, bus: Bus, *, experiment: str, trial: str, collector: str, path: str,
                 path_kind: str = "File", metric_names: list[str] | None = None, attempt: int = 1) -> None:
        try:
            subjects.check_token(experiment, "--experiment")
            subjects.check_token(trial, "--trial")
        except ValueError as exc:
            raise SidecarError(str(exc)) from exc
        if collector not in COLLECTORS:
            raise SidecarError(f"--collector: expected one of {', '.join(COLLECTORS)}, got {collector!r}")
        if path_kind not in PATH_KINDS:
            raise SidecarError(f"--path-kind: expected one of {', '.join(PATH_KINDS)}, got {path_kind!r}")
        if not path or not path.strip():
            raise SidecarError("--path: required")
        if collector == "TensorFlowEvent" and not metric_names:
            raise SidecarError("--metric: TensorFlowEvent needs the metric names to look for")
        self.bus = bus
        self.experiment, self.trial, self.attempt = experiment, trial, attempt
        self.collector, self.source_name = collector, COLLECTORS[collector]
        self.path, self.path_kind = path, path_kind if collector == "File" else "Directory"
        self.subject = subjects.trial_log(experiment, trial, self.source_name)
        self.run_id = uuid.uuid4().hex[:8]
        self.sent = 0
        self.source: Any
        if collector == "File":
            mounted = path.rstrip("/") if self.path_kind == "Directory" else os.path.dirname(path.rstrip("/"))
            self.source = FileSource(Path(mounted or "/"), self.path_kind, path)
        else:
            self.source = TFEventSource(Path(path), list(metric_names or []))

    async def resume(self) -> None:
        """Continue a single metrics file where an earlier run of this sidecar stopped."""
        if not isinstance(self.source, FileSource) or self.source.kind != "File":
            return
        last = await self.bus.get_last(subjects.LOGS_STREAM, self.subject)
        if last is None or last.headers.get(H_SIDECAR_END) or last.headers.get(H_ATTEMPT) != str(self.attempt):
            return
        offset = last.headers.get(H_OFFSET)
        if offset and offset.isdigit():
            self.source.tails[self.source.root] = FileTail(self.source.root, int(offset))

    async def ship(self) -> int:
        """Publish whatever the source has produced since the last call; the number of messages."""
        count = 0
        for chunk in await poll_all([self.source]):
            headers = {H_ATTEMPT: str(self.attempt), **chunk.headers}
            if isinstance(self.source, FileSource):
                rel = chunk.headers.get("Natib-Path", "")
                tail = next((t for p, t in self.source.tails.items() if str(p).endswith(rel)), None)
                offset = tail.offset if tail is not None else 0
                headers[H_OFFSET] = str(offset)
                msg_id = f"{self.trial}:{self.attempt}:file:{rel}:{offset}"
            else:
                msg_id = f"{self.trial}:{self.attempt}:{self.source_name}:{self.run_id}:{self.sent}"
            await self.bus.publish(self.subject, chunk.data, msg_id=msg_id, headers=headers)
            self.sent += 1
            count += 1
        return count

    async def finish(self) -> None:
        """Ship the rest, then the end marker."""
        await self.ship()
        await self.bus.publish(self.subject, b"", headers={H_ATTEMPT: str(self.attempt), H_SIDECAR_END: "1"},
                               msg_id=f"{self.trial}:{self.attempt}:{self.source_name}:end:{self.run_id}")

    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        """Ship until ``stop`` is set, then finish."""
        await self.resume()
        log.info("sidecar_started", experiment=self.experiment, trial=self.trial, path=self.path,
                 collector=self.collector)
        while not stop.is_set():
            await self.ship()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        await self.finish()
        log.info("sidecar_finished", trial=self.trial, messages=self.sent)


def register_sidecar_command(sub: Any) -> None:
    """Add ``natib sidecar`` to the CLI's subcommands."""
    s = sub.add_parser("sidecar", help="ship a trial pod's metrics file or event files to NATS (Kubernetes)")
    s.add_argument("--experiment", default=os.environ.get("NATIB_EXPERIMENT"),
                   help="the experiment (default: env NATIB_EXPERIMENT)")
    s.add_argument("--trial", default=os.environ.get("NATIB_TRIAL_NAME"),
                   help="the trial (default: env NATIB_TRIAL_NAME)")
    s.add_argument("--collector", default="File", help="File or TensorFlowEvent (default File)")
    s.add_argument("--path", required=True, help="the metrics file, or the directory of files / event files")
    s.add_argument("--path-kind", default="File", help="File or Directory (File collector; default File)")
    s.add_argument("--metric", action="append", default=[], dest="metrics",
                   help="a metric name (repeat); TensorFlowEvent needs them")
    s.add_argument("--interval", type=float, default=0.5, help="seconds between looks (default 0.5)")
    s.set_defaults(func=cmd_sidecar)


async def cmd_sidecar(args: argparse.Namespace, settings: Any) -> int:
    """Run the sidecar until SIGTERM or SIGINT."""
    from natib.cli.main import CliError
    from natib.runtime.supervisor import install_signal_handlers

    if not settings.nats_url:
        raise CliError("natib sidecar: NATS_URL must be set (the NATS server the trial's metrics go to)")
    if not args.experiment or not args.trial:
        raise CliError("natib sidecar: --experiment and --trial (or NATIB_EXPERIMENT, NATIB_TRIAL_NAME) are required")
    if not args.interval > 0:
        raise CliError(f"--interval: expected a positive number of seconds, got {args.interval}")
    bus = await Bus.connect(settings.nats_url, name="natib-sidecar")
    try:
        try:
            sidecar = Sidecar(bus, experiment=args.experiment, trial=args.trial, collector=args.collector,
                              path=args.path, path_kind=args.path_kind, metric_names=list(args.metrics))
        except SidecarError as exc:
            raise CliError(str(exc)) from exc
        stop = asyncio.Event()
        install_signal_handlers(stop)
        print(f"natib sidecar: shipping {args.path} for {args.experiment}/{args.trial}", flush=True)
        await sidecar.run(stop, args.interval)
    finally:
        await bus.close()
    return 0
