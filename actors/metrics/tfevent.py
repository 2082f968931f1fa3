"""Reads scalar summaries from TensorFlow event files, for Katib's TensorFlowEvent collector kind.

An event file is a sequence of TFRecords, each holding one serialized `Event` protobuf. This module
decodes both layers by hand, so a collector needs neither TensorFlow nor a protobuf library:

- `EventFileReader` follows one file as the trial appends to it and returns only the new samples.
- `EventDirectoryWatcher` follows every event file under a directory and keeps the configured metrics,
  with Katib's rule for metric names that name a directory (see its docstring).

Samples are `TFSample`s: a `Sample` that also carries the summary's global step.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from natib.actors.metrics.parsers import Sample

__all__ = [
    "EventDirectoryWatcher",
    "EventFileReader",
    "TFSample",
    "crc32c",
    "masked_crc32c",
]


@dataclass(frozen=True)
class TFSample(Sample):
    """A `Sample` read from an event file, with the global step the summary was written at.

    `name` is the summary tag for `EventFileReader` and the configured metric name for
    `EventDirectoryWatcher`; `value` is the scalar as `repr(float)` text (`NaN`, `+Inf`, `-Inf` when
    not finite); `timestamp` is the event's wall time in UTC.
    """

    step: int


# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, as TFRecord framing requires.
def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_crc_table()
# TensorFlow's kMaskDelta; tensorboardX and TensorFlow both write records with it.
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Return the CRC-32C of `data`, continuing from `crc` when the data comes in parts."""
    table = _CRC_TABLE
    crc ^= _U32
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """Return the masked CRC-32C that TFRecord stores, so data holding its own CRC does not look valid."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_HEADER_SIZE = _HEADER.size
_FOOTER_SIZE = _FOOTER.size


class _Malformed(ValueError):
    """A record's payload is not a well-formed protobuf message of the expected shape."""


# Protobuf wire format.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        # Ten bytes carry 64 bits; a longer varint cannot come from a conforming encoder.
        if shift >= 70:
            raise _Malformed("varint longer than ten bytes")


def _signed64(value: int) -> int:
    # int32 and int64 fields are sent as the 64-bit two's complement, so negatives arrive huge.
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field; varints as int, everything else as bytes."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        value: int | bytes
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _I64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _I32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            # Groups (wire types 3 and 4) are not used by any TensorFlow message.
            raise _Malformed(f"unsupported wire type {wire}")
        if pos > end:
            raise _Malformed("field runs past the end of its message")
        yield number, wire, value


def _as_bytes(value: int | bytes) -> bytes:
    if isinstance(value, int):
        raise _Malformed("expected a length-delimited field, got a varint")
    return value


def _as_int(value: int | bytes) -> int:
    if not isinstance(value, int):
        raise _Malformed("expected a varint field")
    return value


# TensorProto element types that a scalar can have: dtype -> (struct format, field of the typed values).
_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_UINT8, _DT_INT16, _DT_INT8 = 1, 2, 3, 4, 5, 6
_DT_INT64, _DT_BFLOAT16, _DT_UINT16, _DT_HALF = 9, 14, 17, 19
_FLOAT_VAL, _DOUBLE_VAL, _INT_VAL, _INT64_VAL, _HALF_VAL = 5, 6, 7, 10, 13
_SCALAR_TYPES: dict[int, tuple[str, int]] = {
    _DT_FLOAT: ("<f", _FLOAT_VAL),
    _DT_DOUBLE: ("<d", _DOUBLE_VAL),
    _DT_INT32: ("<i", _INT_VAL),
    _DT_UINT8: ("<B", _INT_VAL),
    _DT_INT16: ("<h", _INT_VAL),
    _DT_INT8: ("<b", _INT_VAL),
    _DT_INT64: ("<q", _INT64_VAL),
    _DT_UINT16: ("<H", _INT_VAL),
    _DT_HALF: ("<e", _HALF_VAL),
    _DT_BFLOAT16: ("<H", _HALF_VAL),
}


def _non_finite_text(number: float) -> str | None:
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return None


