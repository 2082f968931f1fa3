"""The early-stopping actor: watches reported metrics and stops trials the experiment's rule condemns.

It works with every collector, because every value arrives as a ``MetricReported`` event.
"""

from __future__ import annotations

from natib.actors.base import Context, Outgoing, send
from natib.algorithms.early_stopping import MedianStop
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.codec import UndecodableMessage
from natib.messages.commands import StopTrial
from natib.messages.state import ExperimentState, as_float
from natib.runtime.bus import RawMessage
from natib.runtime.logging import get_logger

log = get_logger("natib.early_stopping")

KIND = "early-stopping"


def objective_series(state: ExperimentState, trial: str) -> list[float]:
    """The numeric objective values a trial reported, in report order."""
    assert state.experiment is not None
    metric = state.experiment.spec.objective.objective_metric_name
    t = state.trials[trial]
    return [v for log_ in t.metric_logs if log_.name == metric and (v := as_float(log_.value)) is not None]


def completed_series(state: ExperimentState, trial: str) -> list[list[float]]:
    """The objective series of every other trial that completed with a result."""
    assert state.experiment is not None
    metric = state.experiment.spec.objective.objective_metric_name
    out = []
    for t in state.trials.values():
        if t.name == trial or t.phase not in ("Succeeded", "EarlyStopped"):
            continue
        out.append([v for log_ in t.metric_logs if log_.name == metric and (v := as_float(log_.value)) is not None])
    return out


def evaluate(state: ExperimentState, trial: str) -> StopTrial | None:
    """Decide whether the trial should be stopped now under the experiment's early-stopping rule (pure)."""
    exp = state.experiment
    if exp is None or exp.spec.early_stopping is None or state.is_finished():
        return None
    t = state.trials.get(trial)
    if t is None or t.phase != "Running":
        return None
    settings = {s.name: s.value for s in (exp.spec.early_stopping.algorithm_settings or [])}
    rule = MedianStop.from_settings(settings)
    values = objective_series(state, trial)
    if rule.should_stop(values, completed_series(state, trial), exp.spec.objective.type):
        median = rule.threshold(len(values), completed_series(state, trial))
        return StopTrial(trial=trial, reason="EarlyStopped",
                         message=f"Trial is early stopped: objective worse than the median {median} at step "
                                 f"{len(values)}")
    return None


class EarlyStopper:
    """Consumes metric events and sends StopTrial(EarlyStopped) when the rule says so."""

    kind = KIND

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def run(self) -> None:
        """Consume metric events until stopped."""
        await self.ctx.bus.consume(
            subjects.EVENTS_STREAM, KIND, subjects.trial_events_of_type("trial.metric"), self.on_metric,
            stop=self.ctx.stop, concurrency=8, ack_wait=self.ctx.settings.ack_wait,
            key=lambda m: subjects.experiment_of(m.subject), drain_timeout=self.ctx.settings.drain_timeout,
        )

    async def on_metric(self, raw: RawMessage) -> None:
        """Re-evaluate the trial that reported a value."""
        try:
            env = codec.decode(raw.data)
        except UndecodableMessage:
            return
        if env is None or not isinstance(env.body, ev.MetricReported):
            return
        state = await self.ctx.store.load(env.experiment)
        if state.experiment is None or state.experiment.spec.early_stopping is None:
            return
        stop = evaluate(state, env.body.trial)
        if stop is not None:
            log.info("trial_early_stopped", experiment=env.experiment, trial=stop.trial, detail=stop.message)
            await send(self.ctx, Outgoing("launcher", env.experiment, stop,
                                          f"{state.uid}:stop:{stop.trial}:EarlyStopped"), causation=env.id)
