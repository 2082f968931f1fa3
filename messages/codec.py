"""The envelope every message travels in, and its JSON encoding with tolerant decoding."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec

from natib.messages.commands import AnyCommand, Command
from natib.messages.events import AnyEvent, Event

SCHEMA_VERSION = 1


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Identity, causality and time of a message, around its body (an event or a command)."""

    id: str
    experiment: str
    body: AnyEvent | AnyCommand
    causation: str | None = None
    time: datetime
    version: int = SCHEMA_VERSION


class _RawEnvelope(msgspec.Struct, kw_only=True):
    id: str
    experiment: str
    body: msgspec.Raw
    causation: str | None = None
    time: datetime
    version: int = SCHEMA_VERSION


class _TypeOnly(msgspec.Struct):
    type: str


class UndecodableMessage(ValueError):
    """The bytes are not a natib envelope at all (garbage, truncated, wrong types): dead-letter them."""


_encoder = msgspec.json.Encoder()
_raw_decoder = msgspec.json.Decoder(_RawEnvelope)
_type_decoder = msgspec.json.Decoder(_TypeOnly)
_body_decoder = msgspec.json.Decoder(AnyEvent | AnyCommand)
_KNOWN_TYPES = frozenset(
    str(t.__struct_config__.tag)
    for t in (*AnyEvent.__args__, *AnyCommand.__args__)  # type: ignore[attr-defined]
)


def wrap(
    experiment: str, body: Event | Command, *, id: str | None = None, causation: str | None = None
) -> Envelope:
    """Put a body in a new envelope stamped with the current UTC time."""
    return Envelope(
        id=id or uuid.uuid4().hex,
        experiment=experiment,
        body=body,  # type: ignore[arg-type]
        causation=causation,
        time=datetime.now(UTC),
    )


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope as JSON."""
    return _encoder.encode(envelope)


def decode(data: bytes) -> Envelope | None:
    """Decode an envelope; None when its body is a message type this version does not know (skip it).

    Raises UndecodableMessage for anything that is not a well-formed envelope of a known type.
    """
    try:
        raw = _raw_decoder.decode(data)
        kind = _type_decoder.decode(raw.body).type
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableMessage(str(exc)) from exc
    if kind not in _KNOWN_TYPES:
        return None
    try:
        body = _body_decoder.decode(raw.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableMessage(f"{kind}: {exc}") from exc
    return Envelope(
        id=raw.id, experiment=raw.experiment, body=body, causation=raw.causation, time=raw.time,
        version=raw.version,
    )


def schema() -> dict[str, object]:
    """The JSON schema of the envelope and every message, as committed in messages/schema.json."""
    (env,), components = msgspec.json.schema_components([Envelope], ref_template="#/$defs/{name}")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **env, "$defs": components}
