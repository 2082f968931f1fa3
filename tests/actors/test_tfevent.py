"""Tests for the TensorFlow event file reader, against files written by tensorboardX and by hand."""

from __future__ import annotations

import shutil
import struct
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from natib.actors.metrics.parsers import Sample, as_float
from natib.actors.metrics.tfevent import (
    EventDirectoryWatcher,
    EventFileReader,
    TFSample,
    crc32c,
    masked_crc32c,
)

tensorboardX = pytest.importorskip("tensorboardX")
from tensorboardX.proto.summary_pb2 import Summary  # noqa: E402
from tensorboardX.proto.tensor_pb2 import TensorProto  # noqa: E402
from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto  # noqa: E402
from tensorboardX.record_writer import masked_crc32c as tbx_masked_crc32c  # noqa: E402

WALL = 1_700_000_000.25


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `check` until it holds; tensorboardX writes from a background thread."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def event_file(directory: Path) -> Path:
    """Return the one event file tensorboardX wrote in `directory`."""
    (path,) = directory.glob("*tfevents*")
    return path


def triples(samples: list[TFSample]) -> list[tuple[str, str, int]]:
    """Return (name, value, step) of each sample, for compact assertions."""
    return [(s.name, s.value, s.step) for s in samples]


def write_scalars(directory: Path, scalars: list[tuple[str, float, int]]) -> Path:
    """Write `scalars` with tensorboardX's SummaryWriter, close it, and return the event file."""
    writer = tensorboardX.SummaryWriter(str(directory))
    for tag, value, step in scalars:
        writer.add_scalar(tag, value, step, walltime=WALL + step)
    writer.close()
    return event_file(directory)


# A protobuf encoder of our own, for events tensorboardX cannot produce.


def varint(value: int) -> bytes:
    """Encode an unsigned varint; negative numbers as their 64-bit two's complement."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, wire: int, payload: bytes | int) -> bytes:
    """Encode one field: an int payload is a varint, bytes are written as the wire type requires."""
    key = varint(number << 3 | wire)
    if wire == 0:
        assert isinstance(payload, int)
        return key + varint(payload)
    assert isinstance(payload, bytes)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def unknown_fields() -> bytes:
    """One field of every wire type, with numbers no TensorFlow message uses."""
    return (
        field(900, 0, 12345678901)
        + field(901, 1, b"\x01" * 8)
        + field(902, 2, b"nested bytes")
        + field(903, 5, b"\x02" * 4)
    )


def event(*, step: int = 0, wall: float | None = WALL, values: list[bytes] | None = None, extra: bytes = b"") -> bytes:
    """Encode an Event holding a Summary of the given encoded Values."""
    out = b""
    if wall is not None:
        out += field(1, 1, struct.pack("<d", wall))
    out += field(2, 0, step) + extra
    if values is not None:
        out += field(5, 2, b"".join(field(1, 2, v) for v in values))
    return out


def simple_value(tag: str, value: float, extra: bytes = b"") -> bytes:
    """Encode a Summary.Value with a simple_value."""
    return field(1, 2, tag.encode()) + extra + field(2, 5, struct.pack("<f", value))


def tensor_value(tag: str, tensor: bytes) -> bytes:
    """Encode a Summary.Value holding an encoded TensorProto."""
    return field(1, 2, tag.encode()) + field(8, 2, tensor)


def record(data: bytes) -> bytes:
    """Frame `data` as a TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def write_records(path: Path, events: list[bytes]) -> Path:
    """Write `events` as TFRecords to `path`, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(record(e) for e in events))
    return path


# CRC


def test_crc32c_known_vectors() -> None:
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    # RFC 3720 (iSCSI) B.4 test vectors.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


def test_crc32c_continues_across_parts() -> None:
    data = bytes(range(256)) * 3
    assert crc32c(data[100:], crc32c(data[:100])) == crc32c(data)


@pytest.mark.parametrize("data", [b"", b"a", b"\x00" * 8, bytes(range(256)), b"brain.Event:2" * 7])
def test_masked_crc_agrees_with_tensorboardx(data: bytes) -> None:
    assert masked_crc32c(data) == tbx_masked_crc32c(data)


def test_own_record_framing_matches_tensorboardx(tmp_path: Path) -> None:
    path = write_scalars(tmp_path, [("loss", 0.5, 1)])
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    first = raw[12 : 12 + length]
    assert raw[: 16 + length] == record(first)


# Reading tensorboardX files


def test_reads_tensorboardx_scalars(tmp_path: Path) -> None:
    path = write_scalars(tmp_path, [("accuracy", 0.9, 1), ("loss", 1e-5, 2), ("loss", -3.25, 3), ("big", 2.5e30, 4)])
    reader = EventFileReader(path)
    samples = reader.read_new()
    assert triples(samples) == [
        ("accuracy", "0.9", 1),
        ("loss", "1e-05", 2),
        ("loss", "-3.25", 3),
        ("big", "2.5e+30", 4),
    ]
    assert all(isinstance(s, Sample) for s in samples)
    assert samples[0].timestamp == datetime.fromtimestamp(WALL + 1, tz=UTC)
    assert samples[0].timestamp is not None and samples[0].timestamp.tzinfo == UTC
    assert [as_float(s.value) for s in samples] == [0.9, 1e-5, -3.25, 2.5e30]
    assert reader.corrupt_records == reader.malformed_records == 0
    assert reader.pending_bytes == 0
    assert reader.offset == path.stat().st_size
    assert reader.read_new() == []


def test_non_finite_simple_values_are_kept_as_text(tmp_path: Path) -> None:
    path = write_scalars(tmp_path, [("loss", float("nan"), 1), ("loss", float("inf"), 2), ("loss", float("-inf"), 3)])
    samples = EventFileReader(path).read_new()
    assert [s.value for s in samples] == ["NaN", "+Inf", "-Inf"]
    assert [as_float(s.value) for s in samples] == [None, None, None]


def scalar_tensor(dtype: int, dims: list[int] | None = None, **values: object) -> TensorProto:
    """Build a TensorProto with tensorboardX's generated protobuf classes."""
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=d) for d in (dims or [])])
    return TensorProto(dtype=dtype, tensor_shape=shape, **values)


