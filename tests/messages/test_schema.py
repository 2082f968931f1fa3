"""The committed message schema (messages/schema.json) guards the wire format against breaking changes.

Adding optional fields and new message types is allowed; removing, renaming or retyping a field or a
type, or making a new field required, is not: old logs must stay readable.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from natib.messages import codec
from natib.messages import commands as cmd
from natib.messages import events as ev

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "messages" / "schema.json"
REGENERATE = (
    "messages/schema.json is out of date; if the change is intended and compatible, regenerate it with:\n"
    "  python -c \"import json; from natib.messages import codec; "
    "open('messages/schema.json', 'w').write(json.dumps(codec.schema(), indent=2, sort_keys=True) + '\\n')\""
)
_NOT_TYPE = ("default", "description", "title", "examples")



def committed() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def tags(schema: dict[str, Any]) -> dict[str, str]:
    """Message tag -> definition name, from the envelope body's discriminator."""
    body = schema["$defs"]["Envelope"]["properties"]["body"]
    return {tag: ref.rsplit("/", 1)[1] for tag, ref in body["discriminator"]["mapping"].items()}


def type_of(prop: dict[str, Any]) -> dict[str, Any]:
    """A property's schema without the annotations that do not change what is accepted."""
    return {k: v for k, v in prop.items() if k not in _NOT_TYPE}


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every way ``new`` fails to read what ``old`` described (the body union is checked through its tags)."""
    problems: list[str] = []
    new_tags = tags(new)
    for tag, name in tags(old).items():
        if tag not in new_tags:
            problems.append(f"message type {tag!r} was removed")
        elif new_tags[tag] != name:
            problems.append(f"message type {tag!r} now maps to {new_tags[tag]} instead of {name}")
    for name, old_def in old["$defs"].items():
        new_def = new["$defs"].get(name)
        if new_def is None:
            problems.append(f"definition {name} was removed")
            continue
        old_props, new_props = old_def.get("properties", {}), new_def.get("properties", {})
        for prop, schema in old_props.items():
            if prop not in new_props:
                problems.append(f"{name}.{prop} was removed or renamed")
            elif (name, prop) != ("Envelope", "body") and type_of(new_props[prop]) != type_of(schema):
                problems.append(f"{name}.{prop} changed type: {type_of(schema)} -> {type_of(new_props[prop])}")
        was_required = set(old_def.get("required", []))
        for prop in new_def.get("required", []):
            if prop not in was_required:
                problems.append(f"{name}.{prop} is required now but was not before")
    return problems


def test_committed_schema_is_canonical_json() -> None:
    text = SCHEMA_FILE.read_text()
    assert text == render(json.loads(text)), "schema.json must be json.dumps(indent=2, sort_keys=True) + newline"


def test_committed_schema_names_every_message_type() -> None:
    known = {
        str(t.__struct_config__.tag): t.__name__
        for t in (*ev.AnyEvent.__args__, *cmd.AnyCommand.__args__)  # type: ignore[attr-defined]
    }
    assert tags(committed()) == known
    assert committed()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_can_be_generated() -> None:
    schema = codec.schema()
    assert "Envelope" in schema["$defs"]


def test_no_breaking_change_since_committed_schema() -> None:
    problems = breaking_changes(committed(), codec.schema())
    assert not problems, "breaking message-format changes:\n  " + "\n  ".join(problems)


def test_committed_schema_is_current() -> None:
    assert render(codec.schema()) == SCHEMA_FILE.read_text(), REGENERATE


# -- the compatibility rule itself, on edited copies of the committed schema --------------------------


def test_identical_schemas_are_compatible() -> None:
    assert breaking_changes(committed(), committed()) == []


def test_new_optional_field_and_new_type_are_allowed() -> None:
    old, new = committed(), committed()
    new["$defs"]["TrialStarted"]["properties"]["gpu"] = {"anyOf": [{"type": "string"}, {"type": "null"}],
                                                         "default": None}
    new["$defs"]["TrialPaused"] = {"type": "object", "properties": {"type": {"enum": ["trial.paused"]}},
                                   "required": ["type"]}
    body = new["$defs"]["Envelope"]["properties"]["body"]
    body["discriminator"]["mapping"]["trial.paused"] = "#/$defs/TrialPaused"
    body["anyOf"].append({"$ref": "#/$defs/TrialPaused"})
    new["$defs"]["TrialStarted"]["properties"]["attempt"]["description"] = "which try"
    assert breaking_changes(old, new) == []


def test_removed_renamed_retyped_and_newly_required_fields_break() -> None:
    old = committed()
    removed = copy.deepcopy(old)
    del removed["$defs"]["MetricReported"]["properties"]["step"]
    assert breaking_changes(old, removed) == ["MetricReported.step was removed or renamed"]

    retyped = copy.deepcopy(old)
    retyped["$defs"]["MetricReported"]["properties"]["value"] = {"type": "number"}
    assert [p.split(":")[0] for p in breaking_changes(old, retyped)] == ["MetricReported.value changed type"]

    required = copy.deepcopy(old)
    required["$defs"]["TrialStarted"]["required"].append("host")
    assert breaking_changes(old, required) == ["TrialStarted.host is required now but was not before"]


def test_removed_message_type_breaks() -> None:
    old, new = committed(), committed()
    body = new["$defs"]["Envelope"]["properties"]["body"]
    del body["discriminator"]["mapping"]["trial.killed"]
    body["anyOf"].remove({"$ref": "#/$defs/TrialKilled"})
    del new["$defs"]["TrialKilled"]
    assert breaking_changes(old, new) == [
        "message type 'trial.killed' was removed", "definition TrialKilled was removed",
    ]
