"""The controller's pure decision function, driven by hand-built event logs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import msgspec
import yaml

from natib.actors.experiment import MSG_MAX_FAILED, MSG_SUGGESTION_END, Decision, decide, resync_commands, trial_name
from natib.messages import events as ev
from natib.messages import subjects
from natib.messages.commands import LaunchTrial, StopTrial, SuggestTrials
from natib.messages.spec import Experiment, load_experiment
from natib.messages.state import ExperimentState
from tests.eventlog import EventLog

NAME = "decide-exp"
UID = "uid-42"
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def experiment(parallel: int = 2, max_trials: int | None = 4, max_failed: int | None = 3,
               goal: float | None = None, args: str = "--lr=${trialParameters.lr}") -> Experiment:
    objective: dict[str, Any] = {"type": "minimize", "objectiveMetricName": "loss"}
    if goal is not None:
        objective["goal"] = goal
    spec: dict[str, Any] = {
        "objective": objective, "algorithm": {"algorithmName": "random"}, "parallelTrialCount": parallel,
        "parameters": [{"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.1"}}],
        "trialTemplate": {
            "primaryContainerName": "main",
            "trialParameters": [{"name": "lr", "reference": "lr"}],
            "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                "containers": [{"name": "main", "image": "python", "args": [args]}]}}}},
        },
    }
    if max_trials is not None:
        spec["maxTrialCount"] = max_trials
    if max_failed is not None:
        spec["maxFailedTrialCount"] = max_failed
    doc = {"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "metadata": {"name": NAME}, "spec": spec}
    return load_experiment(yaml.safe_dump(doc))


class Sim(EventLog):
    """Folds events and applies the controller's decisions the way the controller appends them."""

    def __init__(self, exp: Experiment | None = None) -> None:
        super().__init__(NAME, exp or experiment(), uid=UID, seed=3)

    def step(self) -> Decision:
        d = decide(self.state)
        for e in d.events:
            self.ctl(e)
        return d

    def suggest(self, *lrs: str, exhausted: bool = False) -> None:
        req = self.state.outstanding_request()
        assert req is not None
        self.apply(subjects.suggestion_event(NAME, req.request), ev.TrialsSuggested(
            request=req.request, algorithm="random", as_of=self.seq, assignments=[{"lr": x} for x in lrs],
            exhausted=exhausted))

    def running(self) -> list[str]:
        return [t.name for t in self.state.trials.values() if t.is_active]

    def finish(self, trial: str, loss: str = "0.5", *, fail: bool = False) -> None:
        self.fact(ev.TrialStarted(trial=trial))
        if fail:
            self.fact(ev.TrialFailed(trial=trial, message="Trial has failed: exit code 1", exit_code=1))
        else:
            self.fact(ev.MetricReported(trial=trial, name="loss", value=loss, step=0))
            self.fact(ev.TrialSucceeded(trial=trial, observation=[]))


def started(exp: Experiment | None = None) -> Sim:
    sim = Sim(exp)
    assert sim.step().events == [ev.ExperimentRunning()]
    return sim


def test_first_decision_is_running_then_a_request_for_parallel_count() -> None:
    sim = Sim(experiment(parallel=3, max_trials=10))
    d = sim.step()
    assert d.events == [ev.ExperimentRunning()] and d.commands == []
    d = sim.step()
    assert d.events == [ev.SuggestionRequested(request=1, count=3)] and d.commands == []
    assert decide(sim.state).events == []  # waiting for the answer


def test_request_is_capped_by_max_trial_count() -> None:
    sim = started(experiment(parallel=5, max_trials=2))
    assert sim.step().events == [ev.SuggestionRequested(request=1, count=2)]


def test_suggestions_become_created_trials_and_launch_commands() -> None:
    sim = started()
    sim.step()
    sim.suggest("0.01", "0.02")
    d = sim.step()
    names = [trial_name(NAME, UID, 0), trial_name(NAME, UID, 1)]
    assert [type(e) for e in d.events] == [ev.TrialCreated, ev.TrialCreated]
    assert [(e.trial, e.index, e.request, e.assignment) for e in d.events] == [  # type: ignore[attr-defined]
        (names[0], 0, 1, {"lr": "0.01"}), (names[1], 1, 1, {"lr": "0.02"})]
    spec = sim.state.experiment.spec  # type: ignore[union-attr]
    assert [o.command for o in d.commands] == [
        LaunchTrial(trial=n, run_spec=e.run_spec, primary_container_name="main",  # type: ignore[attr-defined]
                    metrics_collector=msgspec.to_builtins(spec.metrics_collector_spec),
                    metric_names=spec.metric_names())
        for n, e in zip(names, d.events, strict=True)
    ]
    assert all(o.actor == "launcher" and o.experiment == NAME for o in d.commands)
    assert [o.msg_id for o in d.commands] == [f"{UID}:launch:{n}" for n in names]
    run_spec = d.events[0].run_spec  # type: ignore[attr-defined]
    assert "--lr=0.01" in str(run_spec)
    assert decide(sim.state).events == [] and sim.running() == names


