"""Random and mutated Experiment documents: the loader and validator answer with errors, never a traceback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natib.messages.spec import Experiment, SpecError, load_experiment, load_experiments
from natib.messages.validation import validate_experiment

VALID = sorted((Path(__file__).parent / "data" / "valid").glob("*.yaml"))
BASE: list[dict[str, Any]] = [yaml.safe_load(p.read_text()) for p in VALID]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=20), st.binary(max_size=8).map(lambda b: b.decode("latin-1")))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a document."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


def set_at(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def must_answer_cleanly(doc: Any) -> None:
    """A valid experiment (possibly with validation errors) or a SpecError; anything else fails the test."""
    try:
        exp = load_experiment(doc)
    except SpecError as exc:
        assert exc.errors and all(str(e) for e in exc.errors)
        return
    assert isinstance(exp, Experiment)
    for error in validate_experiment(exp):
        assert error.path and error.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_katib_documents(data: st.DataObject) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(BASE)))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.sampled_from(paths(doc)))
        doc = set_at(doc, where, data.draw(json_values))
    must_answer_cleanly(doc)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_random_documents(doc: Any) -> None:
    must_answer_cleanly(doc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    try:
        load_experiments(text)
    except SpecError as exc:
        assert exc.errors
