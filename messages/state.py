"""The fold of an experiment's events into its current state: the one source of every status view.

The controller decides from it, the suggestion actor builds algorithm history from it, and the CLI's
``get``, ``describe`` and ``replay`` print it. It is pure: apply the same events, get the same state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from natib.algorithms.space import Trial as AlgorithmTrial
from natib.messages import events as ev
from natib.messages.spec import Experiment

UNAVAILABLE = "unavailable"

#: Katib's trial bucket precedence (status_util.go): a trial is counted in the first bucket it fits.
BUCKETS = ("Killed", "Failed", "Succeeded", "EarlyStopped", "Running", "MetricsUnavailable", "Pending")

_TERMINAL = {
    ev.TrialSucceeded: "Succeeded",
    ev.TrialFailed: "Failed",
    ev.TrialMetricsUnavailable: "MetricsUnavailable",
    ev.TrialKilled: "Killed",
    ev.TrialEarlyStopped: "EarlyStopped",
}

_ALGORITHM_STATUS = {
    "Pending": "pending",
    "Running": "running",
    "Succeeded": "succeeded",
    "Failed": "failed",
    "MetricsUnavailable": "metrics_unavailable",
    "Killed": "killed",
    "EarlyStopped": "early_stopped",
}


def as_float(value: str) -> float | None:
    """A metric value as a finite float, or None for text values such as a DARTS genotype."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass
class Condition:
    """A Katib condition: type, status, reason, message and when it last changed."""

    type: str
    status: str
    reason: str
    message: str
    last_update_time: datetime
    last_transition_time: datetime

    def to_katib(self) -> dict[str, str]:
        """The condition as Katib's status JSON spells it."""
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastUpdateTime": _ts(self.last_update_time),
            "lastTransitionTime": _ts(self.last_transition_time),
        }


def set_condition(conditions: list[Condition], type_: str, status: str, reason: str, message: str,
                  when: datetime) -> None:
    """Set a condition as Katib does: keep the transition time when only the reason changes."""
    for c in conditions:
        if c.type == type_:
            if c.status == status and c.reason == reason:
                return
            if c.status != status:
                c.last_transition_time = when
            c.status, c.reason, c.message, c.last_update_time = status, reason, message, when
            return
    conditions.append(Condition(type_, status, reason, message, when, when))


@dataclass
class MetricLog:
    """One reported value of one metric."""

    name: str
    value: str
    step: int
    timestamp: datetime | None


@dataclass
class TrialState:
    """Everything known about one trial."""

    name: str
    index: int
    request: int
    assignment: dict[str, str]
    run_spec: dict[str, object]
    labels: dict[str, str]
    created: datetime
    phase: str = "Pending"
    attempt: int = 0
    started: datetime | None = None
    completed: datetime | None = None
    message: str = ""
    exit_code: int | None = None
    final_observation: list[ev.Metric] | None = None
    metric_logs: list[MetricLog] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)

    @property
    def is_active(self) -> bool:
        """Pending or running."""
        return self.phase in ("Pending", "Running")

    @property
    def is_completed(self) -> bool:
        """In a terminal state."""
        return not self.is_active

    def observation(self, strategies: dict[str, str], metric_names: list[str]) -> list[ev.Metric]:
        """The observation: the final one when the trial ended, else computed from the values so far."""
        if self.final_observation is not None:
            return self.final_observation
        return observe(self.metric_logs, metric_names)

    def objective_value(self, metric: str, strategy: str, metric_names: list[str]) -> str | None:
        """The objective's value under its strategy (min/max fall back to latest), None if unavailable."""
        for m in self.observation({}, metric_names):
            if m.name != metric:
                continue
            chosen = {"min": m.min, "max": m.max}.get(strategy, m.latest)
            if chosen == UNAVAILABLE:
                chosen = m.latest
            return None if chosen == UNAVAILABLE else chosen
        return None


