"""The replay debugger: ``natib replay`` (state as of any sequence, ``--verify``), ``natib export`` and ``import``.

Every command here is a fold over an experiment's events. ``--verify`` re-runs each recorded suggestion and
early-stopping decision on the history that existed when it was made and reports every difference;
``export``/``import`` move an experiment's log (and optionally its trial output) between installations.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import dataclasses
import json
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from natib import __version__
from natib.actors.early_stopping import evaluate
from natib.actors.experiment import view
from natib.actors.suggestion import suggest
from natib.cli.main import CliError, connect, dump, load_state, print_trials_block, table
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.codec import UndecodableMessage
from natib.messages.commands import SuggestTrials
from natib.messages.spec import SpecError, search_space
from natib.messages.state import ExperimentState
from natib.runtime.bus import Bus, RawMessage, WrongLastSequence
from natib.runtime.settings import Settings
from natib.runtime.store import EventStore

EXPORT_VERSION = 1
ORIGINAL_SEQ_HEADER = "Natib-Original-Seq"

# -- the state document ----------------------------------------------------------------------------------


def replay_document(state: ExperimentState) -> dict[str, Any]:
    """Everything the fold knows: the Katib experiment and trials, the algorithm's inputs, open requests."""
    assert state.experiment is not None
    spec = state.experiment.spec
    algorithm = spec.algorithm
    try:
        space: list[dict[str, Any]] | None = [dataclasses.asdict(p) for p in search_space(spec).parameters]
    except SpecError:
        space = None
    return {
        "experiment": view(state),
        "trials": [state.trial_status(t) for t in sorted(state.trials.values(), key=lambda t: t.index)],
        "algorithm": {
            "name": algorithm.algorithm_name if algorithm else "random",
            "settings": {s.name: s.value for s in (algorithm.algorithm_settings or [])} if algorithm else {},
            "seed": state.seed,
            "search_space": space,
            "history": [dataclasses.asdict(t) for t in state.algorithm_history()],
        },
        "pending_assignments": [{"request": r, "assignment": a, "labels": labels}
                                for r, a, labels in state.pending_assignments],
        "requests": [dataclasses.asdict(r) for r in sorted(state.requests.values(), key=lambda r: r.request)],
        "phase": state.phase,
        "deleted": state.deleted,
        "last_seq": state.last_seq,
        "events_applied": state.events_applied,
    }


def replay_text(state: ExperimentState) -> str:
    """A readable summary of a folded state: conditions, counts, trials, suggestion requests."""
    lines = [f"Experiment:   {state.name} (uid {state.uid})",
             f"As of seq:    {state.last_seq} ({state.events_applied} events applied)",
             f"Phase:        {state.phase}{' (deleted)' if state.deleted else ''}",
             "Conditions:"]
    lines += [f"  {c.type:<11} {c.status:<6} {c.reason:<32} {c.message}" for c in state.conditions] or ["  none"]
    counts = {k: v for k, v in state.counts().items() if v}
    lines.append(f"Counts:       {len(state.trials)} trials"
                 + (": " + ", ".join(f"{v} {k}" for k, v in counts.items()) if counts else ""))
    lines.append(print_trials_block(state))
    lines.append("Requests:")
    rows = []
    for r in sorted(state.requests.values(), key=lambda r: r.request):
        if r.failed is not None:
            answer = f"failed: {r.failed}"
        elif r.answered:
            answer = f"{r.returned} assignments" + (" (exhausted)" if r.exhausted else "")
        else:
            answer = "outstanding"
        rows.append([str(r.request), str(r.seq), str(r.count), answer])
    lines.append(table(rows, ["REQUEST", "SEQ", "COUNT", "ANSWER"]) if rows else "  none")
    if state.pending_assignments:
        lines.append("Pending assignments:")
        lines += [f"  request {r}: " + ", ".join(f"{k}={v}" for k, v in a.items())
                  for r, a, _labels in state.pending_assignments]
    return "\n".join(lines)