TENSOR_CASES = [
    ("float_val", scalar_tensor(1, float_val=[0.75]), "0.75"),
    ("float_val_shape_1", scalar_tensor(1, [1], float_val=[0.1]), "0.1"),
    ("float_val_shape_1x1", scalar_tensor(1, [1, 1], float_val=[2.5]), "2.5"),
    ("double_val", scalar_tensor(2, double_val=[0.123456789012345]), "0.123456789012345"),
    ("int_val", scalar_tensor(3, int_val=[-7]), "-7.0"),
    ("int64_val", scalar_tensor(9, int64_val=[1 << 40]), repr(float(1 << 40))),
    ("float_content", scalar_tensor(1, tensor_content=struct.pack("<f", 0.25)), "0.25"),
    ("double_content", scalar_tensor(2, [1], tensor_content=struct.pack("<d", -1.5e-300)), "-1.5e-300"),
    ("int32_content", scalar_tensor(3, tensor_content=struct.pack("<i", -2)), "-2.0"),
    ("int64_content", scalar_tensor(9, tensor_content=struct.pack("<q", 12)), "12.0"),
    ("half_val", scalar_tensor(19, half_val=[0x3C00]), "1.0"),
    ("double_nan", scalar_tensor(2, double_val=[float("nan")]), "NaN"),
]


