"""Metric sources the launcher reads next to a trial, as Katib's sidecar does, and ships over NATS.

Text sources (a metrics file, a custom collector's output) travel as raw bytes; binary or structured
sources (TensorFlow event files, Prometheus scrapes) are decoded here, where the files and ports are,
and travel as JSON lines of samples (``{"name", "value", "timestamp", "step"}``). The collector actor
parses and judges all of them the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from natib.actors.metrics.parsers import Sample

#: Katib's default paths, used when the experiment leaves fileSystemPath out.
DEFAULT_FILE_PATH = "/var/log/katib/metrics.log"
DEFAULT_TFEVENT_DIR = "/var/log/katib/tfevent/"
PROMETHEUS_INTERVAL = 1.0
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Chunk:
    """Bytes for one source's subject, with the headers that say where they came from."""

    source: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


def collector_kind(spec: Mapping[str, Any] | None) -> str:
    """The collector kind of a metricsCollectorSpec (StdOut when absent)."""
    return str(((spec or {}).get("collector") or {}).get("kind") or "StdOut")


def mount_path(spec: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(path the trial writes, its kind File|Directory) for collectors that read files, else None."""
    kind = collector_kind(spec)
    fs = ((spec or {}).get("source") or {}).get("fileSystemPath") or {}
    if kind == "File":
        return str(fs.get("path") or DEFAULT_FILE_PATH), str(fs.get("kind") or "File")
    if kind == "TensorFlowEvent":
        return str(fs.get("path") or DEFAULT_TFEVENT_DIR), "Directory"
    if kind == "Custom" and fs.get("path"):
        return str(fs["path"]), str(fs.get("kind") or "File")
    return None


def local_mount(trial_dir: Path, path: str, kind: str) -> tuple[str, Path]:
    """The directory Katib would mount (an emptyDir) and where it lives for this trial on this machine.

    Katib mounts an empty volume at the metrics directory of every trial pod; locally each trial gets
    its own directory instead, so parallel trials never share a metrics file.
    """
    mounted = path.rstrip("/") if kind == "Directory" else os.path.dirname(path.rstrip("/"))
    mounted = mounted or "/"
    return mounted, trial_dir / "mnt" / mounted.lstrip("/")


def rewrite(values: Sequence[str], mounted: str, local: Path) -> list[str]:
    """Point every mention of the mounted directory at the trial's own copy of it."""
    return [v.replace(mounted, str(local)) if mounted != "/" else v for v in values]


def sample_line(sample: Sample, step: int | None = None) -> bytes:
    """One sample as a JSON line."""
    return json.dumps({
        "name": sample.name, "value": sample.value, "step": step,
        "timestamp": sample.timestamp.isoformat() if sample.timestamp else None,
    }).encode() + b"\n"


class FileTail:
    """Follows one growing file from an offset, returning whatever was appended."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def read(self) -> bytes:
        """The bytes appended since the last read (empty if the file does not exist yet)."""
        try:
            with self.path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start over
                    self.offset = 0
                fh.seek(self.offset)
                data = fh.read(CHUNK_BYTES * 16)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return b""
        self.offset += len(data)
        return data


class FileSource:
    """The File collector: follows the metrics file (or every file of a Directory) while the trial runs."""

    name = "file"

    def __init__(self, local: Path, kind: str, original: str) -> None:
        self.kind = kind
        self.root = local if kind == "Directory" else local / os.path.basename(original.rstrip("/"))
        self.tails: dict[Path, FileTail] = {}

    def poll(self) -> list[Chunk]:
        """New bytes of each metrics file."""
        files = sorted(p for p in self.root.rglob("*") if p.is_file()) if self.kind == "Directory" else [self.root]
        out = []
        for path in files:
            tail = self.tails.setdefault(path, FileTail(path))
            data = tail.read()
            if data:
                out.append(Chunk(self.name, data, {"Natib-Path": str(path.relative_to(self.root.parent))}))
        return out


class TFEventSource:
    """The TensorFlowEvent collector: decodes new records of every event file under the directory."""

    name = "tfevent"

    def __init__(self, local: Path, metric_names: Sequence[str]) -> None:
        from natib.actors.metrics.tfevent import EventDirectoryWatcher

        self.watcher = EventDirectoryWatcher(local, list(metric_names))

    def poll(self) -> list[Chunk]:
        """New scalar samples, as JSON lines."""
        samples = self.watcher.poll()
        if not samples:
            return []
        return [Chunk(self.name, b"".join(sample_line(s, getattr(s, "step", None)) for s in samples))]


class PrometheusSource:
    """The PrometheusMetric collector: scrapes the trial's endpoint while it runs; a changed value is a report."""

    name = "prom"

    def __init__(self, spec: Mapping[str, Any], metric_names: Sequence[str]) -> None:
        http = ((spec.get("source") or {}).get("httpGet") or {})
        port = http.get("port") or 8080
        path = http.get("path") or "/metrics"
        host = http.get("host") or "127.0.0.1"
        self.url = f"{http.get('scheme', 'HTTP').lower()}://{host}:{port}{path}"
        self.metric_names = list(metric_names)
        self.last: dict[str, str] = {}
        self.next_scrape = 0.0
        self.errors = 0

    def poll(self, *, force: bool = False) -> list[Chunk]:
        """Scrape if the interval has passed; samples whose value changed since the last scrape."""
        from natib.actors.metrics.prometheus import parse_exposition, scrape

        now = time.monotonic()
        if not force and now < self.next_scrape:
            return []
        self.next_scrape = now + PROMETHEUS_INTERVAL
        try:
            text = scrape(self.url, timeout=2.0)
        except Exception:
            self.errors += 1
            return []
        samples, _error = parse_exposition(text, self.metric_names, datetime.now(UTC))
        fresh = [s for s in samples if self.last.get(s.name) != s.value]
        for s in fresh:
            self.last[s.name] = s.value
        return [Chunk(self.name, b"".join(sample_line(s) for s in fresh))] if fresh else []


class CustomSource:
    """The Custom collector: the user's collector command runs beside the trial; its output is parsed as text."""

    name = "custom"

    def __init__(self, log: Path) -> None:
        self.tail = FileTail(log)

    def poll(self) -> list[Chunk]:
        """New output of the custom collector process."""
        data = self.tail.read()
        return [Chunk(self.name, data)] if data else []


async def poll_all(sources: Sequence[Any]) -> list[Chunk]:
    """Poll every source off the event loop (file reads and scrapes block)."""
    if not sources:
        return []
    chunks: list[Chunk] = []
    for source in sources:
        chunks.extend(await asyncio.to_thread(source.poll))
    return chunks
