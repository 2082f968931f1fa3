"""The metrics collector actor: reads trials' raw output from NATIB_LOGS and reports metrics and outcomes.

Output arrives in numbered chunks per trial. Each parsed value becomes a ``MetricReported`` event as
soon as it is seen; the end-of-output marker becomes the trial's outcome (Succeeded, Failed,
MetricsUnavailable, Killed or EarlyStopped) with its observation. Parsing state lives in memory and is
rebuilt from the stream when this actor restarts or a chunk arrives out of order.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime

from natib.actors.base import Context
from natib.actors.launcher.actor import H_ATTEMPT, H_CHUNK, H_EOF, H_EXIT, H_STOP, H_STOP_MESSAGE
from natib.actors.metrics.parsers import DEFAULT_FILTER, JsonLinesParser, Sample, TextParser
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.spec import Experiment
from natib.messages.state import MetricLog, observe
from natib.runtime.bus import RawMessage
from natib.runtime.errors import PermanentError
from natib.runtime.logging import get_logger

log = get_logger("natib.collector")

KIND = "collector"
TAIL_LINES = 5


@dataclass
class TrialParse:
    """Parsing progress of one attempt of one trial, across all its metric sources."""

    attempt: int
    exp: Experiment
    next_chunk: int = 0
    parsers: dict[tuple[str, str], TextParser | JsonLinesParser] = field(default_factory=dict)
    logs: list[MetricLog] = field(default_factory=list)
    seen: set[tuple[str, int, str]] = field(default_factory=set)
    tail: list[str] = field(default_factory=list)
    dropped: int = 0
    done: bool = False

    def parser(self, source: str, path: str) -> TextParser | JsonLinesParser | None:
        """The parser for one source (and file) of this trial, None if the source carries no metrics."""
        key = (source, path)
        if key not in self.parsers:
            made = make_source_parser(self.exp, source)
            if made is None:
                return None
            self.parsers[key] = made
        return self.parsers[key]


def make_source_parser(exp: Experiment, source: str) -> TextParser | JsonLinesParser | None:
    """How a source's bytes are parsed: Katib TEXT/JSON for output and files, JSON samples otherwise."""
    spec = exp.spec
    names = spec.metric_names()
    mc = spec.metrics_collector_spec
    kind = mc.collector.kind if mc and mc.collector and mc.collector.kind else "StdOut"
    src = mc.source if mc else None
    filters = src.filter.metrics_format if src and src.filter and src.filter.metrics_format else None
    if source == "out":
        return TextParser(names, filters or [DEFAULT_FILTER]) if kind == "StdOut" else None
    if source == "file":
        fs = src.file_system_path if src else None
        if fs is not None and (fs.format or "TEXT") == "JSON":
            return JsonLinesParser(names)
        return TextParser(names, filters or [DEFAULT_FILTER])
    if source == "custom":
        return TextParser(names, filters or [DEFAULT_FILTER])
    return None


def make_parser(exp: Experiment) -> TextParser | JsonLinesParser:
    """The parser for the experiment's main metrics stream (its output for StdOut, else its file)."""
    mc = exp.spec.metrics_collector_spec
    kind = mc.collector.kind if mc and mc.collector and mc.collector.kind else "StdOut"
    parser = make_source_parser(exp, "out" if kind == "StdOut" else "file")
    assert parser is not None
    return parser


def sample_samples(data: bytes, names: list[str]) -> list[tuple[Sample, int | None]]:
    """Decode the JSON sample lines that structured sources (TensorFlow events, Prometheus, push) send."""
    out = []
    for line in data.splitlines():
        try:
            doc = json.loads(line)
            name, value = str(doc["name"]), doc["value"]
        except (ValueError, KeyError, TypeError):
            continue
        if name not in names or isinstance(value, bool) or value is None:
            continue
        when = doc.get("timestamp")
        try:
            ts = datetime.fromisoformat(when) if isinstance(when, str) else None
        except ValueError:
            ts = None
        step = doc.get("step")
        try:
            text = value if isinstance(value, str) else repr(float(value))
        except (TypeError, ValueError):
            continue
        out.append((Sample(name, text, ts), step if isinstance(step, int) else None))
    return out