def test_reads_scalar_tensors_written_by_tensorboardx(tmp_path: Path) -> None:
    writer = tensorboardX.FileWriter(str(tmp_path))
    for step, (tag, tensor, _expected) in enumerate(TENSOR_CASES):
        summary = Summary(value=[Summary.Value(tag=tag, tensor=tensor)])
        writer.add_summary(summary, global_step=step, walltime=WALL)
    # Tensors that are not one numeric element are not scalars.
    for tag, tensor in [
        ("vector", scalar_tensor(1, [3], float_val=[1.0, 2.0, 3.0])),
        ("empty", scalar_tensor(1, [0])),
        ("text", TensorProto(dtype=7, string_val=[b"hello"])),
        ("bool", TensorProto(dtype=10, bool_val=[True])),
        ("wrong_content", scalar_tensor(1, tensor_content=b"\x00" * 8)),
    ]:
        writer.add_summary(Summary(value=[Summary.Value(tag=tag, tensor=tensor)]), global_step=99)
    writer.close()
    samples = EventFileReader(event_file(tmp_path)).read_new()
    assert triples(samples) == [(tag, expected, step) for step, (tag, _t, expected) in enumerate(TENSOR_CASES)]


def test_several_values_in_one_summary(tmp_path: Path) -> None:
    writer = tensorboardX.FileWriter(str(tmp_path))
    summary = Summary(
        value=[
            Summary.Value(tag="a", simple_value=1.0),
            Summary.Value(tag="b", tensor=scalar_tensor(2, double_val=[2.0])),
            Summary.Value(tag="c", simple_value=3.0),
        ]
    )
    writer.add_summary(summary, global_step=5, walltime=WALL)
    writer.close()
    assert triples(EventFileReader(event_file(tmp_path)).read_new()) == [
        ("a", "1.0", 5),
        ("b", "2.0", 5),
        ("c", "3.0", 5),
    ]


# Hand-built records


def test_skips_unknown_fields_of_every_wire_type(tmp_path: Path) -> None:
    tensor = field(1, 0, 1) + unknown_fields() + field(5, 2, struct.pack("<f", 0.5))
    path = write_records(
        tmp_path / "events.out.tfevents.1",
        [
            field(3, 2, b"brain.Event:2") + field(1, 1, struct.pack("<d", WALL)),
            event(step=1, values=[simple_value("acc", 0.25, extra=unknown_fields())], extra=unknown_fields()),
            event(step=2, values=[tensor_value("acc", tensor)]),
        ],
    )
    reader = EventFileReader(path)
    assert triples(reader.read_new()) == [("acc", "0.25", 1), ("acc", "0.5", 2)]
    assert reader.records == 3
    assert reader.malformed_records == 0


def test_unpacked_and_negative_values(tmp_path: Path) -> None:
    # Repeated scalars written one field each (proto2 style) must read as packed ones do.
    unpacked_float = field(1, 0, 1) + field(5, 5, struct.pack("<f", 4.0))
    unpacked_int64 = field(1, 0, 9) + field(10, 0, -5)
    packed_int32 = field(1, 0, 3) + field(7, 2, varint(-9))
    path = write_records(
        tmp_path / "x.tfevents",
        [
            event(step=-3, values=[tensor_value("f", unpacked_float)]),
            event(step=1 << 40, values=[tensor_value("i", unpacked_int64), tensor_value("j", packed_int32)]),
        ],
    )
    assert triples(EventFileReader(path).read_new()) == [
        ("f", "4.0", -3),
        ("i", "-5.0", 1 << 40),
        ("j", "-9.0", 1 << 40),
    ]


def test_missing_wall_time_gives_no_timestamp(tmp_path: Path) -> None:
    path = write_records(tmp_path / "x.tfevents", [event(step=1, wall=None, values=[simple_value("a", 1.0)])])
    (sample,) = EventFileReader(path).read_new()
    assert sample == TFSample("a", "1.0", None, 1)


def test_malformed_event_is_counted_and_skipped(tmp_path: Path) -> None:
    path = write_records(
        tmp_path / "x.tfevents",
        [
            event(step=1, values=[simple_value("a", 1.0)]),
            field(5, 2, b"\x0a\xff"),  # a Value whose length runs past its Summary
            b"\x80" * 11,  # a varint that never ends
            field(1, 3, b""),  # a group, which no TensorFlow message uses
            event(step=2, values=[simple_value("a", 2.0)]),
        ],
    )
    reader = EventFileReader(path)
    assert triples(reader.read_new()) == [("a", "1.0", 1), ("a", "2.0", 2)]
    assert reader.malformed_records == 3
    assert reader.corrupt_records == 0


