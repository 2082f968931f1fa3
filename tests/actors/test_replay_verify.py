"""``natib replay --verify`` on hand-built event logs: what it reproduces and every difference it must catch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import yaml

from natib.actors.early_stopping import evaluate
from natib.actors.suggestion import suggest
from natib.cli.replay import (
    LoggedEvent,
    SeqMap,
    decode_log,
    rename_subject,
    replay_document,
    rewrite_envelope,
    verify_log,
)
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.commands import SuggestTrials
from natib.messages.spec import Experiment, load_experiment
from natib.messages.state import ExperimentState
from natib.runtime.bus import RawMessage

NAME = "verify-exp"
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def experiment(*, algorithm: str = "random", early_stopping: bool = True,
               parameter: dict[str, Any] | None = None) -> Experiment:
    spec: dict[str, Any] = {
        "objective": {"type": "maximize", "objectiveMetricName": "score"},
        "algorithm": {"algorithmName": algorithm}, "parallelTrialCount": 2, "maxTrialCount": 10,
        "parameters": [parameter or {"name": "lr", "parameterType": "double",
                                     "feasibleSpace": {"min": "0.01", "max": "0.1"}}],
    }
    if early_stopping:
        spec["earlyStopping"] = {"algorithmName": "medianstop", "algorithmSettings": [
            {"name": "min_trials_required", "value": "2"}, {"name": "start_step", "value": "2"}]}
    return load_experiment(yaml.safe_dump({"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
                                           "metadata": {"name": NAME}, "spec": spec}))


class Recorder:
    """Writes a log the way natib's actors would: answers from ``suggest``, stops from ``evaluate``."""

    def __init__(self, exp: Experiment | None = None) -> None:
        self.log: list[LoggedEvent] = []
        self.state = ExperimentState(NAME)
        self.ctl(ev.ExperimentCreated(experiment=exp or experiment(), uid="uid-1", seed=7))
        self.ctl(ev.ExperimentRunning())

    @property
    def seq(self) -> int:
        return len(self.log)

    def add(self, subject: str, event: ev.Event) -> int:
        seq = self.seq + 1
        self.log.append(LoggedEvent(seq, subject, T0 + timedelta(seconds=seq), event))
        self.state.apply(seq, subject, T0 + timedelta(seconds=seq), event)
        return seq

    def ctl(self, event: ev.Event) -> int:
        return self.add(subjects.controller_event(NAME, ev.event_type(event)), event)

    def fact(self, event: ev.Event) -> int:
        return self.add(subjects.trial_event(NAME, event.trial, ev.event_type(event)), event)  # type: ignore[attr-defined]

    def request(self, count: int) -> tuple[int, int]:
        """Record a SuggestionRequested; returns (request number, its sequence = the answer's as_of)."""
        request = len(self.state.requests) + 1
        return request, self.ctl(ev.SuggestionRequested(request=request, count=count))

    def answer(self, request: int, count: int, as_of: int) -> ev.TrialsSuggested | ev.SuggestionFailed:
        """What the suggestion actor computes on the state as it is now."""
        return suggest(self.state, SuggestTrials(request=request, count=count, as_of=as_of))

    def record(self, answer: ev.Event) -> int:
        return self.add(subjects.suggestion_event(NAME, answer.request), answer)  # type: ignore[attr-defined]

    def suggest(self, count: int) -> list[dict[str, str]]:
        request, as_of = self.request(count)
        answer = self.answer(request, count, as_of)
        self.record(answer)
        assert isinstance(answer, ev.TrialsSuggested)
        return answer.assignments

    def create(self, assignment: dict[str, str]) -> str:
        index = self.state.next_trial_index
        name = f"{NAME}-t{index}"
        request = max(self.state.requests)
        self.ctl(ev.TrialCreated(trial=name, index=index, request=request, assignment=assignment, run_spec={}))
        self.fact(ev.TrialStarted(trial=name))
        return name

    def run(self, trial: str, *values: float, obey: bool = True) -> ev.Event | None:
        """Report values; the early stopper's verdict after each one stops the trial when ``obey``."""
        for step, v in enumerate(values):
            self.fact(ev.MetricReported(trial=trial, name="score", value=str(v), step=step))
            stop = evaluate(self.state, trial, step)
            if stop is not None and obey:
                end = ev.TrialEarlyStopped(trial=trial, message=stop.message)
                self.fact(end)
                return end
        return None

    def succeed(self, trial: str) -> int:
        return self.fact(ev.TrialSucceeded(trial=trial, observation=[]))