def _float32_text(number: float) -> str:
    """Format a float32 with the fewest digits that read back as the same float32, as numpy prints it.

    `repr` of the widened double would turn a logged 0.9 into 0.8999999761581421.
    """
    special = _non_finite_text(number)
    if special is not None:
        return special
    for digits in range(1, 10):
        text = f"{number:.{digits}g}"
        try:
            if struct.unpack("<f", struct.pack("<f", float(text)))[0] == number:
                return repr(float(text))
        except OverflowError:
            continue
    return repr(number)


def _float64_text(number: float) -> str:
    special = _non_finite_text(number)
    return special if special is not None else repr(number)


def _half_value(dtype: int, bits: int) -> float:
    bits &= 0xFFFF
    if dtype == _DT_BFLOAT16:
        value: float = struct.unpack("<f", struct.pack("<I", bits << 16))[0]
        return value
    value = struct.unpack("<e", struct.pack("<H", bits))[0]
    return value


def _element_count(shape: bytes) -> int | None:
    """Return the number of elements a TensorShapeProto describes, or None when the rank is unknown."""
    count = 1
    for number, _wire, value in _fields(shape):
        if number == 2:  # dim
            size = 0
            for dim_number, _dim_wire, dim_value in _fields(_as_bytes(value)):
                if dim_number == 1:
                    size = _signed64(_as_int(dim_value))
            if size < 0:
                return None
            count *= size
        elif number == 3 and value:  # unknown_rank
            return None
    return count


def _typed_values(dtype: int, field: int, wire: int, value: int | bytes) -> list[float]:
    """Decode one occurrence of a repeated typed-value field, packed or not."""
    if field in (_INT_VAL, _INT64_VAL, _HALF_VAL):
        if wire == _VARINT:
            raw = [_as_int(value)]
        else:
            data, pos, raw = _as_bytes(value), 0, []
            while pos < len(data):
                item, pos = _read_varint(data, pos)
                raw.append(item)
        if field == _HALF_VAL:
            return [_half_value(dtype, item) for item in raw]
        return [float(_signed64(item)) for item in raw]
    size = 4 if field == _FLOAT_VAL else 8
    data = _as_bytes(value)
    if len(data) % size:
        raise _Malformed("packed floats of a partial width")
    fmt = "<f" if field == _FLOAT_VAL else "<d"
    return [item for (item,) in struct.iter_unpack(fmt, data)]


def _tensor_scalar(tensor: bytes) -> str | None:
    """Return the text of a one-element numeric TensorProto, or None for anything else."""
    dtype = 0
    shape = b""
    content = b""
    wires: dict[int, list[tuple[int, int | bytes]]] = {}
    for number, wire, value in _fields(tensor):
        if number == 1:
            dtype = _as_int(value)
        elif number == 2:
            shape = _as_bytes(value)
        elif number == 4:
            content = _as_bytes(value)
        elif number in (_FLOAT_VAL, _DOUBLE_VAL, _INT_VAL, _INT64_VAL, _HALF_VAL):
            wires.setdefault(number, []).append((wire, value))
    kind = _SCALAR_TYPES.get(dtype)
    if kind is None or _element_count(shape) != 1:
        return None
    fmt, field = kind
    if content:
        if len(content) != struct.calcsize(fmt):
            return None
        if dtype in (_DT_HALF, _DT_BFLOAT16):
            scalar = _half_value(dtype, struct.unpack("<H", content)[0])
        else:
            scalar = float(struct.unpack(fmt, content)[0])
    else:
        found = [item for wire, value in wires.get(field, []) for item in _typed_values(dtype, field, wire, value)]
        # As TensorFlow does: no values at all means a zero-filled tensor.
        scalar = found[0] if found else 0.0
    if dtype == _DT_DOUBLE:
        return _float64_text(scalar)
    if dtype in (_DT_FLOAT, _DT_HALF, _DT_BFLOAT16):
        return _float32_text(scalar)
    return repr(scalar)


def _summary_scalars(summary: bytes) -> Iterator[tuple[str, str]]:
    """Yield (tag, value text) for each scalar in a Summary message."""
    for number, _wire, value in _fields(summary):
        if number != 1:
            continue
        tag = ""
        text: str | None = None
        for v_number, v_wire, v_value in _fields(_as_bytes(value)):
            if v_number == 1:
                tag = _as_bytes(v_value).decode("utf-8", errors="replace")
            elif v_number == 2 and v_wire == _I32:
                text = _float32_text(struct.unpack("<f", _as_bytes(v_value))[0])
            elif v_number == 8:
                text = _tensor_scalar(_as_bytes(v_value))
        if tag and text is not None:
            yield tag, text


