"""Parsers that turn a trial's raw output into metric samples, following Katib's TEXT and JSON formats.

Both parsers accept output in arbitrary byte chunks through `feed`, so a collector can parse a stream
as it arrives instead of reading the whole log once the trial ends.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "DEFAULT_FILTER",
    "DEFAULT_MAX_LINE_BYTES",
    "LEGACY_FILTER",
    "JsonLinesParser",
    "Sample",
    "TextParser",
    "as_float",
    "parse_rfc3339",
]

DEFAULT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
"""Katib's current default metrics filter: `loss=0.3`, `accuracy=.98`, `Score=-7.53e-05`."""

LEGACY_FILTER = r"([\w|-]+)\s*=\s*((-?\d+)(\.\d+)?)"
"""The default filter of older Katib releases, which misses exponents and a leading `+`."""

DEFAULT_MAX_LINE_BYTES = 1 << 20
"""Longest line kept by `feed`; a trial that never prints a newline must not exhaust memory."""

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)
# The grammar Go's strconv.ParseFloat accepts for decimal input, minus nan/inf and underscores.
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[Ee][+-]?\d+)?", re.ASCII)


@dataclass(frozen=True)
class Sample:
    """One observed metric value; `value` stays a string because NAS metrics such as genotypes are not numbers."""

    name: str
    value: str
    timestamp: datetime | None


def as_float(value: str) -> float | None:
    """Return `value` as a finite float, or None when it is not a plain decimal number."""
    text = value.strip()
    if not _FLOAT.fullmatch(text):
        return None
    number = float(text)
    # An overflowing literal such as 1e999 is out of range, as it is for Katib's ParseFloat.
    return number if math.isfinite(number) else None


def parse_rfc3339(text: str) -> datetime | None:
    """Parse an RFC3339 timestamp (optional fractional seconds, `Z` or offset) into an aware datetime."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if zone == "Z":
        tz = UTC
    else:
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            return None
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    # Python keeps microseconds; nanosecond digits beyond that are truncated.
    micros = int((fraction or "").ljust(6, "0")[:6])
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tzinfo=tz
        )
    except ValueError:
        return None


class _LineStream:
    """Splits a byte stream into lines for a subclass's `parse_line`, whatever the chunk boundaries."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._pending = bytearray()
        self._max_line_bytes = max_line_bytes
        self._discarding = False
        self.truncated_lines = 0

    def parse_line(self, line: str) -> list[Sample]:
        """Return the samples found on one line of output."""
        raise NotImplementedError

    def feed(self, data: bytes) -> list[Sample]:
        """Consume a chunk of output and return the samples of every line it completes."""
        samples: list[Sample] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._append(data[start:])
                return samples
            self._append(data[start:end])
            samples.extend(self._emit())
            self._discarding = False
            start = end + 1

    def flush(self) -> list[Sample]:
        """Parse the final line when the output did not end with a newline."""
        if not self._pending:
            self._discarding = False
            return []
        samples = self._emit()
        self._discarding = False
        return samples

    def _append(self, part: bytes) -> None:
        if self._discarding:
            return
        room = self._max_line_bytes - len(self._pending)
        if len(part) > room:
            self._pending += part[:room]
            self._discarding = True
            self.truncated_lines += 1
        else:
            self._pending += part

    def _emit(self) -> list[Sample]:
        # Decoding whole lines keeps a multi-byte character split across chunks intact.
        line = self._pending.decode("utf-8", errors="replace")
        self._pending.clear()
        return self.parse_line(line)


def _compile_filter(pattern: str) -> re.Pattern[str]:
    try:
        # ASCII classes, as in Go's RE2, where \w, \d and \s never match beyond ASCII.
        compiled = re.compile(pattern, re.ASCII)
    except re.error as exc:
        raise ValueError(f"invalid filter: {pattern}: {exc}") from exc
    if compiled.groups < 2:
        raise ValueError("two top subexpressions are required")
    return compiled


class TextParser(_LineStream):
    """Katib's TEXT format: regex filters over lines that mention a metric, with an optional RFC3339 prefix."""

    def __init__(
        self,
        metric_names: Sequence[str],
        filters: Sequence[str] | None = None,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        super().__init__(max_line_bytes)
        self.metric_names = tuple(metric_names)
        self._wanted = frozenset(self.metric_names)
        self.filters = tuple(_compile_filter(f) for f in (filters or [DEFAULT_FILTER]))

    def parse_line(self, line: str) -> list[Sample]:
        """Return every configured metric the filters find on `line`, stamped with its leading timestamp."""
        line = line.rstrip("\r\n")
        if not any(name in line for name in self.metric_names):
            return []
        timestamp = parse_rfc3339(line.split(" ", 1)[0])
        samples: list[Sample] = []
        for pattern in self.filters:
            for match in pattern.finditer(line):
                name = (match.group(1) or "").strip()
                value = (match.group(2) or "").strip()
                if value and name in self._wanted:
                    samples.append(Sample(name, value, timestamp))
        return samples


def _keep_constant(token: str) -> str:
    # NaN and Infinity are not JSON; keep them as text so the value reads as unavailable, not absent.
    return token


def _json_timestamp(raw: object) -> datetime | None:
    if isinstance(raw, str):
        return parse_rfc3339(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    try:
        return datetime.fromtimestamp(raw, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


class JsonLinesParser(_LineStream):
    """Katib's JSON format: one object per line, metrics as keys, with an optional `timestamp` key.

    Numbers count as well as strings; a line that is not a JSON object is recorded in `errors` and skipped.
    """

    def __init__(self, metric_names: Sequence[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        super().__init__(max_line_bytes)
        self.metric_names = tuple(metric_names)
        self.errors: list[str] = []
        self._line_no = 0

    def parse_line(self, line: str) -> list[Sample]:
        """Return the configured metrics held by the JSON object on `line`."""
        self._line_no += 1
        text = line.strip()
        if not text:
            return []
        try:
            obj = json.loads(text, parse_constant=_keep_constant)
        except ValueError as exc:
            self.errors.append(f"line {self._line_no}: invalid JSON: {exc}")
            return []
        if not isinstance(obj, dict):
            self.errors.append(f"line {self._line_no}: expected a JSON object, got {type(obj).__name__}")
            return []
        timestamp = _json_timestamp(obj.get("timestamp"))
        samples: list[Sample] = []
        for name in self.metric_names:
            raw = obj.get(name)
            if isinstance(raw, bool):
                continue
            if isinstance(raw, str):
                if raw:
                    samples.append(Sample(name, raw, timestamp))
            elif isinstance(raw, int | float):
                samples.append(Sample(name, repr(raw), timestamp))
        return samples
