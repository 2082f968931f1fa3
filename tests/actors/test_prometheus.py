"""Tests for the Prometheus exposition parser and scraper, against text and a real prometheus_client server."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from natib.actors.metrics.parsers import Sample, as_float
from natib.actors.metrics.prometheus import ParseResult, ScrapeError, parse_exposition, parse_selector, scrape

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

EXPOSITION = r"""# HELP accuracy Validation accuracy of the current epoch.
# TYPE accuracy gauge
accuracy 0.9125
# HELP loss_total Summed training loss.
# TYPE loss_total counter
loss_total 1234.5
# HELP epochs Epochs finished (a counter without the _total suffix).
# TYPE epochs counter
epochs 7
# HELP split_accuracy Accuracy per data split.
# TYPE split_accuracy gauge
split_accuracy{split="train",model="resnet"} 0.99
split_accuracy{split="test",model="resnet"} 0.93 1700000000123
split_accuracy{split="odd \"quoted\" \\ value",model="resnet"} 0.5
# HELP step_seconds Time per training step.
# TYPE step_seconds histogram
step_seconds_bucket{le="0.1"} 3
step_seconds_bucket{le="1"} 10
step_seconds_bucket{le="+Inf"} 11
step_seconds_sum 4.75
step_seconds_count 11
# HELP rpc_latency Latency summary.
# TYPE rpc_latency summary
rpc_latency{quantile="0.5"} 0.012
rpc_latency{quantile="0.99"} 0.2
rpc_latency_sum 1.5
rpc_latency_count 42
# A comment line that is neither HELP nor TYPE.
untyped_metric -3e-05
not_a_number NaN
too_big +Inf
too_small -Inf
"""


def pairs(samples: list[Sample]) -> list[tuple[str, str]]:
    """Return (name, value) of each sample, for compact assertions."""
    return [(s.name, s.value) for s in samples]


def parse(metrics: list[str], text: str = EXPOSITION) -> list[tuple[str, str]]:
    """Parse `text` expecting no error, and return (name, value) pairs."""
    result = parse_exposition(text, metrics, WHEN)
    assert result.error is None
    return pairs(result.samples)


# Selecting samples


def test_plain_names_gauge_counter_untyped() -> None:
    result = parse_exposition(EXPOSITION, ["accuracy", "loss_total", "untyped_metric"], WHEN)
    assert isinstance(result, ParseResult)
    assert result.error is None
    assert result.samples == [
        Sample("accuracy", "0.9125", WHEN),
        Sample("loss_total", "1234.5", WHEN),
        Sample("untyped_metric", "-3e-05", WHEN),
    ]
    assert as_float(result.samples[2].value) == -3e-05


def test_counter_without_total_suffix_keeps_its_exposed_name() -> None:
    assert parse(["epochs"]) == [("epochs", "7.0")]
    assert parse(["epochs_total"]) == []


def test_histogram_and_summary_contribute_by_full_name() -> None:
    assert parse(["step_seconds_sum", "step_seconds_count", "rpc_latency_sum", "rpc_latency_count"]) == [
        ("step_seconds_sum", "4.75"),
        ("step_seconds_count", "11.0"),
        ("rpc_latency_sum", "1.5"),
        ("rpc_latency_count", "42.0"),
    ]
    assert parse(["step_seconds"]) == []
    assert parse(['step_seconds_bucket{le="1"}', 'rpc_latency{quantile="0.99"}']) == [
        ('step_seconds_bucket{le="1"}', "10.0"),
        ('rpc_latency{quantile="0.99"}', "0.2"),
    ]


def test_labels_must_match() -> None:
    assert parse(['split_accuracy{split="test"}']) == [('split_accuracy{split="test"}', "0.93")]
    assert parse(['split_accuracy{split="test",model="resnet"}']) == [
        ('split_accuracy{split="test",model="resnet"}', "0.93")
    ]
    assert parse(['split_accuracy{split="test",model="vgg"}']) == []
    assert parse(['split_accuracy{split="valid"}']) == []
    assert parse(['split_accuracy{missing="x"}']) == []
    assert parse(['split_accuracy{split="odd \\"quoted\\" \\\\ value"}']) == [
        ('split_accuracy{split="odd \\"quoted\\" \\\\ value"}', "0.5")
    ]


def test_bare_name_matches_every_series() -> None:
    assert parse(["split_accuracy"]) == [
        ("split_accuracy", "0.99"),
        ("split_accuracy", "0.93"),
        ("split_accuracy", "0.5"),
    ]


def test_sample_timestamp_is_used_when_present() -> None:
    result = parse_exposition(EXPOSITION, ['split_accuracy{split="test"}', "accuracy"], WHEN)
    assert [(s.name, s.timestamp) for s in result.samples] == [
        ("accuracy", WHEN),
        ('split_accuracy{split="test"}', datetime.fromtimestamp(1700000000.123, tz=UTC)),
    ]


def test_non_finite_values_are_kept_as_text() -> None:
    samples = parse(["not_a_number", "too_big", "too_small"])
    assert samples == [("not_a_number", "NaN"), ("too_big", "+Inf"), ("too_small", "-Inf")]
    assert [as_float(value) for _name, value in samples] == [None, None, None]


def test_unknown_names_and_empty_text() -> None:
    assert parse(["nothing_here"]) == []
    assert parse_exposition("", ["accuracy"], WHEN) == ParseResult([], None)
    assert parse_exposition("\n\n# just a comment\n", ["accuracy"], WHEN) == ParseResult([], None)


def test_selector_whitespace_and_parsing() -> None:
    assert parse_selector('acc{ split = "test" , model="m"}') == ("acc", {"split": "test", "model": "m"})
    assert parse_selector("  loss_total ") == ("loss_total", {})
    assert parse(['split_accuracy{ split = "train" }']) == [('split_accuracy{ split = "train" }', "0.99")]


@pytest.mark.parametrize("bad", ["", "acc{", "acc{split=test}", "9lives", "two words", 'acc{a="1",a="2"}'])
def test_invalid_selector_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid Prometheus metric name"):
        parse_selector(bad)
    with pytest.raises(ValueError):
        parse_exposition(EXPOSITION, ["accuracy", bad], WHEN)


# Malformed exposition


@pytest.mark.parametrize(
    "bad_line",
    [
        "accuracy",  # no value
        "accuracy not-a-number",
        'accuracy{split="x" 1',  # unterminated labels
        "accuracy{split=x} 1",  # unquoted label value
        "# TYPE accuracy",  # TYPE without a type
    ],
)
def test_malformed_line_stops_parsing_and_reports_it(bad_line: str) -> None:
    text = f"# TYPE loss gauge\nloss 0.5\n\n{bad_line}\nloss 0.25\n"
    samples, error = parse_exposition(text, ["loss", "accuracy"], WHEN)
    assert pairs(samples) == [("loss", "0.5")]
    assert error is not None
    assert error.startswith("line 4: malformed exposition")
    assert bad_line[:10] in error


# Scraping


def free_port() -> int:
    """Return a loopback port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