def observe(logs: list[MetricLog], metric_names: list[str]) -> list[ev.Metric]:
    """Min, max and latest of each metric over its reported values (latest = last reported)."""
    out: list[ev.Metric] = []
    for name in metric_names:
        values = [log for log in logs if log.name == name]
        if not values:
            continue
        numbers = [(f, v.value) for v in values if (f := as_float(v.value)) is not None]
        out.append(ev.Metric(
            name=name,
            min=min(numbers, key=lambda p: p[0])[1] if numbers else UNAVAILABLE,
            max=max(numbers, key=lambda p: p[0])[1] if numbers else UNAVAILABLE,
            latest=values[-1].value,
        ))
    return out


@dataclass
class RequestState:
    """One suggestion request and what came of it."""

    request: int
    count: int
    seq: int = 0
    answered: bool = False
    exhausted: bool = False
    failed: str | None = None
    returned: int = 0
    completed_when_requested: int = 0


@dataclass
class ExperimentState:
    """An experiment as folded from its events, up to stream sequence ``last_seq``."""

    name: str
    last_seq: int = 0
    last_controller_seq: int = 0
    experiment: Experiment | None = None
    uid: str = ""
    seed: int = 0
    source_dir: str | None = None
    created: datetime | None = None
    completed: datetime | None = None
    phase: str = "None"
    deleted: bool = False
    conditions: list[Condition] = field(default_factory=list)
    trials: dict[str, TrialState] = field(default_factory=dict)
    requests: dict[int, RequestState] = field(default_factory=dict)
    pending_assignments: list[tuple[int, dict[str, str], dict[str, str]]] = field(default_factory=list)
    next_trial_index: int = 0
    events_applied: int = 0
    # Running totals, so deciding after each event does not rescan every trial and request.
    phase_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0))
    goal_hit: bool = False
    unanswered: set[int] = field(default_factory=set)
    exhausted_flag: bool = False
    failure: str | None = None

    # -- folding ---------------------------------------------------------------------------

    def apply(self, seq: int, subject: str, when: datetime, event: ev.Event) -> None:
        """Apply one event read at stream sequence ``seq`` (older or repeated sequences are ignored)."""
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        if ".ctl." in subject:
            self.last_controller_seq = seq
        self.events_applied += 1
        if isinstance(event, ev.ExperimentCreated):
            self._created(event, when)
            return
        if self.experiment is None:
            return  # events that outlived a deleted experiment of the same name
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event, when)

    def _created(self, e: ev.ExperimentCreated, when: datetime) -> None:
        self.experiment, self.uid, self.seed, self.source_dir = e.experiment, e.uid, e.seed, e.source_dir
        self.created, self.phase = when, "Created"
        set_condition(self.conditions, "Created", "True", "ExperimentCreated", "Experiment is created", when)

    def _running(self, e: ev.ExperimentRunning, when: datetime) -> None:
        self.phase = "Running"
        self.completed = None
        for c in self.conditions:
            if c.type in ("Succeeded", "Failed") and c.status == "True":
                set_condition(self.conditions, "Restarting", "True", "ExperimentRestarting",
                              "Experiment is restarted", when)
        self.conditions = [c for c in self.conditions if c.type not in ("Succeeded", "Failed")]
        set_condition(self.conditions, "Running", "True", "ExperimentRunning", e.message, when)
        self.conditions = [c for c in self.conditions if c.type != "Restarting"] + [
            c for c in self.conditions if c.type == "Restarting"
        ]

    def _finished(self, e: ev.ExperimentSucceeded | ev.ExperimentFailed, when: datetime) -> None:
        kind = "Succeeded" if isinstance(e, ev.ExperimentSucceeded) else "Failed"
        self.phase, self.completed = kind, when
        self.conditions = [c for c in self.conditions if c.type != "Restarting"]
        set_condition(self.conditions, "Running", "False", "ExperimentRunning", "Experiment is running", when)
        set_condition(self.conditions, kind, "True", e.reason, e.message, when)

    def _deleted(self, e: ev.ExperimentDeleted, when: datetime) -> None:
        self.deleted = True

    def _budget(self, e: ev.BudgetChanged, when: datetime) -> None:
        import msgspec

        assert self.experiment is not None
        spec = msgspec.structs.replace(
            self.experiment.spec,
            max_trial_count=e.max_trial_count if e.max_trial_count is not None else
            self.experiment.spec.max_trial_count,
            parallel_trial_count=e.parallel_trial_count if e.parallel_trial_count is not None else
            self.experiment.spec.parallel_trial_count,
            max_failed_trial_count=e.max_failed_trial_count if e.max_failed_trial_count is not None else
            self.experiment.spec.max_failed_trial_count,
        )
        self.experiment = msgspec.structs.replace(self.experiment, spec=spec)

    def _requested(self, e: ev.SuggestionRequested, when: datetime) -> None:
        self.requests[e.request] = RequestState(e.request, e.count, seq=self.last_seq,
                                                completed_when_requested=self.completed_count())
        self.unanswered.add(e.request)

    def _suggested(self, e: ev.TrialsSuggested, when: datetime) -> None:
        req = self.requests.setdefault(e.request, RequestState(e.request, len(e.assignments)))
        if req.answered:
            return
        req.answered, req.exhausted = True, e.exhausted
        req.returned = len(e.assignments)
        self.unanswered.discard(e.request)
        self.exhausted_flag = self.exhausted_flag or e.exhausted
        for i, assignment in enumerate(e.assignments):
            labels = e.labels[i] if i < len(e.labels) else {}
            self.pending_assignments.append((e.request, dict(assignment), dict(labels)))

    def _suggestion_failed(self, e: ev.SuggestionFailed, when: datetime) -> None:
        req = self.requests.setdefault(e.request, RequestState(e.request, 0))
        req.answered, req.failed = True, e.message
        self.unanswered.discard(e.request)
        self.failure = self.failure or e.message

    def _trial_created(self, e: ev.TrialCreated, when: datetime) -> None:
        if e.trial in self.trials:
            return
        for i, (request, assignment, _labels) in enumerate(self.pending_assignments):
            if request == e.request and assignment == e.assignment:
                del self.pending_assignments[i]
                break
        t = TrialState(e.trial, e.index, e.request, dict(e.assignment), dict(e.run_spec), dict(e.labels), when)
        set_condition(t.conditions, "Created", "True", "TrialCreated", "Trial is created", when)
        self.trials[e.trial] = t
        self.phase_counts["Pending"] += 1
        self.next_trial_index = max(self.next_trial_index, e.index + 1)

    def _trial_started(self, e: ev.TrialStarted, when: datetime) -> None:
        t = self.trials.get(e.trial)
        if t is None or t.is_completed or e.attempt < t.attempt:
            return
        if e.attempt > t.attempt:
            t.metric_logs = []
        self._set_phase(t, "Running")
        t.attempt = e.attempt
        t.started = t.started or when
        set_condition(t.conditions, "Running", "True", "TrialRunning", "Trial is running", when)

    def _metric(self, e: ev.MetricReported, when: datetime) -> None:
        t = self.trials.get(e.trial)
        if t is None or t.is_completed or (t.attempt and e.attempt < t.attempt):
            return
        t.metric_logs.append(MetricLog(e.name, e.value, e.step, e.timestamp))

    def _outcome(self, e: ev.Event, when: datetime) -> None:
        trial_name: str = e.trial  # type: ignore[attr-defined]
        t = self.trials.get(trial_name)
        if t is None or t.is_completed:
            return
        phase = _TERMINAL[type(e)]
        self._set_phase(t, phase)
        t.completed = when
        t.final_observation = list(e.observation) or observe(  # type: ignore[attr-defined]
            t.metric_logs, self.metric_names()
        )
        if phase in ("Succeeded", "EarlyStopped") and not self.goal_hit:
            self.goal_hit = self._meets_goal(t)
        t.message = e.message  # type: ignore[attr-defined]
        t.exit_code = getattr(e, "exit_code", None)
        set_condition(t.conditions, "Running", "False", "TrialRunning", "Trial is running", when)
        reason = getattr(e, "reason", None) if isinstance(e, ev.TrialFailed) else None
        set_condition(t.conditions, phase, "True", reason or f"Trial{phase}", t.message, when)

    def _set_phase(self, t: TrialState, phase: str) -> None:
        self.phase_counts[t.phase] -= 1
        self.phase_counts[phase] += 1
        t.phase = phase

    def _meets_goal(self, t: TrialState) -> bool:
        assert self.experiment is not None
        goal = self.experiment.spec.objective.goal
        raw = self.objective_of(t) if goal is not None else None
        value = as_float(raw) if raw is not None else None
        if goal is None or value is None:
            return False
        return value >= float(goal) if self.experiment.spec.objective.type == "maximize" else value <= float(goal)

    # -- derived views -------------------------------------------------------------------------

    def metric_names(self) -> list[str]:
        """The objective metric first, then the additional metrics."""
        return self.experiment.spec.metric_names() if self.experiment else []

    def counts(self) -> dict[str, int]:
        """Number of trials in each Katib bucket."""
        return dict(self.phase_counts)

    def active(self) -> int:
        """Pending plus running trials."""
        return self.phase_counts["Pending"] + self.phase_counts["Running"]

    def completed_count(self) -> int:
        """Trials in a terminal state (succeeded, failed, killed, early stopped, metrics unavailable)."""
        return len(self.trials) - self.active()

    def failed_count(self) -> int:
        """Failed plus MetricsUnavailable, as Katib counts against maxFailedTrialCount."""
        return self.phase_counts["Failed"] + self.phase_counts["MetricsUnavailable"]

    def outstanding_request(self) -> RequestState | None:
        """A suggestion request still waiting for its answer."""
        return self.requests[min(self.unanswered)] if self.unanswered else None

    def waiting_for_results(self) -> bool:
        """The last answer was short but not final: ask again only once a trial completed after the request.

        The answer was computed from the history as it was when the request was made, so any completion
        since then can change it.
        """
        if not self.requests:
            return False
        last = self.requests[max(self.requests)]
        return (last.answered and not last.exhausted and last.failed is None and last.returned < last.count
                and self.completed_count() == last.completed_when_requested)

    def exhausted(self) -> bool:
        """The algorithm said it has nothing more to suggest."""
        return self.exhausted_flag

    def suggestion_failure(self) -> str | None:
        """The message of a failed suggestion request, if any."""
        return self.failure

    def objective_of(self, t: TrialState) -> str | None:
        """A trial's objective value under the objective metric's strategy."""
        assert self.experiment is not None
        spec = self.experiment.spec
        metric = spec.objective.objective_metric_name
        return t.objective_value(metric, spec.metric_strategy(metric), self.metric_names())

    def best_trial(self) -> TrialState | None:
        """Katib's optimal trial: strict comparison so the first wins ties; text values: the latest such."""
        if self.experiment is None:
            return None
        maximize = self.experiment.spec.objective.type == "maximize"
        best: TrialState | None = None
        best_value: float | None = None
        for t in sorted(self.trials.values(), key=lambda t: t.index):
            if t.phase not in ("Succeeded", "EarlyStopped", "Running", "Killed"):
                continue
            raw = self.objective_of(t)
            if raw is None:
                continue
            value = as_float(raw)
            if value is None:
                best, best_value = t, None
                continue
            if best is None or best_value is None or (value > best_value if maximize else value < best_value):
                best, best_value = t, value
        return best

    def goal_reached(self) -> bool:
        """A succeeded or early-stopped trial reached the objective goal."""
        return self.goal_hit

    def algorithm_history(self) -> list[AlgorithmTrial]:
        """Every trial as an algorithm sees it, in creation order (pending and running included)."""
        out: list[AlgorithmTrial] = []
        for t in sorted(self.trials.values(), key=lambda t: t.index):
            raw = self.objective_of(t) if t.phase in ("Succeeded", "EarlyStopped") else None
            out.append(AlgorithmTrial(
                name=t.name, assignment=dict(t.assignment), status=_ALGORITHM_STATUS[t.phase],  # type: ignore[arg-type]
                objective=as_float(raw) if raw is not None else None, labels=dict(t.labels),
            ))
        return out

    def is_finished(self) -> bool:
        """Succeeded or Failed."""
        return self.phase in ("Succeeded", "Failed")

    # -- Katib-shaped output -------------------------------------------------------------------

    def trial_status(self, t: TrialState) -> dict[str, object]:
        """A trial in the shape of Katib's Trial resource (metadata, spec essentials and status)."""
        status: dict[str, object] = {
            "conditions": [c.to_katib() for c in t.conditions],
            "observation": {"metrics": [_metric_json(m) for m in t.observation({}, self.metric_names())]},
        }
        if t.started:
            status["startTime"] = _ts(t.started)
        if t.completed:
            status["completionTime"] = _ts(t.completed)
        return {
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "Trial",
            "metadata": {"name": t.name, "labels": {"katib.kubeflow.org/experiment": self.name, **t.labels}},
            "spec": {
                "parameterAssignments": [{"name": k, "value": v} for k, v in t.assignment.items()],
                "runSpec": t.run_spec,
            },
            "status": status,
        }

    def katib_status(self) -> dict[str, object]:
        """The experiment status exactly in Katib's shape: conditions, counts, name lists, optimal trial."""
        buckets: dict[str, list[str]] = {b: [] for b in BUCKETS}
        for t in sorted(self.trials.values(), key=lambda t: t.index):
            buckets[t.phase].append(t.name)
        status: dict[str, object] = {"conditions": [c.to_katib() for c in self.conditions]}
        if self.created:
            status["startTime"] = _ts(self.created)
        if self.completed:
            status["completionTime"] = _ts(self.completed)
        best = self.best_trial()
        if best is not None:
            status["currentOptimalTrial"] = {
                "bestTrialName": best.name,
                "parameterAssignments": [{"name": k, "value": v} for k, v in best.assignment.items()],
                "observation": {
                    "metrics": [_metric_json(m) for m in best.observation({}, self.metric_names())]
                },
            }
        else:
            status["currentOptimalTrial"] = {"bestTrialName": "", "parameterAssignments": [],
                                             "observation": {"metrics": []}}
        lists = {
            "Running": "runningTrialList", "Pending": "pendingTrialList", "Failed": "failedTrialList",
            "Succeeded": "succeededTrialList", "Killed": "killedTrialList",
            "EarlyStopped": "earlyStoppedTrialList", "MetricsUnavailable": "metricsUnavailableTrialList",
        }
        for bucket, key in lists.items():
            if buckets[bucket]:
                status[key] = buckets[bucket]
        counts = {
            "trials": len(self.trials), "trialsSucceeded": len(buckets["Succeeded"]),
            "trialsFailed": len(buckets["Failed"]), "trialsKilled": len(buckets["Killed"]),
            "trialsPending": len(buckets["Pending"]), "trialsRunning": len(buckets["Running"]),
            "trialsEarlyStopped": len(buckets["EarlyStopped"]),
            "trialMetricsUnavailable": len(buckets["MetricsUnavailable"]),
        }
        status.update({k: v for k, v in counts.items() if v})
        return status

    def condition(self) -> Condition | None:
        """The most recently changed true condition (what `natib get experiments` shows as STATUS)."""
        true = [c for c in self.conditions if c.status == "True"]
        return max(true, key=lambda c: c.last_update_time) if true else None


_HANDLERS = {
    ev.ExperimentRunning: ExperimentState._running,
    ev.ExperimentSucceeded: ExperimentState._finished,
    ev.ExperimentFailed: ExperimentState._finished,
    ev.ExperimentDeleted: ExperimentState._deleted,
    ev.BudgetChanged: ExperimentState._budget,
    ev.SuggestionRequested: ExperimentState._requested,
    ev.TrialsSuggested: ExperimentState._suggested,
    ev.SuggestionFailed: ExperimentState._suggestion_failed,
    ev.TrialCreated: ExperimentState._trial_created,
    ev.TrialStarted: ExperimentState._trial_started,
    ev.MetricReported: ExperimentState._metric,
    **{t: ExperimentState._outcome for t in _TERMINAL},
}


def _ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _metric_json(m: ev.Metric) -> dict[str, str]:
    return {"name": m.name, "min": m.min, "max": m.max, "latest": m.latest}