def test_trial_names_are_deterministic_dns_labels() -> None:
    a = trial_name(NAME, UID, 0)
    assert a == trial_name(NAME, UID, 0)
    assert re.fullmatch(rf"{NAME}-[0-9a-z]{{8}}", a)
    names = {trial_name(NAME, UID, i) for i in range(200)}
    assert len(names) == 200
    assert trial_name(NAME, "other-uid", 0) != a
    for n in list(names)[:20]:
        assert subjects.check_token(n) == n


def test_never_more_active_than_parallel_nor_more_trials_than_max() -> None:
    sim = started(experiment(parallel=2, max_trials=5, max_failed=None))
    for _ in range(60):
        d = sim.step()
        assert sim.state.active() <= 2
        assert len(sim.state.trials) <= 5
        if sim.state.is_finished():
            break
        if sim.state.outstanding_request() is not None:
            req = sim.state.outstanding_request()
            sim.suggest(*[f"0.0{i + 1}" for i in range(req.count)])  # type: ignore[union-attr]
            continue
        if not d.events:
            sim.finish(sim.running()[0], "0.5")
    assert sim.state.is_finished()
    assert sim.state.phase == "Succeeded" and len(sim.state.trials) == 5
    assert next(c for c in sim.state.conditions if c.type == "Succeeded").reason == "ExperimentMaxTrialsReached"


def test_extra_suggestions_wait_for_a_free_slot() -> None:
    sim = started(experiment(parallel=1, max_trials=4))
    sim.step()
    sim.suggest("0.01", "0.02")
    d = sim.step()
    assert len(d.events) == 1 and len(sim.state.pending_assignments) == 1
    assert decide(sim.state).events == []
    sim.finish(sim.running()[0])
    d = sim.step()
    assert [e.assignment for e in d.events] == [{"lr": "0.02"}]  # type: ignore[attr-defined]
    assert d.events[0].index == 1  # type: ignore[attr-defined]


def test_goal_comes_before_max_failed_and_max_trials() -> None:
    sim = started(experiment(parallel=2, max_trials=2, max_failed=1, goal=0.1))
    sim.step()
    sim.suggest("0.01", "0.02")
    sim.step()
    a, b = sim.running()
    sim.finish(a, fail=True)
    sim.finish(b, "0.05")
    d = sim.step()
    assert d.events == [ev.ExperimentSucceeded(
        reason="ExperimentGoalReached", message="Experiment has succeeded because Objective goal has reached")]


def test_max_failed_comes_before_max_trials() -> None:
    sim = started(experiment(parallel=2, max_trials=2, max_failed=1))
    sim.step()
    sim.suggest("0.01", "0.02")
    sim.step()
    a, b = sim.running()
    sim.finish(a, fail=True)
    sim.finish(b, "0.5")
    assert sim.step().events == [ev.ExperimentFailed(message=MSG_MAX_FAILED)]
    assert sim.state.phase == "Failed"


def test_max_failed_zero_fails_on_the_first_failure_only() -> None:
    sim = started(experiment(parallel=2, max_trials=4, max_failed=0))
    sim.step()
    sim.suggest("0.01", "0.02")
    sim.step()
    assert sim.state.phase == "Running" and decide(sim.state).events == []  # 0 failures: not failed yet
    a, b = sim.running()
    sim.finish(a, fail=True)
    d = sim.step()
    assert d.events == [ev.ExperimentFailed(message=MSG_MAX_FAILED)]
    assert [o.command for o in d.commands] == [
        StopTrial(trial=b, reason="Killed", message="Experiment has finished")]
    assert [o.msg_id for o in d.commands] == [f"{UID}:stop:{b}:Killed"]


def test_without_max_failed_failures_never_fail_the_experiment() -> None:
    sim = started(experiment(parallel=1, max_trials=None, max_failed=None))
    for i in range(5):
        sim.step()
        sim.suggest(f"0.0{i + 1}")
        sim.step()
        sim.finish(sim.running()[0], fail=True)
    assert sim.state.phase == "Running" and sim.state.failed_count() == 5


def test_metrics_unavailable_counts_as_failed() -> None:
    sim = started(experiment(parallel=1, max_trials=4, max_failed=1))
    sim.step()
    sim.suggest("0.01")
    sim.step()
    sim.fact(ev.TrialMetricsUnavailable(trial=sim.running()[0]))
    assert sim.step().events == [ev.ExperimentFailed(message=MSG_MAX_FAILED)]


def test_suggestion_failure_fails_the_experiment() -> None:
    sim = started()
    sim.step()
    sim.apply(subjects.suggestion_event(NAME, 1), ev.SuggestionFailed(request=1, message="no more points"))
    d = sim.step()
    assert d.events == [ev.ExperimentFailed(message="Suggestion has failed: no more points")]
    assert next(c for c in sim.state.conditions if c.type == "Failed").reason == "ExperimentFailed"


