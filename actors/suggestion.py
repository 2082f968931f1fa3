"""The suggestion actor: answers SuggestTrials by running the experiment's algorithm on its history.

The history is the experiment's log folded up to the request's ``as_of`` sequence, so the same request
always gets the same answer, whichever replica computes it and however often it is redelivered.
"""

from __future__ import annotations

import asyncio

import msgspec

from natib.actors.base import Context
from natib.algorithms.auto import choose_algorithm
from natib.algorithms.nas import NasSpace, get_nas_algorithm
from natib.algorithms.registry import UnknownAlgorithm, get_algorithm
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.codec import UndecodableMessage
from natib.messages.commands import SuggestTrials
from natib.messages.spec import search_space
from natib.messages.state import ExperimentState
from natib.runtime.bus import RawMessage
from natib.runtime.errors import PermanentError
from natib.runtime.logging import get_logger

log = get_logger("natib.suggestion")

KIND = "suggestion"


def suggest(state: ExperimentState, request: SuggestTrials) -> ev.TrialsSuggested | ev.SuggestionFailed:
    """Run the algorithm for one request on the folded history (pure; may be CPU-heavy)."""
    exp = state.experiment
    assert exp is not None
    spec = exp.spec
    name = spec.algorithm.algorithm_name if spec.algorithm else "random"
    settings = {s.name: s.value for s in (spec.algorithm.algorithm_settings or [])} if spec.algorithm else {}
    if name == "auto" and spec.nas_config is None:
        name = choose_algorithm(search_space(spec), len(state.trials))
    try:
        if spec.nas_config is not None and not spec.parameters:
            nas = get_nas_algorithm(name)
            if nas is None:
                raise UnknownAlgorithm(name)
            result = nas.suggest(NasSpace.from_katib(msgspec.to_builtins(spec.nas_config)),
                                 state.algorithm_history(), request.count, settings, state.seed,
                                 spec.objective.type)  # type: ignore[arg-type]
        else:
            algorithm = get_algorithm(name)
            result = algorithm.suggest(search_space(spec), state.algorithm_history(), request.count, settings,
                                       state.seed, spec.objective.type)  # type: ignore[arg-type]
    except (UnknownAlgorithm, ValueError) as exc:
        return ev.SuggestionFailed(request=request.request, message=str(exc))
    return ev.TrialsSuggested(
        request=request.request, algorithm=name, as_of=request.as_of,
        assignments=[dict(a) for a in result.assignments[: request.count]],
        labels=[dict(x) for x in result.labels[: request.count]], exhausted=result.exhausted,
    )


class SuggestionService:
    """Consumes SuggestTrials commands and publishes TrialsSuggested (or SuggestionFailed) events."""

    kind = KIND

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def run(self) -> None:
        """Consume suggestion commands until stopped."""
        await self.ctx.bus.consume(
            subjects.COMMANDS_STREAM, KIND, subjects.commands_for(KIND), self.on_command, stop=self.ctx.stop,
            concurrency=4, ack_wait=self.ctx.settings.ack_wait, drain_timeout=self.ctx.settings.drain_timeout,
            key=lambda m: subjects.experiment_of(m.subject),
        )

    async def on_command(self, raw: RawMessage) -> None:
        """Answer one request unless it was already answered."""
        try:
            env = codec.decode(raw.data)
        except UndecodableMessage as exc:
            raise PermanentError(str(exc)) from exc
        if env is None or not isinstance(env.body, SuggestTrials):
            return
        cmd = env.body
        current = await self.ctx.store.load(env.experiment)
        if current.experiment is None or current.deleted or current.is_finished():
            return
        answered = current.requests.get(cmd.request)
        if answered is not None and answered.answered:
            return
        state = await self.ctx.store.load(env.experiment, until_seq=cmd.as_of)
        if state.experiment is None:
            return
        result = await asyncio.to_thread(suggest, state, cmd)
        await self.ctx.store.append_fact(
            env.experiment, subjects.suggestion_event(env.experiment, cmd.request), result,
            msg_id=f"{state.uid}:suggested:{cmd.request}", causation=env.id,
        )
        log.info("suggestion_made", experiment=env.experiment, request=cmd.request, type=ev.event_type(result),
                 count=len(getattr(result, "assignments", [])))
