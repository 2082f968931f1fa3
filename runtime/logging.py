"""One logging configuration for every natib process.

structlog renders natib's own events; the standard library's loggers (nats, asyncio,
kubernetes_asyncio) are routed through the same processors, so a process writes one format: JSON lines
when its output is not a terminal (or when asked), a readable console format otherwise. Context bound
with `structlog.contextvars` (actor, experiment, trial, message id) appears on every line, stdlib ones
included.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import msgspec
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

from natib.runtime.errors import ConfigError

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FORMATS = ("auto", "json", "console")


class _NatibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler natib installed, so reconfiguring replaces it instead of adding another."""


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that remembers the name it was asked for, so lines can say where they came from."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else "")


def _add_logger_name(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", "")
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _json_renderer() -> Processor:
    encoder = msgspec.json.Encoder(enc_hook=str)

    def serialize(obj: Any, **_: Any) -> str:
        return encoder.encode(obj).decode()

    return structlog.processors.JSONRenderer(serializer=serialize)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging to write to `stream` (default stderr) at `level`.

    `fmt` is json, console, or auto (console when `stream` is a terminal, else JSON). Calling it again
    replaces the previous configuration, including for loggers obtained earlier.
    """
    key = level.lower()
    if key not in _LEVELS:
        raise ConfigError(f"log level: expected one of {', '.join(_LEVELS)}, got {level!r}")
    if fmt not in _FORMATS:
        raise ConfigError(f"log format: expected one of {', '.join(_FORMATS)}, got {fmt!r}")
    out: TextIO = stream if stream is not None else sys.stderr
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    as_json = fmt == "json" or (fmt == "auto" and not tty)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if as_json:
        shared.append(structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)))
        renderer = _json_renderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)

    numeric = _LEVELS[key]
    # No logger caching: loggers created at import time must follow a later reconfiguration.
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_NamedWriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

    handler = _NatibHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _NatibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)


def get_logger(name: str) -> FilteringBoundLogger:
    """Return a structlog logger whose lines carry `logger=name`."""
    # A lazy proxy, so a logger made at import time follows whatever configuration is current.
    return cast(FilteringBoundLogger, structlog.get_logger(name))