def test_exhausted_search_succeeds_once_no_trial_is_active() -> None:
    sim = started(experiment(parallel=2, max_trials=10))
    sim.step()
    sim.suggest("0.01", exhausted=True)
    d = sim.step()
    assert [type(e) for e in d.events] == [ev.TrialCreated]  # no further request once exhausted
    assert decide(sim.state).events == []
    sim.finish(sim.running()[0])
    d = sim.step()
    assert d.events == [ev.ExperimentSucceeded(reason="ExperimentSuggestionEndReached", message=MSG_SUGGESTION_END)]
    assert d.commands == []


def test_finish_stops_every_active_trial() -> None:
    sim = started(experiment(parallel=3, max_trials=10, goal=0.1))
    sim.step()
    sim.suggest("0.01", "0.02", "0.03")
    sim.step()
    first, *others = sim.running()
    sim.fact(ev.TrialStarted(trial=others[0]))
    sim.finish(first, "0.01")
    d = sim.step()
    assert isinstance(d.events[0], ev.ExperimentSucceeded)
    assert sorted((o.command.trial, o.command.reason) for o in d.commands) == sorted(  # type: ignore[attr-defined]
        (n, "Killed") for n in others)
    assert all(isinstance(o.command, StopTrial) for o in d.commands)


def test_no_decision_for_finished_or_deleted_experiments() -> None:
    sim = started()
    sim.step()
    sim.ctl(ev.ExperimentDeleted())
    assert decide(sim.state) == Decision()
    done = started()
    done.ctl(ev.ExperimentSucceeded(reason="ExperimentMaxTrialsReached", message="m"))
    assert decide(done.state) == Decision()
    assert decide(ExperimentState(NAME)) == Decision()


def test_template_error_renders_as_created_and_failed() -> None:
    sim = started(experiment(parallel=1, args="--lr=${trialParameters.missing}"))
    sim.step()
    sim.suggest("0.01")
    d = sim.step()
    name = trial_name(NAME, UID, 0)
    assert [type(e) for e in d.events] == [ev.TrialCreated, ev.TrialFailed]
    created, failed = d.events
    assert created.trial == name and created.run_spec == {}  # type: ignore[attr-defined]
    assert failed.trial == name and failed.reason == "TemplateError" and failed.message  # type: ignore[attr-defined]
    assert d.commands == []
    assert sim.state.trials[name].phase == "Failed"


def test_resync_relaunches_active_trials_and_resends_the_request() -> None:
    sim = started(experiment(parallel=2, max_trials=10))
    sim.step()
    request_seq = sim.seq
    sim.suggest("0.01", "0.02")
    sim.step()
    a, b = sim.running()
    sim.fact(ev.TrialStarted(trial=a))
    sim.finish(b)
    assert sim.step().events == [ev.SuggestionRequested(request=2, count=1)]
    out = resync_commands(sim.state)
    assert [o.command for o in out] == [
        LaunchTrial(trial=a, run_spec=sim.state.trials[a].run_spec, primary_container_name="main",
                    metrics_collector=msgspec.to_builtins(sim.state.experiment.spec.metrics_collector_spec),  # type: ignore[union-attr]
                    metric_names=sim.state.metric_names()),
        SuggestTrials(request=2, count=1, as_of=sim.seq),
    ]
    assert out[1].actor == "suggestion" and out[1].msg_id == f"{UID}:suggest:2"
    assert request_seq < sim.seq


def test_resync_after_finish_or_delete_stops_active_trials() -> None:
    sim = started()
    sim.step()
    sim.suggest("0.01", "0.02")
    sim.step()
    names = sim.running()
    sim.ctl(ev.ExperimentSucceeded(reason="ExperimentGoalReached", message="m"))
    assert [(o.command.trial, o.command.reason) for o in resync_commands(sim.state)] == [  # type: ignore[attr-defined]
        (n, "Killed") for n in names]
    sim.ctl(ev.ExperimentDeleted())
    assert [(o.command.trial, o.command.reason) for o in resync_commands(sim.state)] == [  # type: ignore[attr-defined]
        (n, "Deleted") for n in names]
    assert resync_commands(ExperimentState(NAME)) == []


def test_a_short_answer_waits_for_a_completed_trial_before_asking_again() -> None:
    sim = started(experiment(parallel=3, max_trials=10))
    sim.step()
    sim.suggest("0.01")  # one of three: "that is all for now", e.g. a rung waiting for results
    d = sim.step()
    assert [type(e) for e in d.events] == [ev.TrialCreated], "no new request until a trial completes"
    assert sim.step().events == []
    [a] = sim.running()
    sim.finish(a)
    assert sim.step().events == [ev.SuggestionRequested(request=2, count=3)]


def test_an_empty_answer_with_nothing_running_fails_instead_of_looping() -> None:
    sim = started()
    sim.step()
    sim.suggest()
    d = sim.step()
    assert [type(e) for e in d.events] == [ev.ExperimentFailed]
    assert "suggested nothing new while no trial was running" in d.events[0].message  # type: ignore[attr-defined]
