"""The early stopper's pure rule: stop a running trial that is worse than its completed peers' median."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from natib.actors.early_stopping import evaluate
from natib.messages import events as ev
from natib.messages.commands import StopTrial
from natib.messages.spec import Experiment, load_experiment
from tests.eventlog import EventLog

NAME = "es-exp"
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def experiment(objective: str = "minimize", *, early_stopping: bool = True, min_trials: str = "2",
               start_step: str = "2") -> Experiment:
    spec: dict[str, Any] = {
        "objective": {"type": objective, "objectiveMetricName": "loss"},
        "algorithm": {"algorithmName": "random"}, "parallelTrialCount": 3, "maxTrialCount": 10,
        "parameters": [{"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.1"}}],
    }
    if early_stopping:
        spec["earlyStopping"] = {"algorithmName": "medianstop", "algorithmSettings": [
            {"name": "min_trials_required", "value": min_trials}, {"name": "start_step", "value": start_step}]}
    return load_experiment(yaml.safe_dump({"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
                                           "metadata": {"name": NAME}, "spec": spec}))


class Log(EventLog):
    """A started medianstop experiment."""

    def __init__(self, exp: Experiment) -> None:
        super().__init__(NAME, exp)
        self.ctl(ev.ExperimentRunning())

    def trial(self, name: str, *values: float, outcome: type[ev.Event] | None = None) -> None:
        index = self.state.next_trial_index
        self.ctl(ev.TrialCreated(trial=name, index=index, request=1, assignment={"lr": "0.05"}, run_spec={}))
        self.fact(ev.TrialStarted(trial=name))
        for step, v in enumerate(values):
            self.fact(ev.MetricReported(trial=name, name="loss", value=str(v), step=step))
        if outcome is not None:
            self.fact(outcome(trial=name, observation=[]))  # type: ignore[call-arg]


def with_peers(exp: Experiment) -> Log:
    log = Log(exp)
    # Running averages over the first 2 reports: 1.5 and 3.0 -> median 2.25.
    log.trial("peer-a", 1.0, 2.0, 3.0, outcome=ev.TrialSucceeded)
    log.trial("peer-b", 3.0, 3.0, 3.0, outcome=ev.TrialEarlyStopped)
    return log


def test_worse_than_median_is_early_stopped() -> None:
    log = with_peers(experiment())
    log.trial("t", 4.0, 3.5)
    assert evaluate(log.state, "t") == StopTrial(
        trial="t", reason="EarlyStopped",
        message="Trial is early stopped: objective worse than the median 2.25 at step 2")


def test_better_than_median_keeps_running() -> None:
    log = with_peers(experiment())
    log.trial("t", 4.0, 1.0)
    assert evaluate(log.state, "t") is None


def test_maximize_direction() -> None:
    log = with_peers(experiment("maximize"))
    log.trial("low", 1.0, 2.0)
    log.trial("high", 1.0, 2.5)
    assert evaluate(log.state, "low") is not None
    assert evaluate(log.state, "high") is None


def test_before_start_step_nothing_happens() -> None:
    log = with_peers(experiment())
    log.trial("t", 9.0)
    assert evaluate(log.state, "t") is None


def test_too_few_completed_peers() -> None:
    log = Log(experiment())
    log.trial("peer-a", 1.0, 1.0, outcome=ev.TrialSucceeded)
    log.trial("peer-failed", 0.1, 0.1, outcome=ev.TrialKilled)  # not a completed peer with a result
    log.trial("peer-running", 0.1, 0.1)
    log.trial("t", 9.0, 9.0)
    assert evaluate(log.state, "t") is None
    one = Log(experiment(min_trials="1"))
    one.trial("peer-a", 1.0, 1.0, outcome=ev.TrialSucceeded)
    one.trial("t", 9.0, 9.0)
    assert evaluate(one.state, "t") is not None


def test_no_early_stopping_in_spec() -> None:
    log = with_peers(experiment(early_stopping=False))
    log.trial("t", 40.0, 30.5)
    assert evaluate(log.state, "t") is None


@pytest.mark.parametrize("trial", ["peer-a", "ghost"])
def test_only_running_trials_are_judged(trial: str) -> None:
    log = with_peers(experiment())
    log.trial("t", 40.0, 30.5)
    assert evaluate(log.state, trial) is None


def test_finished_experiment_stops_nothing() -> None:
    log = with_peers(experiment())
    log.trial("t", 40.0, 30.5)
    log.ctl(ev.ExperimentSucceeded(reason="ExperimentGoalReached", message="m"))
    assert evaluate(log.state, "t") is None