def good_then_bad() -> tuple[Recorder, str]:
    """Two good trials complete, then a bad one is early stopped."""
    rec = Recorder()
    a, b = rec.suggest(2)
    for assignment in (a, b):
        trial = rec.create(assignment)
        rec.run(trial, 5.0, 6.0, 7.0)
        rec.succeed(trial)
    [c] = rec.suggest(1)
    bad = rec.create(c)
    assert isinstance(rec.run(bad, 0.1, 0.2, 0.3), ev.TrialEarlyStopped)
    return rec, bad


def replace_at(log: list[LoggedEvent], seq: int, event: ev.Event) -> list[LoggedEvent]:
    return [LoggedEvent(x.seq, x.subject, x.time, event) if x.seq == seq else x for x in log]


def test_a_recorded_run_is_reproduced() -> None:
    rec, _bad = good_then_bad()
    report = verify_log(NAME, rec.log)
    assert report.ok, [str(m) for m in report.mismatches]
    assert report.suggestions == 2
    assert report.decisions == 3 + 3 + 2  # every metric report was judged; the bad trial stopped at its 2nd
    assert report.stops == 1 and not report.overtaken and not report.in_flight
    assert report.summary() == "2 suggestions and 8 early-stopping decisions reproduced (1 to stop)"


def test_a_changed_assignment_is_reported_at_its_sequence() -> None:
    rec, _bad = good_then_bad()
    [answer_seq] = [x.seq for x in rec.log if isinstance(x.event, ev.TrialsSuggested) and x.event.request == 2]
    recorded = rec.log[answer_seq - 1].event
    assert isinstance(recorded, ev.TrialsSuggested)
    tampered = msgspec.structs.replace(recorded, assignments=[{"lr": "0.05"}])
    report = verify_log(NAME, replace_at(rec.log, answer_seq, tampered))
    assert not report.ok and report.suggestions == 1
    [m] = report.mismatches
    assert m.seq == answer_seq and "request 2" in m.what
    assert '"lr":"0.05"' in m.recorded and recorded.assignments[0]["lr"] in m.replayed
    assert str(m).startswith(f"seq {answer_seq}: suggestion for request 2")


def test_exhausted_and_labels_are_compared_too() -> None:
    rec, _bad = good_then_bad()
    answers = [x for x in rec.log if isinstance(x.event, ev.TrialsSuggested)]
    first = answers[0].event
    assert isinstance(first, ev.TrialsSuggested)
    for change in ({"exhausted": True}, {"labels": [{"k": "v"}, {}]}):
        report = verify_log(NAME, replace_at(rec.log, answers[0].seq, msgspec.structs.replace(first, **change)))
        assert [m.seq for m in report.mismatches] == [answers[0].seq]


def test_each_suggestion_is_checked_against_the_history_as_of_its_request() -> None:
    # Events land between a request and its answer (a trial is created from an earlier assignment), so
    # the answer must be judged on the state at as_of, not at the answer's own sequence.
    rec = Recorder(experiment(early_stopping=False))
    first, second = rec.suggest(2)
    rec.create(first)
    request, as_of = rec.request(1)
    honest = rec.answer(request, 1, as_of)
    rec.create(second)
    late = rec.answer(request, 1, as_of)  # computed on a history one trial longer
    assert isinstance(honest, ev.TrialsSuggested) and isinstance(late, ev.TrialsSuggested)
    assert honest.assignments != late.assignments
    seq = rec.record(honest)
    assert verify_log(NAME, rec.log).ok
    report = verify_log(NAME, replace_at(rec.log, seq, late))
    assert [m.seq for m in report.mismatches] == [seq]


