"""Envelope encoding: every message round-trips, unknown types are skipped, broken bytes are undecodable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natib.messages import codec
from natib.messages import commands as cmd
from natib.messages import events as ev
from natib.messages.spec import load_experiment

EXPERIMENT_YAML = (Path(__file__).parent / "data" / "valid" / "random.yaml").read_text()

OBS = [ev.Metric(name="loss", min="0.1", max="0.9", latest="0.2")]
RUN_SPEC: dict[str, object] = {"kind": "Job", "spec": {"containers": [{"name": "main", "args": ["--lr=0.05"]}]}}

SAMPLES: list[ev.Event | cmd.Command] = [
    ev.ExperimentCreated(experiment=load_experiment(EXPERIMENT_YAML), uid="u-1", seed=7, source_dir="/src"),
    ev.ExperimentRunning(),
    ev.ExperimentSucceeded(reason="ExperimentGoalReached", message="done"),
    ev.ExperimentFailed(message="Experiment has failed because max failed count has reached"),
    ev.ExperimentDeleted(),
    ev.BudgetChanged(max_trial_count=10, parallel_trial_count=None, max_failed_trial_count=2),
    ev.SuggestionRequested(request=1, count=3),
    ev.TrialsSuggested(request=1, algorithm="random", as_of=12, assignments=[{"lr": "0.05"}],
                       labels=[{"g": "1"}], exhausted=True),
    ev.SuggestionFailed(request=2, message="search space is empty"),
    ev.TrialCreated(trial="codec-exp-abc", index=0, request=1, assignment={"lr": "0.05"}, run_spec=RUN_SPEC,
                    labels={"g": "1"}),
    ev.TrialStarted(trial="codec-exp-abc", attempt=2, pid=123, host="h", workdir="/w"),
    ev.MetricReported(trial="codec-exp-abc", name="loss", value="0.5", step=3, attempt=1,
                      timestamp=datetime(2024, 5, 1, 12, 0, 1, 250000, tzinfo=UTC)),
    ev.TrialSucceeded(trial="codec-exp-abc", observation=OBS),
    ev.TrialFailed(trial="codec-exp-abc", message="Trial has failed: exit code 2", observation=OBS, exit_code=2),
    ev.TrialMetricsUnavailable(trial="codec-exp-abc", exit_code=0),
    ev.TrialKilled(trial="codec-exp-abc", observation=OBS),
    ev.TrialEarlyStopped(trial="codec-exp-abc", observation=OBS, message="stopped"),
    cmd.SuggestTrials(request=1, count=2, as_of=5),
    cmd.LaunchTrial(trial="codec-exp-abc", run_spec=RUN_SPEC, primary_container_name="main", source_dir="/src",
                    metrics_file="/tmp/m.json"),
    cmd.StopTrial(trial="codec-exp-abc", reason="EarlyStopped", message="worse than the median"),
]


def _envelope_json(body: object, **overrides: object) -> bytes:
    doc: dict[str, object] = {"id": "m-1", "experiment": "codec-exp", "time": "2024-05-01T00:00:00Z",
                              "body": body}
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_samples_cover_every_message_type() -> None:
    known = {*ev.AnyEvent.__args__, *cmd.AnyCommand.__args__}  # type: ignore[attr-defined]
    assert {type(s) for s in SAMPLES} == known


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: type(b).__name__)
def test_every_message_round_trips(body: ev.Event | cmd.Command) -> None:
    env = codec.wrap("codec-exp", body, causation="42")
    data = codec.encode(env)
    back = codec.decode(data)
    assert back == env
    assert back is not None and type(back.body) is type(body)
    assert json.loads(data)["body"]["type"] == type(body).__struct_config__.tag


def test_wrap_stamps_utc_time_and_a_fresh_id() -> None:
    before = datetime.now(UTC)
    a = codec.wrap("codec-exp", ev.ExperimentRunning())
    b = codec.wrap("codec-exp", ev.ExperimentRunning(), id="fixed")
    assert a.time.tzinfo is not None and a.time.utcoffset() == timedelta(0)
    assert before <= a.time <= datetime.now(UTC)
    assert a.id and a.id != codec.wrap("codec-exp", ev.ExperimentRunning()).id
    assert b.id == "fixed"
    assert a.version == codec.SCHEMA_VERSION
    decoded = codec.decode(codec.encode(a))
    assert decoded is not None and decoded.time.utcoffset() == timedelta(0)
    assert json.loads(codec.encode(a))["time"].endswith("Z")


def test_unknown_message_type_is_skipped() -> None:
    assert codec.decode(_envelope_json({"type": "trial.teleported", "trial": "x", "whatever": [1]})) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\xff\xfe garbage",
        b"",
        b"[1, 2, 3]",
        codec.encode(codec.wrap("codec-exp", ev.SuggestionRequested(request=1, count=2)))[:-7],
        _envelope_json({"type": "trial.started", "trial": 17}),  # wrong-typed body field
        _envelope_json({"type": "suggestion.requested", "request": "one", "count": 1}),
        _envelope_json({"type": "suggestion.requested", "request": 1}),  # missing required field
        _envelope_json({"type": "trial.started", "trial": "t"}, id=5),  # wrong-typed envelope field
        _envelope_json({"type": "trial.started", "trial": "t"}, time="yesterday"),
        _envelope_json({"trial": "t"}),  # body without a type
        _envelope_json(3),  # body that is not an object
        json.dumps({"id": "m", "experiment": "codec-exp", "time": "2024-05-01T00:00:00Z"}).encode(),
    ],
    ids=[
        "garbage", "empty", "not-an-object", "truncated", "wrong-body-type", "wrong-int", "missing-field",
        "wrong-envelope-type", "bad-time", "no-type", "scalar-body", "missing-body",
    ],
)
def test_broken_messages_are_undecodable(data: bytes) -> None:
    with pytest.raises(codec.UndecodableMessage):
        codec.decode(data)


def test_undecodable_is_a_value_error() -> None:
    assert issubclass(codec.UndecodableMessage, ValueError)


def test_optional_envelope_fields_default() -> None:
    env = codec.decode(_envelope_json({"type": "experiment.running"}))
    assert env is not None
    assert env.causation is None and env.version == codec.SCHEMA_VERSION
    assert env.body == ev.ExperimentRunning()
    assert env.time == datetime(2024, 5, 1, tzinfo=UTC)


def test_event_type_is_the_tag() -> None:
    assert ev.event_type(ev.TrialCreated(trial="t", index=0, request=1, assignment={}, run_spec={})) == (
        "trial.created"
    )
    assert ev.event_type(ev.TrialsSuggested(request=1, algorithm="grid", as_of=0, assignments=[])) == (
        "suggestion.made"
    )


@settings(max_examples=60, deadline=None)
@given(
    trial=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    value=st.text(max_size=30),
    step=st.integers(min_value=0, max_value=2**31),
    attempt=st.integers(min_value=1, max_value=9),
)
def test_metric_reports_round_trip(trial: str, value: str, step: int, attempt: int) -> None:
    body = ev.MetricReported(trial=trial, name="loss", value=value, step=step, attempt=attempt)
    env = codec.wrap("codec-exp", body)
    assert codec.decode(codec.encode(env)) == env


def test_encode_is_plain_json_of_the_envelope() -> None:
    env = codec.wrap("codec-exp", cmd.StopTrial(trial="t"), id="i", causation="c")
    doc = msgspec.json.decode(codec.encode(env))
    assert doc["id"] == "i" and doc["experiment"] == "codec-exp" and doc["causation"] == "c"
    assert doc["body"] == {"type": "stop-trial", "trial": "t", "reason": "Killed", "message": ""}
