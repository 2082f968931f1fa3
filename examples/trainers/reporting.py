"""Ways a training program can hand its metrics to natib, one per Katib metrics collector kind.

The digits trainer picks one with ``--report``; each reporter gets the metrics of every epoch.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from datetime import UTC, datetime
from pathlib import Path


class StdoutReporter:
    """StdOut collector: ``name=value`` lines on standard output."""

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        print(f"epoch={epoch} " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)

    def close(self) -> None:
        pass


class FileReporter:
    """File collector: appends TEXT (``name=value``) or JSON lines to the metrics file."""

    def __init__(self, path: str, fmt: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", buffering=1)  # kept open for the whole run
        self.fmt = fmt

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.fmt == "json":
            self.fh.write(json.dumps({"epoch": epoch, **metrics, "timestamp": time.time()}) + "\n")
        else:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self.fh.write(f"{stamp} epoch={epoch} " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + "\n")

    def close(self) -> None:
        self.fh.close()


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def _masked_crc(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


class TFEventReporter:
    """TensorFlowEvent collector: writes scalar summaries to a TensorFlow event file (no TensorFlow needed)."""

    def __init__(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.fh = open(Path(directory) / name, "ab")  # kept open for the whole run
        self._write(_field(1, 1, struct.pack("<d", time.time())) + _length_delimited(3, b"brain.Event:2"))

    def _write(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        self.fh.write(header + struct.pack("<I", _masked_crc(header)) + event + struct.pack("<I", _masked_crc(event)))
        self.fh.flush()

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
            for tag, value in metrics.items()
        )
        self._write(_field(1, 1, struct.pack("<d", time.time())) + _field(2, 0, _varint(epoch))
                    + _length_delimited(5, values))

    def close(self) -> None:
        self.fh.close()


class PrometheusReporter:
    """PrometheusMetric collector: serves gauges on /metrics for natib to scrape while training runs."""

    def __init__(self, port: int) -> None:
        from prometheus_client import Gauge, start_http_server

        self.gauges: dict[str, Gauge] = {}
        self.gauge_type = Gauge
        start_http_server(port, addr="127.0.0.1")

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if name not in self.gauges:
                self.gauges[name] = self.gauge_type(name, f"validation {name}")
            self.gauges[name].set(value)
        time.sleep(1.2)  # let at least one scrape see every epoch's value

    def close(self) -> None:
        time.sleep(1.2)


class PushReporter:
    """Push collector: calls natib.report_metrics, which publishes straight to NATS."""

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        import natib

        natib.report_metrics(metrics, step=epoch)

    def close(self) -> None:
        pass


def make_reporter(kind: str, path: str | None, port: int) -> object:
    """The reporter for ``--report``."""
    if kind == "stdout":
        return StdoutReporter()
    if kind in ("file-text", "file-json"):
        return FileReporter(path or "/var/log/katib/metrics.log", kind.split("-")[1])
    if kind == "tfevent":
        return TFEventReporter(path or "/var/log/katib/tfevent/")
    if kind == "prometheus":
        return PrometheusReporter(port)
    if kind == "push":
        return PushReporter()
    raise ValueError(f"unknown reporter {kind}")
