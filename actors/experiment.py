"""The experiment controller: the single writer of each experiment's lifecycle and trial decisions.

It folds the experiment's events, decides what should happen next (``decide`` is pure), appends
those decisions conditionally, and sends the commands they imply. It also serves the create,
delete and ping requests of the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from natib.actors.base import Context, Outgoing, experiment_key, send
from natib.actors.launcher.template import TemplateError, render_trial_spec
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.codec import UndecodableMessage
from natib.messages.commands import LaunchTrial, StopTrial, SuggestTrials
from natib.messages.spec import Experiment, SpecError, load_experiment
from natib.messages.state import ExperimentState
from natib.messages.validation import validate_experiment, validate_update
from natib.runtime.bus import RawMessage, WrongLastSequence
from natib.runtime.errors import PermanentError, RetryableError
from natib.runtime.logging import get_logger

log = get_logger("natib.controller")

KIND = "controller"
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"

MSG_GOAL = "Experiment has succeeded because Objective goal has reached"
MSG_MAX_TRIALS = "Experiment has succeeded because max trial count has reached"
MSG_SUGGESTION_END = "Experiment has succeeded because suggestion service has reached the end"
MSG_MAX_FAILED = "Experiment has failed because max failed count has reached"
MSG_STALLED = "the algorithm suggested nothing new while no trial was running"


@dataclass
class Decision:
    """Events to append and commands to send, in order."""

    events: list[ev.Event] = field(default_factory=list)
    commands: list[Outgoing] = field(default_factory=list)


def trial_name(experiment: str, uid: str, index: int) -> str:
    """A deterministic, DNS-safe trial name: the experiment name and 8 characters derived from its uid."""
    digest = int.from_bytes(hashlib.sha256(f"{uid}/{index}".encode()).digest()[:8], "big")
    suffix = ""
    for _ in range(8):
        digest, r = divmod(digest, 36)
        suffix += _ALPHABET[r]
    return f"{experiment}-{suffix}"


def decide(state: ExperimentState) -> Decision:
    """Everything the controller should do now, given the experiment's folded state (pure).

    The completion checks follow Katib's order (goal, max failed, max trials), then the two ends
    Katib never reaches: a failed suggestion and an exhausted search space.
    """
    d = Decision()
    exp = state.experiment
    if exp is None or state.deleted or state.is_finished():
        return d
    if state.phase == "Created":
        d.events.append(ev.ExperimentRunning())
        return d
    spec = exp.spec
    finish: ev.Event | None = None
    failed = state.failed_count()
    if state.goal_reached():
        finish = ev.ExperimentSucceeded(reason="ExperimentGoalReached", message=MSG_GOAL)
    elif spec.max_failed_trial_count is not None and failed != 0 and failed >= spec.max_failed_trial_count:
        finish = ev.ExperimentFailed(message=MSG_MAX_FAILED)
    elif spec.max_trial_count is not None and state.completed_count() >= spec.max_trial_count:
        finish = ev.ExperimentSucceeded(reason="ExperimentMaxTrialsReached", message=MSG_MAX_TRIALS)
    elif (failure := state.suggestion_failure()) is not None:
        finish = ev.ExperimentFailed(message=f"Suggestion has failed: {failure}")
    elif (state.exhausted() and not state.pending_assignments and state.active() == 0
          and state.outstanding_request() is None):
        finish = ev.ExperimentSucceeded(reason="ExperimentSuggestionEndReached", message=MSG_SUGGESTION_END)
    elif state.waiting_for_results() and state.active() == 0 and not state.pending_assignments:
        # Nothing runs, so nothing can change the algorithm's answer: asking again would loop forever.
        finish = ev.ExperimentFailed(message=f"Suggestion has failed: {MSG_STALLED}")
    if finish is not None:
        d.events.append(finish)
        d.commands.extend(stop_commands(state, "Killed", "Experiment has finished"))
        return d

    parallel = spec.parallel_trial_count or 1
    target = parallel if spec.max_trial_count is None else min(parallel, spec.max_trial_count - state.completed_count())
    need = target - state.active()
    index = state.next_trial_index
    for request, assignment, labels in list(state.pending_assignments):
        if need <= 0:
            break
        name = trial_name(state.name, state.uid, index)
        try:
            run_spec = render_run_spec(state, name, assignment)
        except TemplateError as exc:
            d.events.append(ev.TrialCreated(trial=name, index=index, request=request, assignment=assignment,
                                            run_spec={}, labels=labels))
            d.events.append(ev.TrialFailed(trial=name, reason="TemplateError", message=str(exc)))
        else:
            d.events.append(ev.TrialCreated(trial=name, index=index, request=request, assignment=assignment,
                                            run_spec=run_spec, labels=labels))
            d.commands.append(launch_command(state, name, run_spec, labels))
        index += 1
        need -= 1
    remaining = len(state.pending_assignments) - len([e for e in d.events if isinstance(e, ev.TrialCreated)])
    if (need > 0 and remaining <= 0 and state.outstanding_request() is None and not state.exhausted()
            and not state.waiting_for_results()):
        d.events.append(ev.SuggestionRequested(request=len(state.requests) + 1, count=need))
    return d


def unsupported(exp: Experiment) -> list[str]:
    """Valid Katib features this natib version cannot run yet, as ``path: reason`` (refused at creation)."""
    spec = exp.spec
    out = []
    template = spec.trial_template
    if template is not None and template.trial_spec is None:
        out.append("spec.trialTemplate.configMap: trial templates from ConfigMaps need the Kubernetes backend; "
                   "put the template inline as spec.trialTemplate.trialSpec")
    return out


def render_run_spec(state: ExperimentState, name: str, assignment: dict[str, str]) -> dict[str, Any]:
    """The trial's run spec: the trial template with this trial's parameters substituted."""
    assert state.experiment is not None
    template = state.experiment.spec.trial_template
    if template is None or template.trial_spec is None:
        raise TemplateError("spec.trialTemplate.trialSpec is required by this natib backend")
    params = [msgspec.to_builtins(p) for p in (template.trial_parameters or [])]
    namespace = state.experiment.metadata.namespace or "default"
    return render_trial_spec(template.trial_spec, params, assignment, trial_name=name, namespace=namespace)


def launch_command(state: ExperimentState, name: str, run_spec: dict[str, Any],
                   labels: dict[str, str] | None = None) -> Outgoing:
    """The LaunchTrial command for a trial."""
    assert state.experiment is not None
    template = state.experiment.spec.trial_template
    spec = state.experiment.spec
    collector = msgspec.to_builtins(spec.metrics_collector_spec) if spec.metrics_collector_spec else None
    trial = state.trials.get(name)
    return Outgoing("launcher", state.name, LaunchTrial(
        trial=name, run_spec=run_spec, primary_container_name=template.primary_container_name or "",
        source_dir=state.source_dir, metrics_collector=collector, metric_names=spec.metric_names(),
        labels=dict(trial.labels) if trial else dict(labels or {}), checkpoint_dir=checkpoint_dir(state),
    ), f"{state.uid}:launch:{name}")


def checkpoint_dir(state: ExperimentState) -> str | None:
    """The in-container checkpoint path PBT trials use (its ``suggestion_trial_dir`` setting), else None."""
    assert state.experiment is not None
    alg = state.experiment.spec.algorithm
    if alg is None or alg.algorithm_name != "pbt":
        return None
    return next((s.value for s in alg.algorithm_settings or [] if s.name == "suggestion_trial_dir"), None)


def stop_commands(state: ExperimentState, reason: str, message: str) -> list[Outgoing]:
    """StopTrial commands for every active trial."""
    return [
        Outgoing("launcher", state.name, StopTrial(trial=t.name, reason=reason, message=message),
                 f"{state.uid}:stop:{t.name}:{reason}")
        for t in state.trials.values() if t.is_active
    ]


def commands_for_landed(d: Decision, landed: list[ev.Event]) -> list[Outgoing]:
    """The commands of ``d`` implied by the decisions in ``landed`` (a prefix of ``d.events``).

    Trial launches belong to their TrialCreated (unless the same prefix also failed the trial); stop commands
    belong to a finishing decision, which is always alone in its batch.
    """
    created = {e.trial for e in landed if isinstance(e, ev.TrialCreated)}
    failed = {e.trial for e in landed if isinstance(e, ev.TrialFailed)}
    finished = any(isinstance(e, ev.ExperimentSucceeded | ev.ExperimentFailed) for e in landed)
    out = []
    for c in d.commands:
        if isinstance(c.command, LaunchTrial) and c.command.trial in created - failed:
            out.append(c)
        elif isinstance(c.command, StopTrial) and finished:
            out.append(c)
    return out


def resync_commands(state: ExperimentState) -> list[Outgoing]:
    """Commands implied by the state, re-sent at start-up in case a crash lost them (all idempotent)."""
    if state.experiment is None:
        return []
    if state.deleted:
        return stop_commands(state, "Deleted", "Experiment was deleted")
    if state.is_finished():
        return stop_commands(state, "Killed", "Experiment has finished")
    out = [launch_command(state, t.name, t.run_spec) for t in state.trials.values()
           if t.is_active and t.run_spec]
    req = state.outstanding_request()
    if req is not None:
        out.append(suggest_command(state, req.request, req.count, req.seq))
    return out


def suggest_command(state: ExperimentState, request: int, count: int, as_of: int) -> Outgoing:
    """The SuggestTrials command for a recorded request."""
    return Outgoing("suggestion", state.name, SuggestTrials(request=request, count=count, as_of=as_of),
                    f"{state.uid}:suggest:{request}")


class ExperimentController:
    """Consumes every experiment event, reconciles the experiment, and serves the CLI's requests."""

    kind = KIND

    #: Seconds between two writes of one experiment's KV view while it runs (its end is written at once).
    VIEW_INTERVAL = 1.0
    #: Events between two snapshots of an experiment's fold.
    SNAPSHOT_EVERY = 5000
    #: Seconds between two reconciliations of a running experiment that no event triggered.
    TICK_SECONDS = 5.0

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._view_written: dict[str, float] = {}
        self._view_due: dict[str, asyncio.TimerHandle] = {}
        self._view_tasks: set[asyncio.Task[None]] = set()
        self._snapshot_at: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def run(self) -> None:
        """Serve requests, resync every live experiment, then reconcile on each new event until stopped."""
        try:
            await self._run()
        finally:
            await self.flush_views()

    async def _run(self) -> None:
        bus = self.ctx.bus
        await bus.serve(subjects.api("create"), self.api_create, queue=KIND)
        await bus.serve(subjects.api("delete"), self.api_delete, queue=KIND)
        await bus.serve(subjects.api("ping"), self.api_ping, queue=KIND)
        await bus.serve(subjects.api("patch"), self.api_patch, queue=KIND)
        await self.resync()
        ticker = asyncio.create_task(self.tick())
        try:
            await bus.consume(
                subjects.EVENTS_STREAM, KIND, subjects.EVENTS_ALL, self.on_event, stop=self.ctx.stop,
                concurrency=32, ack_wait=self.ctx.settings.ack_wait, key=lambda m: experiment_key(m.subject),
                drain_timeout=self.ctx.settings.drain_timeout,
            )
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def tick(self) -> None:
        """Reconcile every running experiment now and then, whatever the events say.

        Decisions are level-triggered, so this is always safe; it makes sure an experiment moves on even
        if the event that should have woken it was handled by a replica that stopped half-way.
        """
        while not self.ctx.stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ctx.stop.wait(), self.TICK_SECONDS)
            if self.ctx.stop.is_set():
                return
            for name in list(self.ctx.store.cached_names()):
                try:
                    state = await self.ctx.store.load(name)
                    if state.experiment is not None and not state.is_finished() and not state.deleted:
                        await self.reconcile(name)
                except Exception:  # the next tick or event tries again
                    log.warning("tick_failed", experiment=name, exc_info=True)

    async def resync(self) -> None:
        """Re-send the commands every unfinished experiment implies (they may have been lost in a crash)."""
        for name in await self.experiment_names():
            state = await self.ctx.store.load(name)
            await self.reconcile(name)
            for out in resync_commands(state):
                await send(self.ctx, out)

    async def experiment_names(self) -> list[str]:
        """Every experiment that has a creation event in the log."""
        info = await self.ctx.bus.js.stream_info(
            subjects.EVENTS_STREAM, subjects_filter=subjects.controller_events_of_type("experiment.created")
        )
        names = sorted({s.split(".")[2] for s in (info.state.subjects or {})})
        return names

    async def on_event(self, raw: RawMessage) -> None:
        """Reconcile the experiment an event belongs to (metrics alone never change a decision)."""
        name = subjects.experiment_of(raw.subject)
        try:
            codec.decode(raw.data)
        except UndecodableMessage as exc:
            raise PermanentError(f"not a natib event: {exc}") from exc
        if name is None or raw.subject.endswith(".trial-metric"):
            return
        await self.reconcile(name, causation=str(raw.seq))

    async def reconcile(self, name: str, *, causation: str | None = None) -> ExperimentState:
        """Decide and append until nothing is left to do; retry on a lost conditional append."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            return await self._reconcile(name, causation)

    async def _reconcile(self, name: str, causation: str | None) -> ExperimentState:
        for _attempt in range(20):
            state = await self.ctx.store.load(name)
            try:
                await self._reconcile_once(state, causation)
                return state
            except WrongLastSequence:
                self.ctx.store.forget(name)
                await asyncio.sleep(0.01)
        raise RetryableError(f"experiment {name}: too many concurrent writers")

    async def _reconcile_once(self, state: ExperimentState, causation: str | None) -> None:
        changed = False
        for _ in range(1000):
            d = decide(state)
            if not d.events and not d.commands:
                break
            try:
                seqs = await self.ctx.store.append_decisions(state, d.events, causation=causation)
            except WrongLastSequence as exc:
                # Part of the batch landed before another writer: those decisions are facts now, and the
                # other writer decides from them, so their commands are ours to send.
                landed = [(e, seq) for e, seq in exc.appended if isinstance(e, ev.Event)]
                await self._act_on(state, landed, commands_for_landed(d, [e for e, _ in landed]), causation)
                raise
            await self._act_on(state, list(zip(d.events, seqs, strict=True)), d.commands, causation)
            changed = True
            if not d.events:
                break
        if changed or causation is None:
            await self.update_view(state)
        await self.maybe_snapshot(state)

    async def _act_on(self, state: ExperimentState, appended: list[tuple[ev.Event, int]], commands: list[Outgoing],
                      causation: str | None) -> None:
        """Log appended decisions and send their commands (a suggestion request's command needs its sequence)."""
        commands = list(commands)
        for event, seq in appended:
            if isinstance(event, ev.SuggestionRequested):
                commands.append(suggest_command(state, event.request, event.count, seq))
            log.info("experiment_decision", experiment=state.name, kind=ev.event_type(event), seq=seq)
        for out in commands:
            await send(self.ctx, out, causation=causation)

    async def maybe_snapshot(self, state: ExperimentState) -> None:
        """Save the fold every SNAPSHOT_EVERY events, so a restart does not re-read a long log from the start."""
        done = self._snapshot_at.get(state.name, 0)
        if state.experiment is not None and not state.deleted and state.events_applied - done >= self.SNAPSHOT_EVERY:
            self._snapshot_at[state.name] = state.events_applied
            await self.ctx.store.save_snapshot(state)
            log.info("snapshot_saved", experiment=state.name, seq=state.last_seq, events=state.events_applied)

    async def update_view(self, state: ExperimentState) -> None:
        """Write the view now if it is due (or the experiment ended), else once the interval has passed.

        The view of a large experiment is big, so it is not rewritten after every one of its events.
        """
        loop = asyncio.get_running_loop()
        name = state.name
        if state.is_finished() or loop.time() - self._view_written.get(name, -1e9) >= self.VIEW_INTERVAL:
            await self.write_view(state)
            self._view_written[name] = loop.time()
            return
        if name not in self._view_due:
            self._view_due[name] = loop.call_later(self.VIEW_INTERVAL, self._spawn_view_flush, name)

    def _spawn_view_flush(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_view(name))
        self._view_tasks.add(task)
        task.add_done_callback(self._view_tasks.discard)

    async def _flush_view(self, name: str) -> None:
        self._view_due.pop(name, None)
        state = await self.ctx.store.load(name)
        await self.write_view(state)
        self._view_written[name] = asyncio.get_running_loop().time()

    async def flush_views(self) -> None:
        """Write every view that is waiting for its interval (on shutdown)."""
        for name, handle in list(self._view_due.items()):
            handle.cancel()
            with contextlib.suppress(Exception):
                await self._flush_view(name)
        for task in list(self._view_tasks):
            with contextlib.suppress(Exception):
                await task

    async def write_view(self, state: ExperimentState) -> None:
        """Store the experiment's Katib-shaped status in KV for fast `natib get experiments`."""
        if state.experiment is None:
            return
        await self.ctx.bus.kv_put(subjects.state_key(state.name), msgspec.json.encode(view(state)))

    # -- requests ------------------------------------------------------------------------------

    async def api_create(self, data: bytes) -> bytes:
        """Validate and create an experiment; reply with its uid or every validation error."""
        req = msgspec.json.decode(data)
        try:
            exp = load_experiment(req["experiment"])
        except SpecError as exc:
            return _reply(False, errors=[str(e) for e in exc.errors])
        errors = [str(e) for e in validate_experiment(exp)] or unsupported(exp)
        if errors:
            return _reply(False, errors=errors)
        name = exp.metadata.name
        state = await self.ctx.store.load(name, fresh=True)
        if state.experiment is not None and not state.deleted:
            return _reply(False, errors=[f'experiments.kubeflow.org "{name}" already exists'])
        uid = str(uuid.uuid4())
        created = ev.ExperimentCreated(experiment=exp, uid=uid, seed=secrets.randbits(31),
                                       source_dir=req.get("source_dir"))
        try:
            await self.ctx.store.append_decisions(state, [created])
        except WrongLastSequence:
            return _reply(False, errors=[f'experiments.kubeflow.org "{name}" already exists'])
        log.info("experiment_created", experiment=name, uid=uid)
        if self.ctx.replica != "cli":
            await self.reconcile(name)
        return _reply(True, name=name, uid=uid)

    async def api_delete(self, data: bytes) -> bytes:
        """Delete an experiment: stop its trials, then remove its events, logs and view."""
        name = msgspec.json.decode(data)["name"]
        state = await self.ctx.store.load(name, fresh=True)
        if state.experiment is None:
            return _reply(False, errors=[f'experiments.kubeflow.org "{name}" not found'])
        if not state.deleted:
            await self.ctx.store.append_decisions(state, [ev.ExperimentDeleted()])
        for out in stop_commands(state, "Deleted", "Experiment was deleted"):
            await send(self.ctx, out)
        bus = self.ctx.bus
        await bus.purge(subjects.EVENTS_STREAM, subjects.experiment_events(name))
        await bus.purge(subjects.LOGS_STREAM, subjects.experiment_logs(name))
        await bus.kv_delete(subjects.state_key(name))
        await bus.object_delete(subjects.snapshot_name(name))
        self.ctx.store.forget(name)
        log.info("experiment_deleted", experiment=name)
        return _reply(True, name=name)

    async def api_patch(self, data: bytes) -> bytes:
        """Edit the three budget fields Katib allows; raising maxTrialCount restarts a resumable experiment."""
        req = msgspec.json.decode(data)
        name = req["name"]
        for _attempt in range(10):
            state = await self.ctx.store.load(name, fresh=True)
            if state.experiment is None or state.deleted:
                return _reply(False, errors=[f'experiments.kubeflow.org "{name}" not found'])
            decision, errors = patch_decision(state, req)
            if errors:
                return _reply(False, errors=errors)
            try:
                await self.ctx.store.append_decisions(state, decision)
            except WrongLastSequence:
                continue
            if self.ctx.replica != "cli":
                await self.reconcile(name)
            return _reply(True, name=name, restarted=any(isinstance(e, ev.ExperimentRunning) for e in decision))
        return _reply(False, errors=[f"experiment {name} is changing too fast; try again"])

    async def api_ping(self, data: bytes) -> bytes:
        """Tell the CLI that natib actors are up."""
        return _reply(True, replica=self.ctx.replica)


def restartable(state: ExperimentState) -> bool:
    """Katib's restart rule: succeeded by reaching maxTrialCount, with resumePolicy LongRunning or FromVolume."""
    assert state.experiment is not None
    if not state.is_finished():
        return True
    succeeded = next((c for c in state.conditions if c.type == "Succeeded" and c.status == "True"), None)
    return (succeeded is not None and succeeded.reason == "ExperimentMaxTrialsReached"
            and state.experiment.spec.resume_policy in ("LongRunning", "FromVolume"))


def patch_decision(state: ExperimentState, req: dict[str, Any]) -> tuple[list[ev.Event], list[str]]:
    """The events a budget edit produces, and the errors that refuse it (pure)."""
    assert state.experiment is not None
    old = state.experiment
    budgets = {
        "max_trial_count": req.get("max_trial_count", old.spec.max_trial_count),
        "parallel_trial_count": req.get("parallel_trial_count", old.spec.parallel_trial_count),
        "max_failed_trial_count": req.get("max_failed_trial_count", old.spec.max_failed_trial_count),
    }
    new = msgspec.structs.replace(old, spec=msgspec.structs.replace(old.spec, **budgets))
    errors = [str(e) for e in validate_update(old, new, len(state.trials), restartable(state))]
    errors += [str(e) for e in validate_experiment(new, check_settings=False)
               if e.path in ("spec.maxTrialCount", "spec.parallelTrialCount", "spec.maxFailedTrialCount")]
    if errors or new.spec == old.spec:
        return [], errors
    events: list[ev.Event] = [ev.BudgetChanged(**budgets)]
    if state.is_finished():
        events.append(ev.ExperimentRunning(message="Experiment is restarted"))
    return events, []


def view(state: ExperimentState) -> dict[str, Any]:
    """The experiment as Katib's API returns it: metadata, spec and status."""
    assert state.experiment is not None
    doc: dict[str, Any] = msgspec.to_builtins(state.experiment)
    doc.setdefault("metadata", {})["uid"] = state.uid
    doc["status"] = state.katib_status()
    return doc


def _reply(ok: bool, **fields: object) -> bytes:
    return msgspec.json.encode({"ok": ok, **fields})


__all__ = ["Decision", "ExperimentController", "decide", "trial_name", "unsupported", "view"]
