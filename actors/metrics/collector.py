"""The metrics collector actor: reads trials' raw output from NATIB_LOGS and reports metrics and outcomes.

Output arrives in numbered chunks per trial. Each parsed value becomes a ``MetricReported`` event as
soon as it is seen; the end-of-output marker becomes the trial's outcome (Succeeded, Failed,
MetricsUnavailable, Killed or EarlyStopped) with its observation. Parsing state lives in memory and is
rebuilt from the stream when this actor restarts or a chunk arrives out of order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from natib.actors.base import Context
from natib.actors.launcher.actor import H_ATTEMPT, H_CHUNK, H_EOF, H_EXIT, H_STOP, H_STOP_MESSAGE
from natib.actors.metrics.parsers import DEFAULT_FILTER, JsonLinesParser, TextParser
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.spec import Experiment
from natib.messages.state import MetricLog, observe
from natib.runtime.bus import RawMessage
from natib.runtime.logging import get_logger

log = get_logger("natib.collector")

KIND = "collector"
TAIL_LINES = 5


@dataclass
class TrialParse:
    """Parsing progress of one attempt of one trial."""

    attempt: int
    parser: TextParser | JsonLinesParser
    next_chunk: int = 0
    logs: list[MetricLog] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    done: bool = False


def make_parser(exp: Experiment) -> TextParser | JsonLinesParser:
    """The parser the experiment's metricsCollectorSpec asks for (StdOut and File TEXT/JSON)."""
    spec = exp.spec
    names = spec.metric_names()
    mc = spec.metrics_collector_spec
    source = mc.source if mc else None
    fs = source.file_system_path if source else None
    if fs is not None and (fs.format or "TEXT") == "JSON":
        return JsonLinesParser(names)
    filters = source.filter.metrics_format if source and source.filter and source.filter.metrics_format else None
    return TextParser(names, filters or [DEFAULT_FILTER])


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
            ack_wait=self.ctx.settings.ack_wait, key=lambda m: m.subject,
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
        """Parse one chunk (or the end marker) of a trial's output."""
        parts = raw.subject.split(".")
        if len(parts) != 4:
            return
        experiment, trial = parts[2], parts[3]
        exp = await self.experiment(experiment)
        if exp is None:
            return
        attempt = int(raw.headers.get(H_ATTEMPT, "1"))
        chunk = int(raw.headers.get(H_CHUNK, "0"))
        parse = self._trials.get(raw.subject)
        if parse is None or parse.attempt != attempt or chunk > parse.next_chunk:
            parse = await self._rebuild(exp, raw, attempt)
        if chunk < parse.next_chunk or parse.done:
            return
        await self._process(exp, experiment, trial, parse, raw, emit=True)

    async def _rebuild(self, exp: Experiment, upto: RawMessage, attempt: int) -> TrialParse:
        """Replay this attempt's earlier chunks silently (they were handled before a restart)."""
        parse = TrialParse(attempt, make_parser(exp))
        parts = upto.subject.split(".")
        async for raw in self.ctx.bus.read(subjects.LOGS_STREAM, upto.subject, until_seq=upto.seq - 1):
            if int(raw.headers.get(H_ATTEMPT, "1")) != attempt:
                continue
            if int(raw.headers.get(H_CHUNK, "0")) == parse.next_chunk:
                await self._process(exp, parts[2], parts[3], parse, raw, emit=False)
        self._trials[upto.subject] = parse
        return parse

    async def _process(self, exp: Experiment, experiment: str, trial: str, parse: TrialParse, raw: RawMessage,
                       *, emit: bool) -> None:
        parse.next_chunk += 1
        if raw.headers.get(H_EOF):
            samples = parse.parser.flush()
        else:
            samples = parse.parser.feed(raw.data)
            lines = raw.data.decode("utf-8", "replace").splitlines()
            parse.tail = (parse.tail + lines)[-TAIL_LINES:]
        for sample in samples:
            step = len(parse.logs)
            parse.logs.append(MetricLog(sample.name, sample.value, step, sample.timestamp))
            if emit:
                await self.ctx.store.append_fact(
                    experiment, subjects.trial_event(experiment, trial, "trial.metric"),
                    ev.MetricReported(trial=trial, name=sample.name, value=sample.value, step=step,
                                      attempt=parse.attempt, timestamp=sample.timestamp),
                    msg_id=f"{trial}:{parse.attempt}:metric:{step}",
                )
        if raw.headers.get(H_EOF):
            parse.done = True
            if not emit:
                return
            exit_raw = raw.headers.get(H_EXIT)
            result = outcome(exp, trial, parse, int(exit_raw) if exit_raw is not None else None,
                             raw.headers.get(H_STOP), raw.headers.get(H_STOP_MESSAGE, ""))
            await self.ctx.store.append_fact(
                experiment, subjects.trial_event(experiment, trial, ev.event_type(result)), result,
                msg_id=f"{trial}:{parse.attempt}:outcome",
            )
            log.info("trial_outcome", experiment=experiment, trial=trial, outcome=ev.event_type(result),
                     metrics=len(parse.logs))
            self._trials.pop(raw.subject, None)