# -- verification (pure) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedEvent:
    """One decoded event of an experiment's log with its stream sequence, subject and time."""

    seq: int
    subject: str
    time: datetime
    event: ev.Event
    original_seq: int | None = None


@dataclass(frozen=True)
class Mismatch:
    """A recorded decision that replay does not reproduce."""

    seq: int
    what: str
    recorded: str
    replayed: str
    original_seq: int | None = None

    def __str__(self) -> str:
        where = f"seq {self.seq}" + (f" (exported seq {self.original_seq})" if self.original_seq is not None else "")
        return f"{where}: {self.what}\n  recorded: {self.recorded}\n  replay:   {self.replayed}"

    def to_json(self) -> dict[str, Any]:
        """The mismatch as a JSON object."""
        return dataclasses.asdict(self)


@dataclass
class VerifyReport:
    """What ``verify_log`` checked and every difference it found."""

    suggestions: int = 0
    decisions: int = 0
    stops: int = 0
    overtaken: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every recorded decision was reproduced."""
        return not self.mismatches

    def summary(self) -> str:
        """One line: how many suggestions and early-stopping decisions were reproduced."""
        extra = [f"{self.stops} to stop"]
        if self.overtaken:
            extra.append(f"{len(self.overtaken)} overtaken by the trial's own end")
        if self.in_flight:
            extra.append(f"{len(self.in_flight)} not yet carried out")
        return (f"{self.suggestions} suggestions and {self.decisions} early-stopping decisions reproduced"
                f" ({', '.join(extra)})")

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return {"ok": self.ok, "suggestions": self.suggestions, "early_stopping_decisions": self.decisions,
                "stops": self.stops, "overtaken": self.overtaken, "in_flight": self.in_flight,
                "mismatches": [m.to_json() for m in self.mismatches]}


def _answer_summary(answer: ev.TrialsSuggested | ev.SuggestionFailed) -> str:
    if isinstance(answer, ev.SuggestionFailed):
        return f"failed: {answer.message}"
    return json.dumps({"algorithm": answer.algorithm, "assignments": answer.assignments,
                       "labels": answer.labels, "exhausted": answer.exhausted}, separators=(",", ":"))


def _same_answer(recorded: ev.TrialsSuggested | ev.SuggestionFailed,
                 replayed: ev.TrialsSuggested | ev.SuggestionFailed) -> bool:
    if isinstance(recorded, ev.SuggestionFailed) or isinstance(replayed, ev.SuggestionFailed):
        return (isinstance(recorded, ev.SuggestionFailed) and isinstance(replayed, ev.SuggestionFailed)
                and recorded.message == replayed.message)
    return (recorded.assignments == replayed.assignments and recorded.labels == replayed.labels
            and recorded.exhausted == replayed.exhausted and recorded.algorithm == replayed.algorithm)


class _Verifier:
    """One pass over a log: folds a single state and runs each check when the state is "as of" its point."""

    def __init__(self, name: str, log: Sequence[LoggedEvent]) -> None:
        self.log = log
        self.state = ExperimentState(name)
        self.report = VerifyReport()
        self.requests: dict[int, tuple[int, int]] = {}
        self.answers: dict[int, list[LoggedEvent]] = {}
        # trial -> [(seq of the metric report, StopTrial message)]
        self.stops: dict[str, list[tuple[int, str]]] = {}
        # trial -> (the event that ended it, phase, message)
        self.ends: dict[str, tuple[LoggedEvent, str, str]] = {}

    def run(self) -> VerifyReport:
        self._index_answers()
        points = sorted(self.answers)
        i = 0
        for item in self.log:
            while i < len(points) and points[i] < item.seq:
                self._check_suggestions(points[i])
                i += 1
            self._apply(item)
        for point in points[i:]:
            self._check_suggestions(point)
        self._check_stops()
        return self.report

    def _index_answers(self) -> None:
        for item in self.log:
            e = item.event
            if isinstance(e, ev.SuggestionRequested):
                self.requests.setdefault(e.request, (item.seq, e.count))
        for item in self.log:
            e = item.event
            if isinstance(e, ev.TrialsSuggested):
                point = e.as_of
            elif isinstance(e, ev.SuggestionFailed):
                # A failure carries no as_of: the controller asks as of its request's own sequence.
                point = self.requests.get(e.request, (item.seq - 1, 0))[0]
            else:
                continue
            self.answers.setdefault(point, []).append(item)

    def _apply(self, item: LoggedEvent) -> None:
        e = item.event
        trial: str = getattr(e, "trial", "")
        before = self.state.trials[trial].phase if trial in self.state.trials else None
        self.state.apply(item.seq, item.subject, item.time, e)
        if isinstance(e, ev.MetricReported):
            self._check_metric(item, e)
        elif isinstance(e, ev.TRIAL_OUTCOMES) and trial in self.state.trials:
            t = self.state.trials[trial]
            if before in ("Pending", "Running") and t.is_completed:
                self.ends[trial] = (item, t.phase, t.message)

    def _mismatch(self, item: LoggedEvent, what: str, recorded: str, replayed: str) -> None:
        self.report.mismatches.append(Mismatch(item.seq, what, recorded, replayed, item.original_seq))

    def _check_suggestions(self, point: int) -> None:
        state = self.state
        for item in self.answers[point]:
            recorded = item.event
            assert isinstance(recorded, ev.TrialsSuggested | ev.SuggestionFailed)
            what = f"suggestion for request {recorded.request} (as of seq {point})"
            requested = self.requests.get(recorded.request)
            if requested is None:
                self._mismatch(item, what, _answer_summary(recorded),
                               f"no SuggestionRequested for request {recorded.request}")
                continue
            if state.experiment is None:
                self._mismatch(item, what, _answer_summary(recorded), f"no experiment as of seq {point}")
                continue
            try:
                replayed = suggest(state, SuggestTrials(request=recorded.request, count=requested[1], as_of=point))
            except Exception as exc:
                self._mismatch(item, what, _answer_summary(recorded), f"raised {exc!r}")
                continue
            if _same_answer(recorded, replayed):
                self.report.suggestions += 1
            else:
                self._mismatch(item, what, _answer_summary(recorded), _answer_summary(replayed))

    def _check_metric(self, item: LoggedEvent, e: ev.MetricReported) -> None:
        exp = self.state.experiment
        if exp is None or exp.spec.early_stopping is None:
            return
        self.report.decisions += 1
        stop = evaluate(self.state, e.trial, e.step)
        if stop is not None:
            self.stops.setdefault(e.trial, []).append((item.seq, stop.message))

    def _check_stops(self) -> None:
        for trial, decisions in self.stops.items():
            first = decisions[0][0]
            end = self.ends.get(trial)
            if end is None:
                self.report.in_flight.append(f"seq {first}: stop {trial} (still {self.state.trials[trial].phase})")
            elif end[1] == "EarlyStopped":
                self.report.stops += 1
            else:
                self.report.overtaken.append(f"seq {first}: stop {trial}; it ended {end[1]} at seq {end[0].seq}")
        for trial, (item, phase, message) in self.ends.items():
            if phase != "EarlyStopped":
                continue
            decisions = self.stops.get(trial, [])
            what = f"trial {trial} early stopped"
            if not decisions:
                self._mismatch(item, what, message, "no stop decision for this trial")
            elif message not in {m for _s, m in decisions}:
                first_seq, first_message = decisions[0]
                self._mismatch(item, what, message, f"{first_message} (decided at seq {first_seq})")


def verify_log(name: str, log: Sequence[LoggedEvent]) -> VerifyReport:
    """Re-run every suggestion and early-stopping decision of a log on the history it was made from (pure).

    The log is folded once, in order; each check runs on the live state at the moment it holds exactly the
    events up to the check's sequence: a suggestion at its ``as_of``, an early-stopping evaluation right
    after the metric report it judged.
    """
    return _Verifier(name, log).run()


def decode_log(raws: Iterable[RawMessage]) -> list[LoggedEvent]:
    """The decodable events among stored messages, in order (unknown or garbage messages are skipped)."""
    out: list[LoggedEvent] = []
    for raw in raws:
        try:
            env = codec.decode(raw.data)
        except UndecodableMessage:
            continue
        if env is not None and isinstance(env.body, ev.Event):
            original = raw.headers.get(ORIGINAL_SEQ_HEADER, "")
            out.append(LoggedEvent(raw.seq, raw.subject, env.time, env.body,
                                   int(original) if original.isdigit() else None))
    return out


# -- replay ----------------------------------------------------------------------------------------------


def experiment_name(value: str) -> str:
    """``value`` if it is a legal experiment name, else a CliError saying why."""
    try:
        return subjects.check_token(value, "experiment")
    except ValueError as exc:
        raise CliError(str(exc)) from exc


async def _read_all(bus: Bus, stream: str, subject: str, until: int | None = None) -> list[RawMessage]:
    return [raw async for raw in bus.read(stream, subject, until_seq=until)]


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Print an experiment's state folded up to a sequence, or verify every recorded decision."""
    experiment_name(args.experiment)
    bus = await connect(settings)
    try:
        if args.verify:
            raws = await _read_all(bus, subjects.EVENTS_STREAM, subjects.experiment_events(args.experiment),
                                   args.until)
            if not raws:
                raise CliError(f'experiments.kubeflow.org "{args.experiment}" not found')
        elif args.until is None:
            state = await load_state(bus, args.experiment)
        else:
            state = await EventStore(bus).load(args.experiment, until_seq=args.until)
            if state.experiment is None:
                raise CliError(f'experiments.kubeflow.org "{args.experiment}" did not exist at seq {args.until}')
    finally:
        await bus.close()
    if args.verify:
        report = verify_log(args.experiment, decode_log(raws))
        if args.output in ("json", "yaml"):
            print(dump(report.to_json(), args.output))
        else:
            for m in report.mismatches:
                print(m)
            for note in report.overtaken + report.in_flight:
                print(f"note: {note}")
            if report.ok:
                print(report.summary())
            else:
                n = len(report.mismatches)
                print(f"{n} mismatch{'es' if n != 1 else ''}; {report.summary()}")
        return 0 if report.ok else 1
    if args.output in ("json", "yaml"):
        print(dump(replay_document(state), args.output))
    else:
        print(replay_text(state))
    return 0