# Growing files


def test_incremental_reads_while_tensorboardx_appends(tmp_path: Path) -> None:
    writer = tensorboardX.SummaryWriter(str(tmp_path), flush_secs=1)
    try:
        writer.add_scalar("loss", 1.0, 0)
        writer.flush()
        eventually(lambda: any(tmp_path.glob("*tfevents*")))
        reader = EventFileReader(event_file(tmp_path))
        seen: list[TFSample] = []
        for batch in range(3):
            for step in range(batch * 4 + 1, batch * 4 + 5):
                writer.add_scalar("loss", step / 10, step)

            def caught_up(last: int = batch * 4 + 4) -> bool:
                writer.flush()
                new = reader.read_new()
                seen.extend(new)
                return bool(seen) and seen[-1].step == last

            eventually(caught_up)
        assert [s.step for s in seen] == list(range(13))
        assert [s.value for s in seen] == ["1.0"] + [repr(s / 10) for s in range(1, 13)]
        assert reader.read_new() == []
    finally:
        writer.close()


def grow(source: bytes, target: Path, cuts: list[int]) -> Iterator[int]:
    """Copy `source` into `target` in pieces ending at each cut, yielding after each piece."""
    done = 0
    with target.open("ab") as handle:
        for cut in [*cuts, len(source)]:
            handle.write(source[done:cut])
            handle.flush()
            done = cut
            yield cut


def test_partial_record_waits_for_the_rest(tmp_path: Path) -> None:
    written = write_scalars(tmp_path / "src", [("acc", 0.1 * i, i) for i in range(1, 6)])
    source = written.read_bytes()
    everything = EventFileReader(written).read_new()
    assert len(everything) == 5
    target = tmp_path / "live" / "events.out.tfevents.live"
    target.parent.mkdir()
    reader = EventFileReader(target)
    got: list[TFSample] = []
    # Every byte boundary, so the header, the data and the data CRC are each cut somewhere.
    for _ in grow(source, target, list(range(1, len(source)))):
        got.extend(reader.read_new())
        assert reader.offset + reader.pending_bytes == target.stat().st_size
    assert got == everything
    assert reader.pending_bytes == 0
    assert reader.corrupt_records == 0


def test_truncated_last_record_is_left_pending(tmp_path: Path) -> None:
    path = write_scalars(tmp_path, [("acc", 0.5, 1), ("acc", 0.6, 2)])
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])
    reader = EventFileReader(path)
    assert triples(reader.read_new()) == [("acc", "0.5", 1)]
    assert reader.pending_bytes > 0
    assert reader.corrupt_records == 0
    with path.open("ab") as handle:
        handle.write(raw[-7:])
    assert triples(reader.read_new()) == [("acc", "0.6", 2)]
    assert reader.pending_bytes == 0


def test_replaced_file_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = write_records(tmp_path / "x.tfevents", [event(step=s, values=[simple_value("a", s)]) for s in range(3)])
    reader = EventFileReader(path)
    assert len(reader.read_new()) == 3
    write_records(path, [event(step=7, values=[simple_value("a", 7.0)])])
    assert triples(reader.read_new()) == [("a", "7.0", 7)]


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        EventFileReader(tmp_path / "nope.tfevents").read_new()


# Corruption


def record_spans(raw: bytes) -> list[tuple[int, int]]:
    """Return (start, end) of each record in a well-formed file."""
    spans, pos = [], 0
    while pos < len(raw):
        (length,) = struct.unpack_from("<Q", raw, pos)
        spans.append((pos, pos + 16 + length))
        pos += 16 + length
    return spans


def flip(raw: bytes, at: int) -> bytes:
    """Return `raw` with one byte inverted."""
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


