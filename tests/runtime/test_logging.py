"""One log format for natib's events and the stdlib loggers of its libraries."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from natib.runtime.errors import ConfigError
from natib.runtime.logging import configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_carry_bound_context() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    log = get_logger("natib.test")
    with structlog.contextvars.bound_contextvars(trial="t1", experiment="e"):
        log.info("trial_launched", pid=42)
    log.info("after")
    first, second = lines(buf)
    assert first["event"] == "trial_launched"
    assert (first["trial"], first["experiment"], first["pid"]) == ("t1", "e", 42)
    assert first["level"] == "info"
    assert first["logger"] == "natib.test"
    assert first["timestamp"].endswith("Z")
    assert "trial" not in second


def test_stdlib_loggers_come_out_in_the_same_format() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    with structlog.contextvars.bound_contextvars(actor="launcher"):
        logging.getLogger("nats").warning("reconnecting to %s", "nats://x:1")
    (line,) = lines(buf)
    assert line["event"] == "reconnecting to nats://x:1"
    assert (line["level"], line["logger"], line["actor"]) == ("warning", "nats", "launcher")
    assert "timestamp" in line


def test_level_filtering_applies_to_both() -> None:
    buf = io.StringIO()
    configure_logging("warning", "json", stream=buf)
    log = get_logger("x")
    log.info("dropped")
    log.debug("dropped")
    logging.getLogger("asyncio").info("dropped")
    log.warning("kept")
    logging.getLogger("asyncio").error("kept too")
    assert [line["event"] for line in lines(buf)] == ["kept", "kept too"]


def test_reconfiguring_moves_existing_loggers() -> None:
    log = get_logger("early")
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    log.info("one")
    configure_logging("debug", "json", stream=second)
    log.debug("two")
    logging.getLogger("nats").debug("three")
    assert [line["event"] for line in lines(first)] == ["one"]
    assert [line["event"] for line in lines(second)] == ["two", "three"]
    assert (
        sum(isinstance(h, logging.StreamHandler) and h.stream is second for h in logging.getLogger().handlers)
        == 1
    )


def test_exceptions_are_structured_in_json() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    try:
        raise ValueError("bad value")
    except ValueError:
        get_logger("x").exception("handler_failed")
        logging.getLogger("nats").exception("callback failed")
    ours, theirs = lines(buf)
    for line in (ours, theirs):
        (exc,) = line["exception"]
        assert (exc["exc_type"], exc["exc_value"]) == ("ValueError", "bad value")


def test_auto_is_json_off_a_terminal_and_console_is_not_json() -> None:
    buf = io.StringIO()
    configure_logging("info", "auto", stream=buf)
    get_logger("x").info("auto_json", k=1)
    assert lines(buf)[0]["event"] == "auto_json"

    buf = io.StringIO()
    configure_logging("info", "console", stream=buf)
    get_logger("x").info("console_line", k=1)
    logging.getLogger("nats").warning("from nats")
    text = buf.getvalue()
    assert "console_line" in text and "k=1" in text and "from nats" in text
    assert not text.lstrip().startswith("{")
    assert "\x1b[" not in text  # no colour codes when not writing to a terminal


def test_odd_values_do_not_break_json() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    get_logger("x").info("odd", obj=object(), path=__import__("pathlib").Path("/tmp/x"))
    (line,) = lines(buf)
    assert line["obj"].startswith("<object")
    assert "/tmp/x" in line["path"]


def test_bad_level_or_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="verbose"):
        configure_logging("verbose")
    with pytest.raises(ConfigError, match="xml"):
        configure_logging("info", "xml")