def _event_samples(record: bytes) -> list[TFSample]:
    """Return the scalar samples of one serialized Event."""
    wall_time: float | None = None
    step = 0
    summaries: list[bytes] = []
    for number, wire, value in _fields(record):
        if number == 1 and wire == _I64:
            wall_time = struct.unpack("<d", _as_bytes(value))[0]
        elif number == 2:
            step = _signed64(_as_int(value))
        elif number == 5:
            summaries.append(_as_bytes(value))
    if not summaries:
        return []
    timestamp = _wall_time(wall_time)
    return [TFSample(tag, text, timestamp, step) for summary in summaries for tag, text in _summary_scalars(summary)]


def _wall_time(seconds: float | None) -> datetime | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


class EventFileReader:
    """Follows one event file and returns the scalar summaries appended since the previous read.

    A record still being written (the file ends inside it) is left for the next call. A record whose
    data CRC fails is skipped and counted in `corrupt_records`; the data CRC is checked only for records
    that hold a scalar or fail to decode, since the others (images, histograms, graphs) are skipped
    anyway and checksumming them would dominate the cost. When the CRC of a length fails the reader
    cannot trust where the next record starts, so it scans forward to the next valid header, counting
    one corrupt record per damaged stretch. A record with valid CRCs that is not an `Event` is counted in
    `malformed_records`. If the file shrinks it was replaced, and reading starts again from the beginning.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.corrupt_records = 0
        self.malformed_records = 0
        self.records = 0
        self._offset = 0
        self._size = 0
        self._resyncing = False

    @property
    def offset(self) -> int:
        """Bytes of the file consumed so far: everything before the first incomplete record."""
        return self._offset

    @property
    def pending_bytes(self) -> int:
        """Bytes seen at the last read that do not yet form a whole record; nonzero at the end means truncation."""
        return max(0, self._size - self._offset)

    def read_new(self) -> list[TFSample]:
        """Return the samples of every record completed since the last call, in file order.

        Each sample's `name` is the summary tag. Raises `OSError` (e.g. FileNotFoundError) when the file
        cannot be opened.
        """
        samples: list[TFSample] = []
        with self.path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < self._offset:
                self._offset = 0
                self._resyncing = False
            self._size = size
            handle.seek(self._offset)
            while True:
                if self._resyncing and not self._resync(handle, size):
                    break
                header = handle.read(_HEADER_SIZE)
                if len(header) < _HEADER_SIZE:
                    break
                length, length_crc = _HEADER.unpack(header)
                if masked_crc32c(header[:8]) != length_crc:
                    self.corrupt_records += 1
                    self._offset += 1
                    self._resyncing = True
                    handle.seek(self._offset)
                    continue
                # Compare with the size before reading, so a bogus length never triggers a huge read.
                if length > size - self._offset - _HEADER_SIZE - _FOOTER_SIZE:
                    break
                body = handle.read(length + _FOOTER_SIZE)
                if len(body) < length + _FOOTER_SIZE:
                    break
                data = body[:length]
                (data_crc,) = _FOOTER.unpack(body[length:])
                self._offset += _HEADER_SIZE + length + _FOOTER_SIZE
                found: list[TFSample] | None
                try:
                    found = _event_samples(data)
                except (_Malformed, struct.error):
                    found = None
                # CRC-32C in pure Python runs at a few MB/s, and image, histogram and graph records are
                # discarded unread, so only records that give samples or fail to decode are checksummed.
                if (found is None or found) and masked_crc32c(data) != data_crc:
                    self.corrupt_records += 1
                    continue
                self.records += 1
                if found is None:
                    self.malformed_records += 1
                else:
                    samples.extend(found)
        return samples

    def _resync(self, handle: BinaryIO, size: int) -> bool:
        """Move the offset to the next position holding a header with a valid CRC; False if none yet."""
        handle.seek(self._offset)
        rest = handle.read(size - self._offset)
        for start in range(0, len(rest) - _HEADER_SIZE + 1):
            (length_crc,) = _FOOTER.unpack_from(rest, start + 8)
            if masked_crc32c(rest[start : start + 8]) == length_crc:
                self._offset += start
                self._resyncing = False
                handle.seek(self._offset)
                return True
        # The last bytes may be the start of a header still being written.
        self._offset += max(0, len(rest) - _HEADER_SIZE + 1)
        return False


@dataclass(frozen=True)
class _Metric:
    name: str
    tag: str
    directory: tuple[str, ...]


class EventDirectoryWatcher:
    """Follows every event file under `root` and returns new samples of the configured metrics.

    Event files are the files whose name contains `tfevents`, found recursively (symlinks to directories
    are not followed). A metric name without `/` matches a summary tag equal to it in any file. A name
    `dir/name` (or `a/b/name`) matches tag `name` in files whose directory path ends with the components
    `dir` (or `a/b`), so `train/accuracy` and `test/accuracy` tell apart the two writers of a
    Keras-style `logs/train` and `logs/test` layout. As in Katib the file's whole directory path counts,
    `root` included, so a watcher on `logs/train` also feeds `train/accuracy`. Path components
    compare whole, so `train` does not match `pretrain`. As an addition to Katib's rule, a name with `/`
    also matches a tag equal to the whole name in any file, since PyTorch and tensorboardX writers put
    the scope in the tag.

    Samples carry the configured metric name, not the tag. They come file by file in path order, and in
    record order within a file.
    """

    def __init__(self, root: str | os.PathLike[str], metric_names: Sequence[str]) -> None:
        self.root = Path(root)
        self.metric_names = tuple(metric_names)
        self._metrics = tuple(self._parse_name(name) for name in self.metric_names)
        self._readers: dict[Path, EventFileReader] = {}
        self._wanted: dict[Path, dict[str, tuple[str, ...]]] = {}

    @staticmethod
    def _parse_name(name: str) -> _Metric:
        parts = tuple(part for part in name.split("/") if part)
        if len(parts) < 2:
            return _Metric(name, name, ())
        return _Metric(name, parts[-1], parts[:-1])

    @property
    def files(self) -> list[Path]:
        """The event files found so far."""
        return sorted(self._readers)

    @property
    def corrupt_records(self) -> int:
        """Records skipped for a failed CRC, over all files."""
        return sum(reader.corrupt_records for reader in self._readers.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes of incomplete records at the end of the files, over all files."""
        return sum(reader.pending_bytes for reader in self._readers.values())

    def poll(self) -> list[TFSample]:
        """Find new event files, read what every file gained, and return the samples of configured metrics."""
        for path in self._scan():
            if path not in self._readers:
                self._readers[path] = EventFileReader(path)
                self._wanted[path] = self._tags_for(path)
        samples: list[TFSample] = []
        for path in sorted(self._readers):
            wanted = self._wanted[path]
            try:
                found = self._readers[path].read_new()
            except FileNotFoundError:
                # The trial removed the file; a file of the same name later on is a new file.
                del self._readers[path], self._wanted[path]
                continue
            for sample in found:
                for name in wanted.get(sample.name, ()):
                    samples.append(TFSample(name, sample.value, sample.timestamp, sample.step))
        return samples

    def _scan(self) -> list[Path]:
        if self.root.is_file():
            return [self.root] if "tfevents" in self.root.name else []
        found: list[Path] = []
        # Unreadable directories are skipped (os.walk's default) so one bad folder does not stop collection.
        for directory, _subdirs, names in os.walk(self.root):
            for name in names:
                if "tfevents" in name:
                    path = Path(directory, name)
                    if path.is_file():
                        found.append(path)
        return found

    def _tags_for(self, path: Path) -> dict[str, tuple[str, ...]]:
        """Map each tag that counts in the file at `path` to the metric names it feeds."""
        # The whole path counts, not just the part below root, so `train/accuracy` also matches when
        # the collector is pointed at `.../train` itself, as in Katib.
        directory = path.parent.absolute().parts
        wanted: dict[str, list[str]] = {}
        for metric in self._metrics:
            tags = []
            if not metric.directory:
                tags.append(metric.tag)
            else:
                depth = len(metric.directory)
                if len(directory) >= depth and directory[-depth:] == metric.directory:
                    tags.append(metric.tag)
                tags.append(metric.name)
            for tag in dict.fromkeys(tags):
                wanted.setdefault(tag, []).append(metric.name)
        return {tag: tuple(names) for tag, names in wanted.items()}