@pytest.mark.parametrize("where", ["data", "data_crc"])
def test_record_with_bad_data_crc_is_skipped(tmp_path: Path, where: str) -> None:
    path = write_scalars(tmp_path, [("acc", 0.1, 1), ("acc", 0.2, 2), ("acc", 0.3, 3)])
    raw = path.read_bytes()
    start, end = record_spans(raw)[2]  # the second scalar; record 0 is the file_version event
    path.write_bytes(flip(raw, start + 14 if where == "data" else end - 1))
    reader = EventFileReader(path)
    assert triples(reader.read_new()) == [("acc", "0.1", 1), ("acc", "0.3", 3)]
    assert reader.corrupt_records == 1
    assert reader.pending_bytes == 0


def test_records_without_scalars_are_not_checksummed(tmp_path: Path) -> None:
    path = write_scalars(tmp_path, [("acc", 0.1, 1)])
    raw = path.read_bytes()
    _start, end = record_spans(raw)[0]  # the file_version event holds no summary
    path.write_bytes(flip(raw, end - 1))
    reader = EventFileReader(path)
    assert triples(reader.read_new()) == [("acc", "0.1", 1)]
    assert reader.corrupt_records == 0


def test_large_non_scalar_records_are_cheap(tmp_path: Path) -> None:
    image = Summary.Value(tag="img", image=Summary.Image(height=1, width=1, encoded_image_string=b"\x00" * (4 << 20)))
    writer = tensorboardX.FileWriter(str(tmp_path))
    writer.add_summary(Summary(value=[image]), global_step=1)
    writer.add_summary(Summary(value=[Summary.Value(tag="acc", simple_value=0.5)]), global_step=1)
    writer.close()
    started = time.monotonic()
    assert triples(EventFileReader(event_file(tmp_path)).read_new()) == [("acc", "0.5", 1)]
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("where", ["length", "length_crc"])
def test_record_with_bad_length_crc_resyncs_to_the_next_record(tmp_path: Path, where: str) -> None:
    path = write_scalars(tmp_path, [("acc", 0.1, 1), ("acc", 0.2, 2), ("acc", 0.3, 3)])
    raw = path.read_bytes()
    start, _end = record_spans(raw)[2]
    path.write_bytes(flip(raw, start + (0 if where == "length" else 9)))
    reader = EventFileReader(path)
    assert triples(reader.read_new()) == [("acc", "0.1", 1), ("acc", "0.3", 3)]
    assert reader.corrupt_records == 1


def test_garbage_tail_is_scanned_once_and_later_records_are_found(tmp_path: Path) -> None:
    path = write_records(tmp_path / "x.tfevents", [event(step=1, values=[simple_value("a", 1.0)])])
    reader = EventFileReader(path)
    assert len(reader.read_new()) == 1
    with path.open("ab") as handle:
        handle.write(b"\x07" * 100)
    assert reader.read_new() == []
    assert reader.corrupt_records == 1
    with path.open("ab") as handle:
        handle.write(record(event(step=2, values=[simple_value("a", 2.0)])))
    assert triples(reader.read_new()) == [("a", "2.0", 2)]
    assert reader.corrupt_records == 1


# Directory watcher


