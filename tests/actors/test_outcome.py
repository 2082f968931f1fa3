"""The metrics collector's pure rules: the trial outcome and the parser a spec asks for."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from natib.actors.metrics.collector import TrialParse, make_parser, outcome
from natib.actors.metrics.parsers import DEFAULT_FILTER, JsonLinesParser, TextParser
from natib.messages import events as ev
from natib.messages.spec import Experiment, load_experiment
from natib.messages.state import MetricLog


def experiment(objective: str = "minimize", collector: dict[str, Any] | None = None,
               strategies: list[dict[str, str]] | None = None) -> Experiment:
    obj: dict[str, Any] = {"type": objective, "objectiveMetricName": "loss", "additionalMetricNames": ["acc"]}
    if strategies:
        obj["metricStrategies"] = strategies
    spec: dict[str, Any] = {
        "objective": obj, "algorithm": {"algorithmName": "random"},
        "parameters": [{"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.1"}}],
    }
    if collector is not None:
        spec["metricsCollectorSpec"] = collector
    return load_experiment(yaml.safe_dump({"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
                                           "metadata": {"name": "out-exp"}, "spec": spec}))


def parse(*values: tuple[str, str], tail: list[str] | None = None, attempt: int = 1) -> TrialParse:
    p = TrialParse(attempt, experiment())
    p.logs = [MetricLog(name, value, i, None) for i, (name, value) in enumerate(values)]
    p.tail = tail or []
    return p


REPORTS = (("loss", "0.5"), ("acc", "0.7"), ("loss", "0.2"), ("loss", "0.3"), ("acc", "0.9"))
OBS = [ev.Metric(name="loss", min="0.2", max="0.5", latest="0.3"),
       ev.Metric(name="acc", min="0.7", max="0.9", latest="0.9")]


def test_exit_zero_with_objective_succeeds_with_observation() -> None:
    result = outcome(experiment(), "t1", parse(*REPORTS, attempt=2), 0, None, "")
    assert result == ev.TrialSucceeded(trial="t1", observation=OBS, attempt=2, exit_code=0)


def test_observation_keeps_the_reported_strings() -> None:
    result = outcome(experiment(), "t1", parse(("loss", "1e-3"), ("loss", "0.010"), ("loss", "+2")), 0, None, "")
    assert result.observation == [ev.Metric(name="loss", min="1e-3", max="+2", latest="+2")]  # type: ignore[attr-defined]


def test_exit_zero_without_objective_is_metrics_unavailable() -> None:
    result = outcome(experiment(), "t1", parse(("acc", "0.8")), 0, None, "")
    assert isinstance(result, ev.TrialMetricsUnavailable)
    assert result.observation == [ev.Metric(name="acc", min="0.8", max="0.8", latest="0.8")]
    assert result.exit_code == 0 and "'loss'" in result.message
    assert result.message.startswith("Metrics are not available")


def test_nonzero_exit_fails_with_code_and_last_output_line() -> None:
    tail = ["epoch 1 loss=0.5", "Traceback (most recent call last):", "ValueError: bad lr   ", "", "  "]
    result = outcome(experiment(), "t1", parse(("loss", "0.5"), tail=tail), 3, None, "")
    assert isinstance(result, ev.TrialFailed)
    assert result.exit_code == 3 and result.reason == "TrialFailed"
    assert result.message == "Trial has failed: exit code 3; last output: ValueError: bad lr"
    assert result.observation == [ev.Metric(name="loss", min="0.5", max="0.5", latest="0.5")]


def test_lost_process_fails_without_exit_code() -> None:
    result = outcome(experiment(), "t1", parse(*REPORTS), None, None, "")
    assert isinstance(result, ev.TrialFailed)
    assert result.exit_code is None and result.message == "Trial has failed: the process was lost"


@pytest.mark.parametrize(
    ("reason", "kind", "default_message"),
    [("EarlyStopped", ev.TrialEarlyStopped, "Trial is early stopped"),
     ("Killed", ev.TrialKilled, "Trial was killed"),
     ("Deleted", ev.TrialKilled, "Trial was killed")],
)
def test_stop_reasons_keep_the_observation(reason: str, kind: type, default_message: str) -> None:
    for code in (None, 0, -15, 137):
        result = outcome(experiment(), "t1", parse(*REPORTS), code, reason, "")
        assert type(result) is kind
        assert result.observation == OBS and result.message == default_message  # type: ignore[attr-defined]
    result = outcome(experiment(), "t1", parse(*REPORTS), -15, reason, "worse than the median")
    assert result.message == "worse than the median"  # type: ignore[attr-defined]


def test_stdout_default_parser() -> None:
    parser = make_parser(experiment())
    assert isinstance(parser, TextParser)
    assert parser.metric_names == ("loss", "acc")
    assert [p.pattern for p in parser.filters] == [TextParser(["loss"], [DEFAULT_FILTER]).filters[0].pattern]
    samples = parser.feed(b"epoch 1: loss=0.25 acc=0.9 other=3\n")
    assert [(s.name, s.value) for s in samples] == [("loss", "0.25"), ("acc", "0.9")]


def test_custom_filter_parser() -> None:
    exp = experiment(collector={"collector": {"kind": "StdOut"},
                                "source": {"filter": {"metricsFormat": [r"([\w|-]+):\s*([+-]?\d*(\.\d+)?)"]}}})
    parser = make_parser(exp)
    assert isinstance(parser, TextParser)
    assert [(s.name, s.value) for s in parser.feed(b"loss: 0.4 acc: .8\nloss=0.1\n")] == [
        ("loss", "0.4"), ("acc", ".8")]


def test_file_json_parser() -> None:
    exp = experiment(collector={"collector": {"kind": "File"},
                                "source": {"fileSystemPath": {"path": "/m.json", "kind": "File", "format": "JSON"}}})
    parser = make_parser(exp)
    assert isinstance(parser, JsonLinesParser)
    samples = parser.feed(b'{"loss": 0.5, "acc": "0.75", "epoch": 1}\n')
    assert [(s.name, s.value) for s in samples] == [("loss", "0.5"), ("acc", "0.75")]


def test_file_text_parser() -> None:
    exp = experiment(collector={"collector": {"kind": "File"},
                                "source": {"fileSystemPath": {"path": "/m.log", "kind": "File"}}})
    assert isinstance(make_parser(exp), TextParser)