EXPORTER = """
import sys, time
from prometheus_client import Counter, Gauge, start_http_server
accuracy = Gauge("accuracy", "Validation accuracy.", ["split"])
accuracy.labels(split="test").set(0.875)
accuracy.labels(split="train").set(0.5)
Counter("steps", "Training steps.").inc(3)
server, _thread = start_http_server(0, addr="127.0.0.1")
print(server.server_port, flush=True)
time.sleep(60)
"""


@pytest.fixture
def exporter() -> Iterator[str]:
    """Run a prometheus_client exporter in a subprocess and yield its metrics URL."""
    proc = subprocess.Popen([sys.executable, "-c", EXPORTER], stdout=subprocess.PIPE, text=True)
    try:
        stdout = proc.stdout
        assert stdout is not None
        port_line: list[str] = []
        # readline has no timeout of its own; a thread bounds the wait if the exporter hangs.
        reader = threading.Thread(target=lambda: port_line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=10)
        assert port_line and port_line[0].strip().isdigit(), "exporter did not start"
        yield f"http://127.0.0.1:{port_line[0].strip()}/metrics"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_scrape_a_real_prometheus_client_endpoint(exporter: str) -> None:
    text = scrape(exporter, timeout=5)
    assert "# TYPE accuracy gauge" in text
    samples, error = parse_exposition(
        text, ['accuracy{split="test"}', "steps_total", "python_info", "process_cpu_seconds_total"], WHEN
    )
    assert error is None
    values = dict(pairs(samples))
    assert values['accuracy{split="test"}'] == "0.875"
    assert values["steps_total"] == "3.0"
    assert "python_info" in values


def test_scrape_refused_connection() -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    with pytest.raises(ScrapeError, match="refused") as info:
        scrape(url, timeout=2)
    assert url in str(info.value)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves canned responses: /missing is a 404, /big a large body, /latin1 a non-UTF-8 body."""

    def do_GET(self) -> None:
        """Answer according to the path."""
        if self.path == "/missing":
            self.send_error(404, "Not Found")
            return
        body = b"x 1\n" * 1000 if self.path == "/big" else 'label{v="caf\xe9"} 1\n'.encode("latin-1")
        self.send_response(200)
        charset = "utf-8" if self.path == "/big" else "iso-8859-1"
        self.send_header("Content-Type", f"text/plain; version=0.0.4; charset={charset}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def canned() -> Iterator[str]:
    """Serve `_Handler` on a loopback port in a thread and yield its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_scrape_http_error_status(canned: str) -> None:
    with pytest.raises(ScrapeError, match="HTTP 404"):
        scrape(f"{canned}/missing", timeout=2)


def test_scrape_decodes_the_declared_charset(canned: str) -> None:
    text = scrape(f"{canned}/latin1", timeout=2)
    assert text == 'label{v="caf\xe9"} 1\n'
    assert pairs(parse_exposition(text, ['label{v="caf\xe9"}'], WHEN).samples) == [('label{v="caf\xe9"}', "1.0")]


def test_scrape_rejects_an_oversized_body(canned: str) -> None:
    assert len(scrape(f"{canned}/big", timeout=2)) == 4000
    with pytest.raises(ScrapeError, match="larger than 100 bytes"):
        scrape(f"{canned}/big", timeout=2, max_bytes=100)


def test_scrape_times_out() -> None:
    # A listener that accepts connections but never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ScrapeError, match="timed out"):
            scrape(f"http://127.0.0.1:{port}/metrics", timeout=0.3)
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/metrics", "localhost:8080/metrics"])
def test_scrape_only_http(url: str) -> None:
    with pytest.raises(ScrapeError, match="only http and https"):
        scrape(url, timeout=1)
