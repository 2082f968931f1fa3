"""The early-stopping actor: watches reported metrics and stops trials the experiment's rule condemns.

It works with every collector, because every value arrives as a ``MetricReported`` event.
"""

from __future__ import annotations

from natib.actors.base import Context, Outgoing, send
from natib.algorithms.early_stopping import PeerSelection, early_stopping_rule
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.codec import UndecodableMessage
from natib.messages.commands import StopTrial
from natib.messages.state import ExperimentState, as_float
from natib.runtime.bus import RawMessage
from natib.runtime.errors import PermanentError
from natib.runtime.logging import get_logger

log = get_logger("natib.early_stopping")

KIND = "early-stopping"


def objective_series(state: ExperimentState, trial: str, upto_step: int | None = None) -> list[float]:
    """The numeric objective values a trial reported, in report order (up to report ``upto_step``)."""
    assert state.experiment is not None
    metric = state.experiment.spec.objective.objective_metric_name
    t = state.trials[trial]
    return [v for log_ in t.metric_logs
            if log_.name == metric and (upto_step is None or log_.step <= upto_step)
            and (v := as_float(log_.value)) is not None]


def peer_series(state: ExperimentState, trial: str, peers: PeerSelection) -> list[list[float]]:
    """The objective series of the other trials a rule compares with.

    ``completed``: every other trial that completed with a result (Succeeded or EarlyStopped), as Katib's
    medianstop does. ``all``: every other trial that has reported an objective value, running ones included.
    """
    assert state.experiment is not None
    out = []
    for t in state.trials.values():
        if t.name == trial or (peers == "completed" and t.phase not in ("Succeeded", "EarlyStopped")):
            continue
        series = objective_series(state, t.name)
        if series or peers == "completed":
            out.append(series)
    return out


def evaluate(state: ExperimentState, trial: str, upto_step: int | None = None) -> StopTrial | None:
    """Decide whether the trial should be stopped under the experiment's early-stopping rule (pure).

    ``upto_step`` judges the trial as it was when that report arrived, so a rule that decides only at
    certain report counts never misses one because later reports were already folded in.
    """
    exp = state.experiment
    if exp is None or exp.spec.early_stopping is None or state.is_finished():
        return None
    t = state.trials.get(trial)
    if t is None or t.phase != "Running":
        return None
    settings = {s.name: s.value for s in (exp.spec.early_stopping.algorithm_settings or [])}
    rule = early_stopping_rule(exp.spec.early_stopping.algorithm_name, settings)
    values = objective_series(state, trial, upto_step)
    others = peer_series(state, trial, rule.peers)
    if rule.should_stop(values, others, exp.spec.objective.type):
        return StopTrial(trial=trial, reason="EarlyStopped",
                         message=f"Trial is early stopped: {rule.explain(values, others, exp.spec.objective.type)}")
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
        except UndecodableMessage as exc:
            raise PermanentError(f"not a natib event: {exc}") from exc
        if env is None or not isinstance(env.body, ev.MetricReported):
            return
        # The state as of this report, so `natib replay --verify` can reproduce the decision exactly.
        state = await self.ctx.store.load(env.experiment, until_seq=raw.seq)
        if state.experiment is None or state.experiment.spec.early_stopping is None:
            return
        stop = evaluate(state, env.body.trial, env.body.step)
        if stop is not None:
            log.info("trial_early_stopped", experiment=env.experiment, trial=stop.trial, detail=stop.message)
            await send(self.ctx, Outgoing("launcher", env.experiment, stop,
                                          f"{state.uid}:stop:{stop.trial}:EarlyStopped"), causation=env.id)
