"""The fold of an experiment's events: Katib's buckets, conditions, best trial and status shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from natib.messages import events as ev
from natib.messages import subjects
from natib.messages.spec import Experiment, load_experiment
from natib.messages.state import BUCKETS, ExperimentState

NAME = "fold-exp"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def experiment(objective: str = "minimize", goal: float | None = None, strategy: str | None = None,
               **spec: Any) -> Experiment:
    obj: dict[str, Any] = {"type": objective, "objectiveMetricName": "loss", "additionalMetricNames": ["acc"]}
    if goal is not None:
        obj["goal"] = goal
    if strategy is not None:
        obj["metricStrategies"] = [{"name": "loss", "value": strategy}]
    doc = {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "metadata": {"name": NAME},
        "spec": {
            "objective": obj, "algorithm": {"algorithmName": "random"},
            "parallelTrialCount": 2, "maxTrialCount": 10, "maxFailedTrialCount": 3,
            "parameters": [{"name": "lr", "parameterType": "double",
                            "feasibleSpace": {"min": "0.01", "max": "0.1"}}],
            "trialTemplate": {
                "primaryContainerName": "main",
                "trialParameters": [{"name": "lr", "reference": "lr"}],
                "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                    "containers": [{"name": "main", "image": "python", "args": ["--lr=${trialParameters.lr}"]}],
                }}}},
            },
            **spec,
        },
    }
    return load_experiment(yaml.safe_dump(doc))


class Log:
    """Applies events to a state with increasing sequence numbers and the subjects actors write them on."""

    def __init__(self, exp: Experiment | None = None, *, created: bool = True) -> None:
        self.state = ExperimentState(NAME)
        self.seq = 0
        if created:
            self.ctl(ev.ExperimentCreated(experiment=exp or experiment(), uid="uid-1", seed=1))
            self.ctl(ev.ExperimentRunning())

    def at(self, seq: int) -> datetime:
        return T0 + timedelta(seconds=seq)

    def apply(self, subject: str, event: ev.Event) -> None:
        self.seq += 1
        self.state.apply(self.seq, subject, self.at(self.seq), event)

    def ctl(self, event: ev.Event) -> None:
        self.apply(subjects.controller_event(NAME, ev.event_type(event)), event)

    def fact(self, event: ev.Event) -> None:
        self.apply(subjects.trial_event(NAME, event.trial, ev.event_type(event)), event)  # type: ignore[attr-defined]

    def trial(self, name: str, lr: str = "0.05", *, start: bool = True) -> str:
        """Request, suggest and create one trial (and start it)."""
        request = len(self.state.requests) + 1
        self.ctl(ev.SuggestionRequested(request=request, count=1))
        self.apply(subjects.suggestion_event(NAME, request),
                   ev.TrialsSuggested(request=request, algorithm="random", as_of=self.seq, assignments=[{"lr": lr}]))
        self.ctl(ev.TrialCreated(trial=name, index=self.state.next_trial_index, request=request,
                                 assignment={"lr": lr}, run_spec={"kind": "Job"}))
        if start:
            self.fact(ev.TrialStarted(trial=name))
        return name

    def metrics(self, name: str, *values: str, metric: str = "loss", attempt: int = 1) -> None:
        for v in values:
            step = len(self.state.trials[name].metric_logs)
            self.fact(ev.MetricReported(trial=name, name=metric, value=v, step=step, attempt=attempt))

    def succeed(self, name: str, *values: str) -> None:
        self.metrics(name, *values)
        self.fact(ev.TrialSucceeded(trial=name, observation=[]))


def cond(state: ExperimentState, type_: str) -> tuple[str, str, str] | None:
    for c in state.conditions:
        if c.type == type_:
            return c.status, c.reason, c.message
    return None


# -- buckets and counts ------------------------------------------------------------------------------


def all_buckets() -> Log:
    log = Log()
    log.succeed(log.trial("t-ok"), "0.5", "0.3")
    log.trial("t-fail")
    log.fact(ev.TrialFailed(trial="t-fail", message="Trial has failed: exit code 1", exit_code=1))
    log.trial("t-killed")
    log.metrics("t-killed", "0.9")
    log.fact(ev.TrialKilled(trial="t-killed"))
    log.trial("t-es")
    log.metrics("t-es", "0.8")
    log.fact(ev.TrialEarlyStopped(trial="t-es"))
    log.trial("t-mu")
    log.fact(ev.TrialMetricsUnavailable(trial="t-mu"))
    log.trial("t-run")
    log.trial("t-pend", start=False)
    return log


def test_counts_put_each_trial_in_one_bucket() -> None:
    s = all_buckets().state
    assert tuple(BUCKETS) == ("Killed", "Failed", "Succeeded", "EarlyStopped", "Running", "MetricsUnavailable",
                              "Pending")
    assert s.counts() == dict.fromkeys(BUCKETS, 1)
    assert s.active() == 2 and s.completed_count() == 5
    assert s.failed_count() == 2  # Failed plus MetricsUnavailable, as Katib counts against maxFailedTrialCount


def test_katib_status_spells_keys_as_katib_does() -> None:
    status = all_buckets().state.katib_status()
    assert {k: status[k] for k in status if k.startswith("trial")} == {
        "trials": 7, "trialsSucceeded": 1, "trialsFailed": 1, "trialsKilled": 1, "trialsPending": 1,
        "trialsRunning": 1, "trialsEarlyStopped": 1, "trialMetricsUnavailable": 1,
    }
    assert status["succeededTrialList"] == ["t-ok"]
    assert status["failedTrialList"] == ["t-fail"]
    assert status["killedTrialList"] == ["t-killed"]
    assert status["earlyStoppedTrialList"] == ["t-es"]
    assert status["metricsUnavailableTrialList"] == ["t-mu"]
    assert status["runningTrialList"] == ["t-run"]
    assert status["pendingTrialList"] == ["t-pend"]
    assert status["startTime"] == "2024-05-01T12:00:01Z"
    assert "completionTime" not in status
    # Best (minimize, strategy min): t-ok reached 0.3; t-es (0.8) and t-killed (0.9) are worse.
    assert status["currentOptimalTrial"] == {
        "bestTrialName": "t-ok",
        "parameterAssignments": [{"name": "lr", "value": "0.05"}],
        "observation": {"metrics": [{"name": "loss", "min": "0.3", "max": "0.5", "latest": "0.3"}]},
    }
    for c in status["conditions"]:  # type: ignore[attr-defined]
        assert set(c) == {"type", "status", "reason", "message", "lastUpdateTime", "lastTransitionTime"}


def test_empty_status_has_an_empty_optimal_trial_and_no_zero_counts() -> None:
    status = Log().state.katib_status()
    assert status["currentOptimalTrial"] == {"bestTrialName": "", "parameterAssignments": [],
                                             "observation": {"metrics": []}}
    assert not [k for k in status if k.startswith("trial") or k.endswith("TrialList")]


# -- conditions ----------------------------------------------------------------------------------------


def test_created_running_succeeded_conditions() -> None:
    log = Log(created=False)
    log.ctl(ev.ExperimentCreated(experiment=experiment(), uid="uid-1", seed=1))
    assert log.state.phase == "Created"
    assert cond(log.state, "Created") == ("True", "ExperimentCreated", "Experiment is created")
    log.ctl(ev.ExperimentRunning())
    assert log.state.phase == "Running"
    assert cond(log.state, "Running") == ("True", "ExperimentRunning", "Experiment is running")
    log.ctl(ev.ExperimentSucceeded(reason="ExperimentMaxTrialsReached",
                                   message="Experiment has succeeded because max trial count has reached"))
    s = log.state
    assert s.phase == "Succeeded" and s.is_finished() and s.completed == log.at(3)
    assert cond(s, "Running") == ("False", "ExperimentRunning", "Experiment is running")
    assert cond(s, "Succeeded") == ("True", "ExperimentMaxTrialsReached",
                                    "Experiment has succeeded because max trial count has reached")
    running = next(c for c in s.conditions if c.type == "Running")
    assert running.last_transition_time == log.at(3)
    assert s.katib_status()["completionTime"] == "2024-05-01T12:00:03Z"
    assert s.condition() is not None and s.condition().type == "Succeeded"  # type: ignore[union-attr]


def test_failed_condition_uses_reason_experiment_failed() -> None:
    log = Log()
    log.ctl(ev.ExperimentFailed(message="Experiment has failed because max failed count has reached"))
    assert log.state.phase == "Failed"
    assert cond(log.state, "Failed") == ("True", "ExperimentFailed",
                                         "Experiment has failed because max failed count has reached")
    assert cond(log.state, "Running")[0] == "False"  # type: ignore[index]


def test_restart_removes_succeeded_and_sets_restarting() -> None:
    log = Log()
    log.ctl(ev.ExperimentSucceeded(reason="ExperimentMaxTrialsReached", message="m"))
    log.ctl(ev.BudgetChanged(max_trial_count=20))
    log.ctl(ev.ExperimentRunning())
    s = log.state
    assert s.phase == "Running" and s.completed is None and not s.is_finished()
    assert cond(s, "Succeeded") is None
    assert cond(s, "Restarting") == ("True", "ExperimentRestarting", "Experiment is restarted")
    assert cond(s, "Running") == ("True", "ExperimentRunning", "Experiment is running")
    assert s.experiment is not None and s.experiment.spec.max_trial_count == 20
    assert s.experiment.spec.parallel_trial_count == 2
    log.ctl(ev.ExperimentSucceeded(reason="ExperimentMaxTrialsReached", message="m"))
    assert cond(log.state, "Restarting") is None


def test_trial_conditions_follow_katib() -> None:
    log = Log()
    log.succeed(log.trial("t1"), "0.4")
    t = log.state.trials["t1"]
    assert [(c.type, c.status, c.reason) for c in t.conditions] == [
        ("Created", "True", "TrialCreated"), ("Running", "False", "TrialRunning"),
        ("Succeeded", "True", "TrialSucceeded"),
    ]
    trial = log.state.trial_status(t)
    assert trial["kind"] == "Trial" and trial["metadata"]["labels"]["katib.kubeflow.org/experiment"] == NAME  # type: ignore[index]
    assert set(trial["status"]) >= {"conditions", "observation", "startTime", "completionTime"}  # type: ignore[arg-type]


# -- best trial -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "values", "best"),
    [
        ("minimize", ["0.5", "0.2", "0.9", "0.2"], "t1"),
        ("maximize", ["0.5", "0.9", "0.1", "0.9"], "t1"),
        ("minimize", ["0.2", "0.2"], "t0"),  # ties: the first trial wins
        ("maximize", ["3", "1", "3"], "t0"),
    ],
)
def test_best_trial_strict_comparison(objective: str, values: list[str], best: str) -> None:
    log = Log(experiment(objective))
    for i, v in enumerate(values):
        log.succeed(log.trial(f"t{i}"), v)
    assert log.state.best_trial().name == best  # type: ignore[union-attr]


def test_string_objective_latest_such_trial_wins() -> None:
    log = Log(experiment("maximize", strategy="latest"))
    log.succeed(log.trial("t0"), "0.7")
    log.succeed(log.trial("t1"), "Genotype(normal=[a])")
    log.succeed(log.trial("t2"), "Genotype(normal=[b])")
    assert log.state.best_trial().name == "t2"  # type: ignore[union-attr]
    assert log.state.objective_of(log.state.trials["t2"]) == "Genotype(normal=[b])"


@pytest.mark.parametrize(
    ("objective", "strategy", "best", "value"),
    [
        ("minimize", "min", "t0", "0.1"),  # t0 dipped to 0.1 before ending at 0.9
        ("minimize", "latest", "t1", "0.5"),
        ("maximize", "max", "t0", "0.9"),
        ("maximize", "latest", "t0", "0.9"),
        ("minimize", "max", "t1", "0.5"),
    ],
)
def test_metric_strategies(objective: str, strategy: str, best: str, value: str) -> None:
    log = Log(experiment(objective, strategy=strategy))
    log.succeed(log.trial("t0"), "0.3", "0.1", "0.9")
    log.succeed(log.trial("t1"), "0.5", "0.5")
    s = log.state
    assert s.best_trial().name == best  # type: ignore[union-attr]
    assert s.objective_of(s.trials[best]) == value


def test_unavailable_objective_is_skipped() -> None:
    log = Log()
    log.trial("t0")
    log.metrics("t0", "0.4", metric="acc")
    log.fact(ev.TrialSucceeded(trial="t0", observation=[ev.Metric(name="loss"), ev.Metric(name="acc",
                                                                                          latest="0.4")]))
    assert log.state.best_trial() is None
    log.succeed(log.trial("t1"), "0.7")
    assert log.state.best_trial().name == "t1"  # type: ignore[union-attr]


def test_outcome_observation_overrides_reported_values() -> None:
    log = Log()
    log.trial("t0")
    log.metrics("t0", "0.9")
    log.fact(ev.TrialSucceeded(trial="t0", observation=[ev.Metric(name="loss", min="0.2", max="0.9",
                                                                   latest="0.2")]))
    assert log.state.objective_of(log.state.trials["t0"]) == "0.2"


# -- sequence, unknown trials, attempts -------------------------------------------------------------------


def test_duplicate_and_older_sequences_are_ignored() -> None:
    log = Log()
    name = log.trial("t0")
    log.state.apply(log.seq, subjects.trial_event(NAME, name, "trial.succeeded"), T0,
                    ev.TrialSucceeded(trial=name, observation=[]))
    log.state.apply(2, subjects.trial_event(NAME, name, "trial.failed"), T0, ev.TrialFailed(trial=name, message="x"))
    assert log.state.trials[name].phase == "Running"
    assert log.state.last_seq == log.seq and log.state.events_applied == log.seq


def test_controller_sequence_tracks_only_controller_subjects() -> None:
    log = Log()
    log.trial("t0")  # ... ctl trial-created, then trial started on a trial subject
    assert log.state.last_seq == log.seq
    assert log.state.last_controller_seq == log.seq - 1


def test_events_for_unknown_trials_are_ignored() -> None:
    log = Log()
    log.fact(ev.TrialStarted(trial="ghost"))
    log.fact(ev.MetricReported(trial="ghost", name="loss", value="1", step=0))
    log.fact(ev.TrialSucceeded(trial="ghost", observation=[]))
    assert log.state.trials == {}


def test_events_of_a_purged_experiment_are_ignored() -> None:
    log = Log(created=False)
    log.ctl(ev.ExperimentRunning())
    log.ctl(ev.TrialCreated(trial="t0", index=0, request=1, assignment={}, run_spec={}))
    log.fact(ev.TrialKilled(trial="t0"))
    assert log.state.experiment is None and log.state.trials == {} and log.state.phase == "None"
    assert log.state.katib_status()["currentOptimalTrial"]["bestTrialName"] == ""  # type: ignore[index]


def test_deletion_marks_the_experiment_deleted() -> None:
    log = Log()
    log.trial("t0")
    log.ctl(ev.ExperimentDeleted())
    log.fact(ev.TrialKilled(trial="t0", message="Experiment was deleted"))
    assert log.state.deleted
    assert log.state.trials["t0"].phase == "Killed"


def test_terminal_trials_ignore_later_facts() -> None:
    log = Log()
    log.succeed(log.trial("t0"), "0.4")
    log.fact(ev.TrialFailed(trial="t0", message="late"))
    log.fact(ev.TrialStarted(trial="t0", attempt=2))
    log.metrics("t0", "0.1")
    t = log.state.trials["t0"]
    assert t.phase == "Succeeded" and [m.value for m in t.metric_logs] == ["0.4"]


def test_new_attempt_resets_metrics_and_drops_old_attempt_reports() -> None:
    log = Log()
    log.trial("t0")
    log.metrics("t0", "0.1", "0.2")
    log.fact(ev.TrialStarted(trial="t0", attempt=2))
    t = log.state.trials["t0"]
    assert t.attempt == 2 and t.metric_logs == []
    log.metrics("t0", "0.05", attempt=1)  # a late report of the first attempt
    log.metrics("t0", "0.6", attempt=2)
    log.fact(ev.TrialStarted(trial="t0", attempt=1))  # a stale start does not go back
    assert t.attempt == 2 and [m.value for m in t.metric_logs] == ["0.6"]
    log.fact(ev.TrialSucceeded(trial="t0", observation=[], attempt=2))
    assert log.state.objective_of(t) == "0.6"


def test_pending_assignments_are_consumed_by_trial_creation() -> None:
    log = Log()
    log.ctl(ev.SuggestionRequested(request=1, count=2))
    assert log.state.outstanding_request() is not None
    log.apply(subjects.suggestion_event(NAME, 1), ev.TrialsSuggested(
        request=1, algorithm="random", as_of=2, assignments=[{"lr": "0.01"}, {"lr": "0.02"}],
        labels=[{"g": "0"}], exhausted=True))
    # A repeated answer to the same request adds nothing.
    log.apply(subjects.suggestion_event(NAME, 1), ev.TrialsSuggested(
        request=1, algorithm="random", as_of=2, assignments=[{"lr": "0.03"}]))
    s = log.state
    assert s.outstanding_request() is None and s.exhausted()
    assert s.pending_assignments == [(1, {"lr": "0.01"}, {"g": "0"}), (1, {"lr": "0.02"}, {})]
    log.ctl(ev.TrialCreated(trial="t1", index=0, request=1, assignment={"lr": "0.02"}, run_spec={}))
    assert s.pending_assignments == [(1, {"lr": "0.01"}, {"g": "0"})]
    assert s.next_trial_index == 1


def test_suggestion_failure_is_recorded() -> None:
    log = Log()
    log.ctl(ev.SuggestionRequested(request=1, count=2))
    log.apply(subjects.suggestion_event(NAME, 1), ev.SuggestionFailed(request=1, message="boom"))
    assert log.state.suggestion_failure() == "boom" and log.state.outstanding_request() is None


# -- algorithm history and goal --------------------------------------------------------------------------


def test_algorithm_history_statuses_and_objectives() -> None:
    history = all_buckets().state.algorithm_history()
    assert [(h.name, h.status, h.objective) for h in history] == [
        ("t-ok", "succeeded", 0.3),
        ("t-fail", "failed", None),
        ("t-killed", "killed", None),
        ("t-es", "early_stopped", 0.8),
        ("t-mu", "metrics_unavailable", None),
        ("t-run", "running", None),
        ("t-pend", "pending", None),
    ]
    assert dict(history[0].assignment) == {"lr": "0.05"}


@pytest.mark.parametrize(
    ("objective", "goal", "values", "reached"),
    [
        ("minimize", 0.1, ["0.5", "0.2"], False),
        ("minimize", 0.1, ["0.5", "0.1"], True),  # equal to the goal counts
        ("minimize", 0.1, ["0.05"], True),
        ("maximize", 0.9, ["0.5", "0.89"], False),
        ("maximize", 0.9, ["0.5", "0.9"], True),
        ("maximize", 0.9, ["0.95"], True),
    ],
)
def test_goal_reached_both_directions(objective: str, goal: float, values: list[str], reached: bool) -> None:
    log = Log(experiment(objective, goal=goal))
    for i, v in enumerate(values):
        log.succeed(log.trial(f"t{i}"), v)
    assert log.state.goal_reached() is reached


def test_goal_needs_a_completed_trial_and_a_goal() -> None:
    log = Log(experiment("maximize", goal=0.9))
    log.trial("t0")
    log.metrics("t0", "0.99")  # still running: best so far, but not a reached goal
    assert log.state.best_trial().name == "t0"  # type: ignore[union-attr]
    assert not log.state.goal_reached()
    no_goal = Log(experiment("maximize"))
    no_goal.succeed(no_goal.trial("t0"), "0.99")
    assert not no_goal.state.goal_reached()