def test_the_count_asked_is_the_requests_count() -> None:
    rec = Recorder(experiment(early_stopping=False))
    rec.suggest(3)
    requested = rec.log[2]
    assert isinstance(requested.event, ev.SuggestionRequested)
    report = verify_log(NAME, replace_at(rec.log, requested.seq, ev.SuggestionRequested(request=1, count=2)))
    [m] = report.mismatches
    assert m.seq == requested.seq + 1


def test_an_answer_without_its_request_is_a_mismatch() -> None:
    rec = Recorder(experiment(early_stopping=False))
    rec.suggest(1)
    log = [x for x in rec.log if not isinstance(x.event, ev.SuggestionRequested)]
    [m] = verify_log(NAME, log).mismatches
    assert "no SuggestionRequested" in m.replayed


def test_a_failed_suggestion_is_reproduced() -> None:
    # Grid needs a step on a double parameter; the answer is a SuggestionFailed with the algorithm's message.
    rec = Recorder(experiment(algorithm="grid", early_stopping=False))
    request, as_of = rec.request(1)
    failed = rec.answer(request, 1, as_of)
    assert isinstance(failed, ev.SuggestionFailed)
    seq = rec.record(failed)
    report = verify_log(NAME, rec.log)
    assert report.ok and report.suggestions == 1
    other = verify_log(NAME, replace_at(rec.log, seq, ev.SuggestionFailed(request=1, message="something else")))
    assert [m.seq for m in other.mismatches] == [seq]


def test_an_early_stop_without_a_decision_is_a_mismatch() -> None:
    rec = Recorder()
    a, b = rec.suggest(2)
    good = rec.create(a)
    rec.run(good, 5.0, 6.0)
    rec.succeed(good)
    trial = rec.create(b)
    rec.run(trial, 5.0, 6.0)  # only one completed peer: the rule needs two, so it never decides to stop
    end = rec.fact(ev.TrialEarlyStopped(trial=trial, message="Trial is early stopped: by hand"))
    report = verify_log(NAME, rec.log)
    [m] = report.mismatches
    assert m.seq == end and trial in m.what and m.replayed == "no stop decision for this trial"
    assert report.stops == 0


def test_an_early_stop_with_another_reason_is_a_mismatch() -> None:
    rec, bad = good_then_bad()
    end = rec.log[-1]
    assert isinstance(end.event, ev.TrialEarlyStopped) and end.event.trial == bad
    changed = msgspec.structs.replace(end.event, message="Trial is early stopped: objective worse than 42")
    [m] = verify_log(NAME, replace_at(rec.log, end.seq, changed)).mismatches
    assert m.seq == end.seq and "worse than 42" in m.recorded and "decided at seq" in m.replayed


def test_a_stop_overtaken_by_the_trials_own_end_or_still_in_flight_is_not_a_mismatch() -> None:
    rec = Recorder()
    a, b = rec.suggest(2)
    for assignment in (a, b):
        trial = rec.create(assignment)
        rec.run(trial, 5.0, 6.0, 7.0)
        rec.succeed(trial)
    c, d = rec.suggest(2)
    # The trial exited before the stop reached it: its end is Succeeded, as the collector reports it.
    overtaken = rec.create(c)
    assert rec.run(overtaken, 0.1, 0.2, obey=False) is None
    rec.succeed(overtaken)
    # The log ends while the stop is on its way.
    flying = rec.create(d)
    rec.run(flying, 0.1, 0.2, obey=False)
    report = verify_log(NAME, rec.log)
    assert report.ok and report.stops == 0
    assert len(report.overtaken) == 1 and overtaken in report.overtaken[0] and "Succeeded" in report.overtaken[0]
    assert len(report.in_flight) == 1 and flying in report.in_flight[0]
    assert "1 overtaken by the trial's own end" in report.summary()