def usable(value: str) -> bool:
    """A value worth recording: a finite number or text (a number that is nan, inf or overflows is not)."""
    try:
        number = float(value)
    except ValueError:
        return bool(value.strip())
    return math.isfinite(number)


def outcome(exp: Experiment, trial: str, parse: TrialParse, exit_code: int | None, stop_reason: str | None,
            stop_message: str) -> ev.Event:
    """The trial's terminal event, following Katib's rules (and Killed/EarlyStopped, which Katib misses)."""
    names = exp.spec.metric_names()
    obs = observe(parse.logs, names)
    objective = exp.spec.objective.objective_metric_name
    have_objective = any(m.name == objective and m.latest != "unavailable" for m in obs)
    if stop_reason == "EarlyStopped":
        return ev.TrialEarlyStopped(trial=trial, observation=obs, attempt=parse.attempt,
                                    message=stop_message or "Trial is early stopped")
    if stop_reason in ("Killed", "Deleted"):
        return ev.TrialKilled(trial=trial, observation=obs, attempt=parse.attempt,
                              message=stop_message or "Trial was killed")
    if exit_code is None or exit_code != 0:
        detail = f"exit code {exit_code}" if exit_code is not None else "the process was lost"
        last = next((line for line in reversed(parse.tail) if line.strip()), "")
        message = f"Trial has failed: {detail}" + (f"; last output: {last.strip()[:300]}" if last else "")
        return ev.TrialFailed(trial=trial, reason="TrialFailed", message=message, observation=obs,
                              attempt=parse.attempt, exit_code=exit_code)
    if not have_objective:
        return ev.TrialMetricsUnavailable(
            trial=trial, observation=obs, attempt=parse.attempt, exit_code=exit_code,
            message=f"Metrics are not available: objective metric {objective!r} was never reported",
        )
    return ev.TrialSucceeded(trial=trial, observation=obs, attempt=parse.attempt, exit_code=exit_code)


