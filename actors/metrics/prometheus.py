"""Reads metrics from a Prometheus text exposition, for Katib's PrometheusMetric collector kind.

Katib declares this kind but ships no collector for it; natib scrapes the trial's `/metrics` endpoint
with `scrape` and keeps the configured metrics with `parse_exposition`. A configured metric is a sample
name, optionally with Katib-style labels: `accuracy`, `loss_total`, `accuracy{split="test"}`.
"""

from __future__ import annotations

import http.client
import math
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import Message
from typing import NamedTuple

from prometheus_client.parser import text_string_to_metric_families

from natib.actors.metrics.parsers import Sample

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ParseResult",
    "ScrapeError",
    "parse_exposition",
    "parse_selector",
    "scrape",
]

DEFAULT_MAX_BYTES = 16 << 20
"""Largest exposition `scrape` accepts; a runaway endpoint must not exhaust the collector's memory."""

# Ask for the classic text format, which prometheus_client's text parser reads; never OpenMetrics.
_ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"


class ParseResult(NamedTuple):
    """What `parse_exposition` found: the matching samples, and the first error (None when the text was clean)."""

    samples: list[Sample]
    error: str | None


class ScrapeError(Exception):
    """A metrics endpoint could not be read: connection refused, timeout, HTTP error status, oversized body."""


def parse_selector(metric: str) -> tuple[str, dict[str, str]]:
    """Split a configured metric such as `acc{split="test"}` into its sample name and label matchers.

    The selector is read with the exposition grammar itself, so label escaping means the same in both.
    Raises ValueError when `metric` is not a valid sample name with optional labels.
    """
    try:
        families = list(text_string_to_metric_families(f"{metric.strip()} 0\n"))
    except (ValueError, IndexError) as exc:
        raise ValueError(f"invalid Prometheus metric name: {metric!r}") from exc
    samples = [sample for family in families for sample in family.samples]
    if len(samples) != 1:
        raise ValueError(f"invalid Prometheus metric name: {metric!r}")
    return samples[0].name, dict(samples[0].labels)


def _value_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _timestamp(seconds: object, when: datetime) -> datetime:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return when
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return when


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())


def parse_exposition(text: str, metric_names: Sequence[str], when: datetime) -> ParseResult:
    """Return the samples of `text` that match `metric_names`, each stamped with its own timestamp or `when`.

    A configured name matches a sample whose full name is equal (so a histogram or summary contributes
    `x_sum`, `x_count`, `x_bucket` by those names, whatever its TYPE line says) and whose labels include
    every label the configured name gives; labels it does not give are ignored, so a bare name matches
    every series of that name. Each sample is named by the configured string, and its value is
    `repr(float)` text, or `NaN`, `+Inf`, `-Inf`, which `as_float` reads as unavailable.

    Lines are parsed one at a time, so a sample keeps the exact name it was exposed under: the
    whole-text parser renames the samples of a counter declared without `_total`. At the first malformed
    line parsing stops; the result holds the samples of the lines before it and the error, with its line
    number. Raises ValueError when a configured name is itself invalid.
    """
    selectors = [(metric, *parse_selector(metric)) for metric in metric_names]
    by_name: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for metric, name, labels in selectors:
        by_name.setdefault(name, []).append((metric, labels))
    samples: list[Sample] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            parsed = [sample for family in text_string_to_metric_families(stripped) for sample in family.samples]
        except (ValueError, IndexError) as exc:
            detail = str(exc) or type(exc).__name__
            return ParseResult(samples, f"line {number}: malformed exposition: {detail}: {stripped[:200]!r}")
        for sample in parsed:
            for metric, labels in by_name.get(sample.name, ()):
                if _matches(sample.labels, labels):
                    stamp = _timestamp(sample.timestamp, when)
                    samples.append(Sample(metric, _value_text(sample.value), stamp))
    return ParseResult(samples, None)


def _charset(headers: Message) -> str:
    charset = headers.get_content_charset()
    return charset or "utf-8"


def scrape(url: str, timeout: float, *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """GET `url` and return the exposition text; blocking, so an async caller runs it in a thread.

    Raises ScrapeError, naming the URL, on a refused or failed connection, a timeout, an HTTP error
    status, a body larger than `max_bytes`, or a URL that is not http(s).
    """
    if not url.lower().startswith(("http://", "https://")):
        # urllib would also open file:// and ftp:// URLs, which a metrics endpoint never is.
        raise ScrapeError(f"scrape {url}: only http and https URLs are supported")
    request = urllib.request.Request(url, headers={"Accept": _ACCEPT, "Accept-Encoding": "identity"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(max_bytes + 1)
            charset = _charset(response.headers)
    except urllib.error.HTTPError as exc:
        raise ScrapeError(f"scrape {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise ScrapeError(f"scrape {url}: timed out after {timeout}s") from exc
        raise ScrapeError(f"scrape {url}: {reason}") from exc
    except TimeoutError as exc:
        raise ScrapeError(f"scrape {url}: timed out after {timeout}s") from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # A reset connection or a cut-off body surfaces from http.client itself, not as a URLError.
        raise ScrapeError(f"scrape {url}: {exc}") from exc
    if len(body) > max_bytes:
        raise ScrapeError(f"scrape {url}: response larger than {max_bytes} bytes")
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")