def test_without_early_stopping_no_decisions_are_judged() -> None:
    rec = Recorder(experiment(early_stopping=False))
    [a] = rec.suggest(1)
    trial = rec.create(a)
    rec.run(trial, 1.0, 2.0, 3.0)
    rec.succeed(trial)
    report = verify_log(NAME, rec.log)
    assert report.ok and report.decisions == 0 and report.suggestions == 1


def test_decode_log_skips_garbage_and_unknown_types_and_reads_the_original_sequence() -> None:
    good = codec.encode(codec.wrap(NAME, ev.ExperimentRunning()))
    unknown = b'{"id":"x","experiment":"e","body":{"type":"from.the.future"},"time":"2024-05-01T00:00:00Z"}'
    raws = [RawMessage("natib.evt.e.ctl.x", b"garbage", 1), RawMessage("natib.evt.e.ctl.x", unknown, 2),
            RawMessage("natib.evt.e.ctl.experiment-running", good, 3, {"Natib-Original-Seq": "17"})]
    [item] = decode_log(raws)
    assert item.seq == 3 and item.original_seq == 17 and isinstance(item.event, ev.ExperimentRunning)


def test_replay_document_holds_the_algorithm_inputs_and_open_requests() -> None:
    rec = Recorder()
    a, _b = rec.suggest(2)
    rec.create(a)
    rec.request(1)
    doc = replay_document(rec.state)
    assert doc["experiment"]["metadata"]["name"] == NAME and doc["experiment"]["metadata"]["uid"] == "uid-1"
    assert doc["experiment"]["status"]["trials"] == 1
    assert [t["metadata"]["name"] for t in doc["trials"]] == [f"{NAME}-t0"]
    alg = doc["algorithm"]
    assert alg["name"] == "random" and alg["seed"] == 7 and alg["settings"] == {}
    assert alg["search_space"][0]["name"] == "lr" and alg["search_space"][0]["max"] == 0.1
    assert alg["history"] == [{"name": f"{NAME}-t0", "assignment": a, "status": "running", "objective": None,
                               "labels": {}}]
    assert len(doc["pending_assignments"]) == 1 and doc["pending_assignments"][0]["request"] == 1
    assert [(r["request"], r["answered"]) for r in doc["requests"]] == [(1, True), (2, False)]
    assert doc["last_seq"] == rec.seq


def test_import_rewrites_as_of_and_renames() -> None:
    seqs = SeqMap()
    for old, new in ((3, 40), (5, 41), (9, 47)):
        seqs.add(old, new)
    # A fold up to the old as_of saw exactly the events exported up to it.
    assert [seqs.translate(x) for x in (1, 3, 4, 5, 8, 9, 12)] == [0, 40, 40, 41, 41, 47, 47]
    envelope = {"id": "i", "experiment": "old", "time": "2024-05-01T00:00:00Z",
                "body": {"type": "suggestion.made", "request": 1, "algorithm": "random", "as_of": 5,
                         "assignments": [{"lr": "0.1"}]}}
    out = rewrite_envelope(envelope, "new", seqs)
    assert out["experiment"] == "new" and out["body"]["as_of"] == 41 and envelope["body"]["as_of"] == 5
    created = codec.encode(codec.wrap("old", ev.ExperimentCreated(experiment=experiment(), uid="u", seed=1)))
    renamed = rewrite_envelope(msgspec.json.decode(created), "new", seqs)
    env = codec.decode(msgspec.json.encode(renamed))
    assert env is not None and isinstance(env.body, ev.ExperimentCreated)
    assert env.experiment == "new" and env.body.experiment.metadata.name == "new"
    metric = "natib.evt.old.trial.old-abc.trial-metric"
    assert rename_subject(metric, "new") == "natib.evt.new.trial.old-abc.trial-metric"
    assert rename_subject("natib.log.old.old-abc.out", "new") == "natib.log.new.old-abc.out"