class MetricsCollector:
    """Consumes trial output and publishes metric and outcome events."""

    kind = KIND

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._trials: dict[str, TrialParse] = {}
        self._specs: dict[str, Experiment | None] = {}

    async def run(self) -> None:
        """Consume NATIB_LOGS until stopped; one trial's chunks are handled in order."""
        await self.ctx.bus.consume(
            subjects.LOGS_STREAM, KIND, subjects.LOGS_ALL, self.on_chunk, stop=self.ctx.stop, concurrency=64,
            ack_wait=self.ctx.settings.ack_wait, key=lambda m: ".".join(m.subject.split(".")[:4]),
            drain_timeout=self.ctx.settings.drain_timeout,
        )

    async def experiment(self, name: str) -> Experiment | None:
        """The experiment's spec, read once from its creation event."""
        if name not in self._specs:
            raw = await self.ctx.bus.get_next(
                subjects.EVENTS_STREAM, 1, subjects.controller_event(name, "experiment.created")
            )
            env = codec.decode(raw.data) if raw is not None else None
            if env is None or not isinstance(env.body, ev.ExperimentCreated):
                return None
            self._specs[name] = env.body.experiment
        return self._specs[name]

    async def on_chunk(self, raw: RawMessage) -> None:
        """Parse one message (a chunk of output, of a metrics source, the end marker, or a push)."""
        parts = raw.subject.split(".")
        if len(parts) != 5:
            return
        experiment, trial = parts[2], parts[3]
        if parts[4] not in subjects.LOG_SOURCES or (parts[4] != "push" and H_ATTEMPT not in raw.headers):
            raise PermanentError(f"not trial output natib published: {raw.subject} without {H_ATTEMPT}")
        try:
            attempt = int(raw.headers.get(H_ATTEMPT, "1"))
            chunk = raw.headers.get(H_CHUNK)
            if chunk is not None:
                int(chunk)
        except ValueError as exc:
            raise PermanentError(f"bad trial output headers on {raw.subject}: {exc}") from exc
        exp = await self.experiment(experiment)
        if exp is None:
            return
        key = ".".join(parts[:4])
        parse = self._trials.get(key)
        if parse is None or parse.attempt != attempt or (chunk is not None and int(chunk) > parse.next_chunk):
            parse = await self._rebuild(exp, raw, attempt)
        if parse.done or (chunk is not None and int(chunk) < parse.next_chunk):
            return
        try:
            await self._process(experiment, trial, parse, raw, emit=True)
        except BaseException:
            # The chunk counts as handled in memory but some of its events may not be stored: forget
            # the parse so the redelivery rebuilds it from the stream and publishes what is missing.
            self._trials.pop(key, None)
            raise
        if parse.done:
            self._trials.pop(key, None)

    async def _rebuild(self, exp: Experiment, upto: RawMessage, attempt: int) -> TrialParse:
        """Replay this attempt's earlier messages silently (they were handled before a restart)."""
        parse = TrialParse(attempt, exp)
        parts = upto.subject.split(".")
        async for raw in self.ctx.bus.read(subjects.LOGS_STREAM, subjects.trial_logs(parts[2], parts[3]),
                                           until_seq=upto.seq - 1):
            if int(raw.headers.get(H_ATTEMPT, "1")) != attempt:
                continue
            chunk = raw.headers.get(H_CHUNK)
            if chunk is None or int(chunk) == parse.next_chunk:
                await self._process(parts[2], parts[3], parse, raw, emit=False)
        self._trials[".".join(parts[:4])] = parse
        return parse

    async def _process(self, experiment: str, trial: str, parse: TrialParse, raw: RawMessage, *,
                       emit: bool) -> None:
        source = raw.subject.rsplit(".", 1)[1]
        if raw.headers.get(H_CHUNK) is not None:
            parse.next_chunk += 1
        eof = bool(raw.headers.get(H_EOF))
        found: list[tuple[Sample, int | None]] = []
        if eof:
            for p in parse.parsers.values():
                found.extend((s, None) for s in p.flush())
        elif source in ("tfevent", "prom", "push"):
            found = sample_samples(raw.data, parse.exp.spec.metric_names())
        else:
            parser = parse.parser(source, raw.headers.get("Natib-Path", ""))
            if parser is not None:
                found = [(s, None) for s in parser.feed(raw.data)]
            if source == "out":
                lines = raw.data.decode("utf-8", "replace").splitlines()
                parse.tail = (parse.tail + [line[:1000] for line in lines])[-TAIL_LINES:]
        for sample, source_step in found:
            if not usable(sample.value):
                parse.dropped += 1
                continue
            if source_step is not None:
                mark = (sample.name, source_step, sample.value)
                if mark in parse.seen:
                    continue
                parse.seen.add(mark)
            step = len(parse.logs)
            parse.logs.append(MetricLog(sample.name, sample.value, step, sample.timestamp))
            if emit:
                await self.ctx.store.append_fact(
                    experiment, subjects.trial_event(experiment, trial, "trial.metric"),
                    ev.MetricReported(trial=trial, name=sample.name, value=sample.value, step=step,
                                      attempt=parse.attempt, timestamp=sample.timestamp),
                    msg_id=f"{trial}:{parse.attempt}:metric:{step}",
                )
        if not eof:
            return
        parse.done = True
        if not emit:
            return
        skipped = parse.dropped + sum(getattr(p, "truncated_lines", 0) + len(getattr(p, "errors", []))
                                      for p in parse.parsers.values())
        if skipped:
            log.warning("metrics_skipped", experiment=experiment, trial=trial, count=skipped,
                        detail="non-finite values, over-long lines or unparsable JSON lines were ignored")
        exit_raw = raw.headers.get(H_EXIT)
        result = outcome(parse.exp, trial, parse, int(exit_raw) if exit_raw is not None else None,
                         raw.headers.get(H_STOP), raw.headers.get(H_STOP_MESSAGE, ""))
        await self.ctx.store.append_fact(
            experiment, subjects.trial_event(experiment, trial, ev.event_type(result)), result,
            msg_id=f"{trial}:{parse.attempt}:outcome",
        )
        log.info("trial_outcome", experiment=experiment, trial=trial, outcome=ev.event_type(result),
                 metrics=len(parse.logs))