# -- export / import -------------------------------------------------------------------------------------


def _line(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def export_event_line(raw: RawMessage) -> dict[str, Any]:
    """One stored event as an export line: original sequence, subject, headers and the envelope as JSON."""
    doc: dict[str, Any] = {"seq": raw.seq, "subject": raw.subject, "headers": dict(raw.headers)}
    try:
        doc["data"] = json.loads(raw.data)
    except ValueError:
        doc["data_b64"] = base64.b64encode(raw.data).decode()
    return doc


def export_log_line(raw: RawMessage) -> dict[str, Any]:
    """One trial output message as an export line (its bytes in base64)."""
    return {"stream": "logs", "seq": raw.seq, "subject": raw.subject, "headers": dict(raw.headers),
            "data": base64.b64encode(raw.data).decode()}


async def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write an experiment's events (and with --logs its trial output) to stdout as JSON lines."""
    name = experiment_name(args.experiment)
    bus = await connect(settings)
    try:
        subject = subjects.experiment_events(name)
        if await bus.get_next(subjects.EVENTS_STREAM, 1, subject) is None:
            raise CliError(f'experiments.kubeflow.org "{name}" not found')
        out = sys.stdout
        out.write(_line({"natib_export": EXPORT_VERSION, "experiment": name,
                         "exported_at": datetime.now(UTC).isoformat(), "natib_version": __version__}) + "\n")
        events = 0
        async for raw in bus.read(subjects.EVENTS_STREAM, subject):
            out.write(_line(export_event_line(raw)) + "\n")
            events += 1
        logs = 0
        if args.logs:
            async for raw in bus.read(subjects.LOGS_STREAM, subjects.experiment_logs(name)):
                out.write(_line(export_log_line(raw)) + "\n")
                logs += 1
        out.flush()
    finally:
        await bus.close()
    print(f"exported {events} events" + (f" and {logs} log messages" if args.logs else "") + f" of {name}",
          file=sys.stderr)
    return 0


def rename_subject(subject: str, name: str) -> str:
    """An event or log subject with its experiment token replaced by ``name``."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != "natib" or parts[1] not in ("evt", "log"):
        raise CliError(f"not a natib event or log subject: {subject!r}")
    parts[2] = name
    return ".".join(parts)


class SeqMap:
    """Old (exported) to new (imported) stream sequences, for rewriting ``as_of``."""

    def __init__(self) -> None:
        self.old: list[int] = []
        self.new: list[int] = []

    def add(self, old: int, new: int) -> None:
        """Record where the event exported at ``old`` landed."""
        self.old.append(old)
        self.new.append(new)

    def translate(self, old: int) -> int:
        """The new sequence such that folding up to it sees exactly the events exported up to ``old``."""
        i = bisect.bisect_right(self.old, old)
        return self.new[i - 1] if i else 0


def rewrite_envelope(data: dict[str, Any], name: str, seqs: SeqMap) -> dict[str, Any]:
    """An exported envelope ready to publish here: renamed, and with ``as_of`` in this stream's sequences."""
    out = dict(data)
    out["experiment"] = name
    body = out.get("body")
    if isinstance(body, dict):
        body = dict(body)
        if body.get("type") == "suggestion.made" and isinstance(body.get("as_of"), int):
            body["as_of"] = seqs.translate(body["as_of"])
        elif body.get("type") == "experiment.created" and isinstance(body.get("experiment"), dict):
            exp = dict(body["experiment"])
            exp["metadata"] = {**(exp.get("metadata") or {}), "name": name}
            body["experiment"] = exp
        out["body"] = body
    return out


def read_export(lines: Iterable[str], source: str) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The header and the remaining lines of an export file (CliError if it is not one)."""
    it = iter(lines)
    try:
        header = json.loads(next(it))
    except (StopIteration, ValueError):
        header = None
    if not isinstance(header, dict) or "natib_export" not in header:
        raise CliError(f"{source}: not a natib export (the first line must be its header)")
    if header["natib_export"] != EXPORT_VERSION:
        raise CliError(f"{source}: export format {header['natib_export']} is not supported "
                       f"(this natib reads format {EXPORT_VERSION})")

    def body() -> Iterator[dict[str, Any]]:
        for n, line in enumerate(it, start=2):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError as exc:
                raise CliError(f"{source}:{n}: not JSON: {exc}") from exc
            if not isinstance(doc, dict) or "subject" not in doc or "seq" not in doc:
                raise CliError(f"{source}:{n}: not an exported message")
            yield doc

    return header, body()


def _publish_headers(doc: dict[str, Any]) -> dict[str, str]:
    headers = {k: str(v) for k, v in (doc.get("headers") or {}).items() if not k.lower().startswith("nats-")}
    headers[ORIGINAL_SEQ_HEADER] = str(doc["seq"])
    return headers


async def import_export(bus: Bus, lines: Iterable[str], *, source: str, rename: str | None = None
                        ) -> tuple[str, int, int]:
    """Publish an export's events (then its logs) here, in order; returns (experiment, events, logs).

    Sequences change, so every ``as_of`` is rewritten through the old-to-new map and each message keeps its
    exported sequence in a ``Natib-Original-Seq`` header. Each event is appended conditionally on the last
    one, so the history lands contiguously or the import stops with an error.
    """
    header, body = read_export(lines, source)
    name = experiment_name(rename or str(header.get("experiment", "")))
    docs = list(body)  # every line is checked before anything is published
    filt = subjects.experiment_events(name)
    if await bus.get_next(subjects.EVENTS_STREAM, 1, filt) is not None:
        raise CliError(f'experiments.kubeflow.org "{name}" already exists')
    run = uuid.uuid4().hex
    seqs = SeqMap()
    last = 0
    events = logs = 0
    for doc in docs:
        subject = rename_subject(str(doc["subject"]), name)
        msg_id = f"import:{run}:{doc.get('stream', 'events')}:{doc['seq']}"
        if doc.get("stream") == "logs":
            await bus.publish(subject, base64.b64decode(doc["data"]), msg_id=msg_id, headers=_publish_headers(doc))
            logs += 1
            continue
        if "data" in doc:
            data = json.dumps(rewrite_envelope(doc["data"], name, seqs), separators=(",", ":")).encode()
        else:
            data = base64.b64decode(doc["data_b64"])
        try:
            last = await bus.append(subject, data, msg_id=msg_id, expect_last_seq=last, expect_filter=filt,
                                    headers=_publish_headers(doc))
        except WrongLastSequence as exc:
            if events == 0:
                raise CliError(f'experiments.kubeflow.org "{name}" already exists') from exc
            raise CliError(f"other events were appended to {name} during the import (are natib actors "
                           f"running?); {events} events were imported") from exc
        seqs.add(int(doc["seq"]), last)
        events += 1
    if events == 0:
        raise CliError(f"{source}: the export holds no events")
    return name, events, logs


async def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    """Publish an exported experiment's history into this installation (read-only: no commands are sent)."""
    if args.rename is not None:
        experiment_name(args.rename)
    source = "<stdin>" if args.file == "-" else args.file
    try:
        text = await asyncio.to_thread(sys.stdin.read if args.file == "-" else Path(args.file).read_text)
    except OSError as exc:
        raise CliError(f"{source}: cannot read: {exc.strerror}") from exc
    bus = await connect(settings)
    try:
        name, events, logs = await import_export(bus, text.splitlines(), source=source, rename=args.rename)
        state = await load_state(bus, name)
        # The KV view is a cache of the log; writing it makes `natib get experiments` list the import at once.
        await bus.kv_put(subjects.state_key(name), msgspec.json.encode(view(state)))
    finally:
        await bus.close()
    print(f"experiment.kubeflow.org/{name} imported ({events} events, {logs} log messages; "
          f"{state.phase}, {len(state.trials)} trials)")
    return 0


# -- parser ----------------------------------------------------------------------------------------------

_IMPORT_EPILOG = """\
An import writes history only: it sends no commands and marks nothing. The experiment's status here is
whatever its events say, so an experiment that had not finished looks unfinished here too, and natib
actors running against this installation treat it like any other (the controller may continue it).
Import with the actors stopped: the controller reacts to the first imported event, and the import then
stops with an error rather than interleave its history with new decisions.
"""


def register_replay_commands(sub: Any) -> None:
    """Add ``replay``, ``export`` and ``import`` to the natib parser's subcommands."""
    s = sub.add_parser("replay", help="fold an experiment's events up to a sequence; --verify its decisions",
                       description="Print an experiment's state as folded from its events (up to --until), "
                                   "or with --verify re-run every recorded suggestion and early-stopping "
                                   "decision on the history it was made from; exit 1 on any difference.")
    s.add_argument("experiment")
    s.add_argument("--until", type=int, metavar="SEQ", help="fold only the events up to this stream sequence")
    s.add_argument("--verify", action="store_true", help="reproduce every suggestion and early-stopping decision")
    s.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    s.set_defaults(func=cmd_replay)
    s = sub.add_parser("export", help="write an experiment's events as JSON lines (to stdout)",
                       description="Write an experiment's events, in order, as JSON lines to stdout: a header "
                                   "line, then one line per event with its original sequence.")
    s.add_argument("experiment")
    s.add_argument("--logs", action="store_true", help="also export the trials' output (NATIB_LOGS)")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser("import", help="publish an exported experiment's history into this installation",
                       description="Publish the events of a `natib export` file, in order, rewriting\n"
                                   "each suggestion's as_of to this stream's sequences.",
                       epilog=_IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("file", help="the export file ('-' for stdin)")
    s.add_argument("--as", dest="rename", metavar="NAME", help="import under another experiment name")
    s.set_defaults(func=cmd_import)