def test_watcher_tells_train_and_test_apart(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    write_scalars(root / "train", [("accuracy", 0.8, 1), ("loss", 0.5, 1)])
    write_scalars(root / "test", [("accuracy", 0.7, 1), ("loss", 0.6, 1)])
    write_scalars(root / "pretrain", [("accuracy", 0.1, 1)])
    write_scalars(root / "run1" / "train", [("accuracy", 0.9, 2)])
    (root / "train" / "notes.txt").write_text("not an event file")
    watcher = EventDirectoryWatcher(root, ["train/accuracy", "test/accuracy", "loss"])
    samples = watcher.poll()
    assert sorted(triples(samples)) == sorted(
        [
            ("train/accuracy", "0.8", 1),
            ("train/accuracy", "0.9", 2),
            ("test/accuracy", "0.7", 1),
            ("loss", "0.5", 1),
            ("loss", "0.6", 1),
        ]
    )
    assert len(watcher.files) == 4
    assert watcher.poll() == []


def test_watcher_counts_the_root_in_the_directory_path(tmp_path: Path) -> None:
    write_scalars(tmp_path / "logs" / "train", [("accuracy", 0.8, 1)])
    samples = EventDirectoryWatcher(tmp_path / "logs" / "train", ["train/accuracy", "logs/train/accuracy"]).poll()
    assert triples(samples) == [("train/accuracy", "0.8", 1), ("logs/train/accuracy", "0.8", 1)]


def test_watcher_matches_a_bare_name_exactly_anywhere(tmp_path: Path) -> None:
    write_scalars(tmp_path / "a" / "b", [("accuracy", 0.5, 1), ("accuracy_top5", 0.9, 1), ("val/accuracy", 0.4, 1)])
    assert triples(EventDirectoryWatcher(tmp_path, ["accuracy"]).poll()) == [("accuracy", "0.5", 1)]


def test_watcher_matches_a_scoped_tag_in_any_directory(tmp_path: Path) -> None:
    # PyTorch users log add_scalar("test/accuracy", ...) into one file.
    write_scalars(tmp_path, [("test/accuracy", 0.5, 1), ("accuracy", 0.1, 1)])
    write_scalars(tmp_path / "test", [("accuracy", 0.6, 2)])
    samples = EventDirectoryWatcher(tmp_path, ["test/accuracy"]).poll()
    assert triples(samples) == [("test/accuracy", "0.5", 1), ("test/accuracy", "0.6", 2)]


def test_watcher_deeper_directory_names(tmp_path: Path) -> None:
    write_scalars(tmp_path / "x" / "eval" / "test", [("acc", 0.3, 1)])
    write_scalars(tmp_path / "other" / "test", [("acc", 0.4, 1)])
    samples = EventDirectoryWatcher(tmp_path, ["eval/test/acc"]).poll()
    assert triples(samples) == [("eval/test/acc", "0.3", 1)]


def test_watcher_one_tag_can_feed_two_metrics(tmp_path: Path) -> None:
    write_scalars(tmp_path / "test", [("accuracy", 0.6, 1)])
    samples = EventDirectoryWatcher(tmp_path, ["accuracy", "test/accuracy"]).poll()
    assert triples(samples) == [("accuracy", "0.6", 1), ("test/accuracy", "0.6", 1)]


def test_watcher_follows_new_files_and_growth(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    watcher = EventDirectoryWatcher(root, ["acc"])
    assert watcher.poll() == []  # the trial has not created its log directory yet
    first = write_records(root / "a" / "events.out.tfevents.1", [event(step=1, values=[simple_value("acc", 1.0)])])
    assert triples(watcher.poll()) == [("acc", "1.0", 1)]
    with first.open("ab") as handle:
        handle.write(record(event(step=2, values=[simple_value("acc", 2.0)])))
    write_records(root / "b" / "events.out.tfevents.2", [event(step=3, values=[simple_value("acc", 3.0)])])
    assert triples(watcher.poll()) == [("acc", "2.0", 2), ("acc", "3.0", 3)]
    shutil.rmtree(root / "a")
    assert watcher.poll() == []
    assert len(watcher.files) == 1


def test_watcher_on_a_single_file(tmp_path: Path) -> None:
    path = write_records(tmp_path / "events.out.tfevents.1", [event(step=1, values=[simple_value("acc", 1.0)])])
    assert triples(EventDirectoryWatcher(path, ["acc"]).poll()) == [("acc", "1.0", 1)]


def test_watcher_reports_corruption_and_pending_bytes(tmp_path: Path) -> None:
    path = write_scalars(tmp_path / "train", [("acc", 0.1, 1), ("acc", 0.2, 2)])
    raw = path.read_bytes()
    start, _end = record_spans(raw)[1]
    path.write_bytes(flip(raw, start + 14)[:-3])
    watcher = EventDirectoryWatcher(tmp_path, ["train/acc"])
    assert watcher.poll() == []
    assert watcher.corrupt_records == 1
    assert watcher.pending_bytes > 0
