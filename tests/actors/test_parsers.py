"""Tests for the TEXT and JSON metric parsers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natib.actors.metrics.parsers import (
    DEFAULT_FILTER,
    LEGACY_FILTER,
    JsonLinesParser,
    Sample,
    TextParser,
    as_float,
    parse_rfc3339,
)


def pairs(samples: list[Sample]) -> list[tuple[str, str]]:
    """Return (name, value) of each sample, for compact assertions."""
    return [(s.name, s.value) for s in samples]


# as_float


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.3", 0.3), (".98", 0.98), ("-7.53e-05", -7.53e-05), ("1e-05", 1e-05), ("+3", 3.0), ("3.", 3.0),
     ("-0", 0.0), (" 2 ", 2.0), ("1E3", 1000.0)],
)
def test_as_float_accepts_decimal_numbers(text: str, expected: float) -> None:
    assert as_float(text) == expected


@pytest.mark.parametrize(
    "text", ["", "-", ".", "e5", "abc", "nan", "NaN", "inf", "-Infinity", "1_000", "0x10", "1e999", "1,5"]
)
def test_as_float_rejects_non_numbers(text: str) -> None:
    assert as_float(text) is None


# timestamps


def test_parse_rfc3339_forms() -> None:
    assert parse_rfc3339("2024-05-01T10:20:30Z") == datetime(2024, 5, 1, 10, 20, 30, tzinfo=UTC)
    assert parse_rfc3339("2024-05-01T10:20:30.123456789Z") == datetime(
        2024, 5, 1, 10, 20, 30, 123456, tzinfo=UTC
    )
    assert parse_rfc3339("2024-05-01T10:20:30.5+02:00") == datetime(
        2024, 5, 1, 10, 20, 30, 500000, tzinfo=timezone(timedelta(hours=2))
    )
    for bad in ["2024-05-01", "2024-05-01 10:20:30Z", "2024-05-01T10:20:30", "2024-13-01T10:20:30Z", "x"]:
        assert parse_rfc3339(bad) is None


# TEXT format, default filter


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [("loss=0.3", "loss", "0.3"), ("accuracy=.98", "accuracy", ".98"), ("Score=-7.53e-05", "Score", "-7.53e-05"),
     ("Score = +3", "Score", "+3"), ("loss=1e-05 done", "loss", "1e-05")],
)
def test_default_filter_values(line: str, name: str, value: str) -> None:
    assert pairs(TextParser([name]).parse_line(line)) == [(name, value)]


def test_several_metrics_on_one_line_keep_line_order() -> None:
    parser = TextParser(["loss", "accuracy"])
    samples = parser.parse_line("epoch=3 accuracy=0.91 loss=0.25 lr=0.01 accuracy=0.92")
    assert pairs(samples) == [("accuracy", "0.91"), ("loss", "0.25"), ("accuracy", "0.92")]
    assert all(s.timestamp is None for s in samples)


def test_metric_name_inside_another_name_does_not_count() -> None:
    parser = TextParser(["loss"])
    assert parser.parse_line("val_loss=1") == []
    assert pairs(parser.parse_line("val_loss=1 loss=2")) == [("loss", "2")]


def test_lines_without_any_metric_name_are_not_scanned() -> None:
    # The substring gate looks at names, so "Loss=1" does not pass for metric "loss".
    assert TextParser(["loss"]).parse_line("Loss=1 acc=2") == []


def test_empty_values_are_skipped() -> None:
    assert TextParser(["loss"]).parse_line("loss=nan loss= loss=abc") == []


def test_legacy_filter_misses_exponent_and_plus() -> None:
    parser = TextParser(["loss"], [LEGACY_FILTER])
    assert pairs(parser.parse_line("loss=-0.5")) == [("loss", "-0.5")]
    assert pairs(parser.parse_line("loss=1e-05")) == [("loss", "1")]
    assert parser.parse_line("loss=+3") == []


def test_leading_timestamp_is_used() -> None:
    parser = TextParser(["loss"])
    (sample,) = parser.parse_line("2024-05-01T10:20:30.25Z epoch 1 loss=0.3")
    assert sample == Sample("loss", "0.3", datetime(2024, 5, 1, 10, 20, 30, 250000, tzinfo=UTC))
    (offset,) = parser.parse_line("2024-05-01T10:20:30-05:00 loss=0.3")
    assert offset.timestamp == datetime(2024, 5, 1, 15, 20, 30, tzinfo=UTC)


def test_timestamp_not_first_token_is_ignored() -> None:
    (sample,) = TextParser(["loss"]).parse_line("INFO 2024-05-01T10:20:30Z loss=0.3")
    assert sample.timestamp is None


def test_crlf_is_stripped() -> None:
    assert pairs(TextParser(["loss"]).parse_line("loss=0.3\r\n")) == [("loss", "0.3")]


# TEXT format, custom filters


def test_katib_example_filter_with_braces() -> None:
    parser = TextParser(["accuracy", "loss"], [r"{metricName: ([\w|-]+), metricValue: ((-?\d+)(\.\d+)?)}"])
    samples = parser.parse_line("{metricName: accuracy, metricValue: 0.8491} {metricName: loss, metricValue: 0.4}")
    assert pairs(samples) == [("accuracy", "0.8491"), ("loss", "0.4")]
    assert parser.parse_line("accuracy=0.5") == []


def test_xgboost_filter_with_space_in_name() -> None:
    parser = TextParser(["valid_1 auc"], [r"(\w+\s\w+)\s:\s((-?\d+)(\.\d+)?)"])
    samples = parser.parse_line("[7]\tvalid_0 auc : 0.81\tvalid_1 auc : 0.7745")
    assert pairs(samples) == [("valid_1 auc", "0.7745")]


def test_darts_genotype_filter_gives_string_value() -> None:
    genotype = "Genotype(normal=[[('sep_conv_3x3', 0)]], normal_concat=range(2, 6))"
    parser = TextParser(["Best-Genotype"], [r"([\w-]+)=(Genotype.*)"])
    (sample,) = parser.parse_line(f"Best-Genotype={genotype}")
    assert sample.value == genotype
    assert as_float(sample.value) is None


def test_every_filter_contributes() -> None:
    parser = TextParser(["loss", "valid auc"], [DEFAULT_FILTER, r"(\w+\s\w+)\s:\s((-?\d+)(\.\d+)?)"])
    assert pairs(parser.parse_line("loss=0.1 valid auc : 0.9")) == [("loss", "0.1"), ("valid auc", "0.9")]


def test_filter_errors() -> None:
    with pytest.raises(ValueError, match="two top subexpressions are required"):
        TextParser(["loss"], [r"loss=(\d+)"])
    with pytest.raises(ValueError, match=r"invalid filter: \(\["):
        TextParser(["loss"], [r"([)(x)"])


def test_filters_are_ascii_like_go() -> None:
    # Go's \w does not match non-ASCII letters, so the name is cut at the first one.
    assert pairs(TextParser(["é"]).parse_line("é=1")) == []


# streaming


def test_feed_joins_a_line_split_across_chunks() -> None:
    parser = TextParser(["loss"])
    assert parser.feed(b"epoch 1 lo") == []
    assert parser.feed(b"ss=0.") == []
    assert pairs(parser.feed(b"3\r\nloss=0.2\nlos")) == [("loss", "0.3"), ("loss", "0.2")]
    assert pairs(parser.feed(b"s=0.1")) == []
    assert pairs(parser.flush()) == [("loss", "0.1")]
    assert parser.flush() == []


def test_feed_handles_a_character_split_across_chunks() -> None:
    data = "étape ① loss=0.5\n".encode()
    split = data.index("①".encode()) + 1
    parser = TextParser(["loss"])
    assert parser.feed(data[:split]) == []
    assert pairs(parser.feed(data[split:])) == [("loss", "0.5")]


def test_feed_replaces_invalid_utf8() -> None:
    parser = TextParser(["loss"])
    assert pairs(parser.feed(b"\xff\xfe loss=1\n")) == [("loss", "1")]


def test_feed_bounds_an_endless_line() -> None:
    parser = TextParser(["loss"], max_line_bytes=16)
    assert parser.feed(b"loss=1 " + b"x" * 100) == []
    assert parser.feed(b"y" * 100 + b"\nloss=2\n") == [Sample("loss", "1", None), Sample("loss", "2", None)]
    assert parser.truncated_lines == 1


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_feed_result_does_not_depend_on_chunking(cuts: list[int]) -> None:
    data = "2024-05-01T10:20:30Z loss=0.3 ü\nacc=1 loss=-2e-3\r\n\nloss=+4 val_loss=9".encode()
    whole = TextParser(["loss", "acc"])
    expected = whole.feed(data) + whole.flush()
    parser = TextParser(["loss", "acc"])
    got: list[Sample] = []
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        got += parser.feed(data[start:cut])
        start = max(start, cut)
    got += parser.feed(data[start:]) + parser.flush()
    assert got == expected
    assert pairs(expected) == [("loss", "0.3"), ("acc", "1"), ("loss", "-2e-3"), ("loss", "+4")]


# JSON lines


def test_json_numbers_and_strings() -> None:
    parser = JsonLinesParser(["loss", "accuracy", "genotype"])
    samples = parser.parse_line('{"loss": 0.25, "accuracy": "0.9", "genotype": "Genotype(...)", "other": 1}')
    assert pairs(samples) == [("loss", "0.25"), ("accuracy", "0.9"), ("genotype", "Genotype(...)")]
    assert pairs(parser.parse_line('{"loss": 1e-05}')) == [("loss", "1e-05")]
    assert pairs(parser.parse_line('{"loss": 3}')) == [("loss", "3")]
    assert parser.errors == []


def test_json_ignores_bools_nulls_and_nested_values() -> None:
    parser = JsonLinesParser(["loss"])
    for line in ['{"loss": true}', '{"loss": null}', '{"loss": [1]}', '{"loss": {"v": 1}}', '{"loss": ""}']:
        assert parser.parse_line(line) == []
    assert parser.errors == []


def test_json_nan_is_kept_as_unavailable_text() -> None:
    (sample,) = JsonLinesParser(["loss"]).parse_line('{"loss": NaN}')
    assert sample.value == "NaN"
    assert as_float(sample.value) is None


def test_json_timestamps() -> None:
    parser = JsonLinesParser(["loss"])
    (rfc,) = parser.parse_line('{"loss": 1, "timestamp": "2024-05-01T10:20:30.5Z"}')
    assert rfc.timestamp == datetime(2024, 5, 1, 10, 20, 30, 500000, tzinfo=UTC)
    (epoch,) = parser.parse_line('{"loss": 1, "timestamp": 1714558830.25}')
    assert epoch.timestamp == datetime(2024, 5, 1, 10, 20, 30, 250000, tzinfo=UTC)
    (whole,) = parser.parse_line('{"loss": 1, "timestamp": 1714558830}')
    assert whole.timestamp == datetime(2024, 5, 1, 10, 20, 30, tzinfo=UTC)
    for raw in ['"yesterday"', "true", "1e300", "null"]:
        (sample,) = parser.parse_line(f'{{"loss": 1, "timestamp": {raw}}}')
        assert sample.timestamp is None


def test_json_bad_lines_are_reported_and_skipped() -> None:
    parser = JsonLinesParser(["loss"])
    data = b'{"loss": 1}\nnot json\n\n[1, 2]\n"text"\n{"loss": 2}\n{"loss": 3'
    samples = parser.feed(data)
    assert pairs(samples) == [("loss", "1"), ("loss", "2")]
    assert len(parser.errors) == 3
    assert parser.errors[0].startswith("line 2: invalid JSON")
    assert parser.errors[1] == "line 4: expected a JSON object, got list"
    assert parser.errors[2] == "line 5: expected a JSON object, got str"
    assert pairs(parser.flush()) == []
    assert parser.errors[3].startswith("line 7: invalid JSON")


def test_json_feed_across_chunks() -> None:
    parser = JsonLinesParser(["loss"])
    assert parser.feed(b'{"lo') == []
    assert pairs(parser.feed(b'ss": 0.5}\r\n{"loss": "0.4"}')) == [("loss", "0.5")]
    assert pairs(parser.flush()) == [("loss", "0.4")]
