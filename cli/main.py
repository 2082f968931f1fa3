"""The ``natib`` command line: run, inspect and debug Katib experiments on NATS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import yaml

from natib import __version__
from natib.actors.experiment import unsupported
from natib.messages import codec, subjects
from natib.messages.codec import UndecodableMessage
from natib.messages.spec import SpecError, load_experiments
from natib.messages.state import ExperimentState
from natib.messages.validation import validate_experiment
from natib.runtime.bus import Bus, NoResponders
from natib.runtime.errors import NatibError
from natib.runtime.logging import configure_logging
from natib.runtime.server import ensure_server, server_status, stop_server
from natib.runtime.settings import ENV_VARS, Settings
from natib.runtime.store import EventStore, apply_raw


class CliError(NatibError):
    """A user-facing error: printed as ``error: ...`` with exit status 1."""


# -- connection helpers ------------------------------------------------------------------------------


def nats_url(settings: Settings) -> str:
    """The configured NATS_URL, or natib's own server (started if it is not running)."""
    if settings.nats_url:
        return settings.nats_url
    return ensure_server(settings.home, settings.nats_server).url


async def connect(settings: Settings) -> Bus:
    """Connect to NATS and make sure natib's streams exist."""
    url = await asyncio.to_thread(nats_url, settings)
    bus = await Bus.connect(url, name="natib-cli", log_max_age=settings.log_max_age)
    await bus.ensure_topology()
    return bus


async def actors_running(bus: Bus) -> bool:
    """True when a natib controller answers on this NATS."""
    try:
        await bus.request(subjects.api("ping"), b"{}", timeout=2.0)
    except (NoResponders, Exception):
        return False
    return True


async def request(bus: Bus, endpoint: str, payload: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Call a controller endpoint; without running actors, the CLI applies the controller's own logic.

    Either way the controller code decides, so ``natib create`` works before ``natib up`` (the
    experiment starts when the actors do) and ``natib delete`` works while they are down.
    """
    data = msgspec.json.encode(payload)
    try:
        reply = await bus.request(subjects.api(endpoint), data, timeout=settings.request_timeout)
    except NoResponders:
        from natib.actors.base import Context
        from natib.actors.experiment import ExperimentController

        ctx = Context(bus=bus, store=EventStore(bus), settings=settings, stop=asyncio.Event(), replica="cli")
        controller = ExperimentController(ctx)
        handler = {"create": controller.api_create, "delete": controller.api_delete,
                   "patch": controller.api_patch}[endpoint]
        reply = await handler(data)
    out: dict[str, Any] = msgspec.json.decode(reply)
    return out


# -- formatting --------------------------------------------------------------------------------------


def dump(doc: Any, fmt: str) -> str:
    """Render a document as JSON or YAML."""
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False)
    return json.dumps(doc, indent=2)


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain aligned table like kubectl's."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def age(ts: str | None) -> str:
    """Elapsed time since an RFC3339 timestamp, as kubectl prints it."""
    if not ts:
        return ""
    when = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    secs = int((datetime.now(UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def last_condition(status: dict[str, Any]) -> str:
    """The type of the latest true condition."""
    conds = [c for c in status.get("conditions", []) if c.get("status") == "True"]
    return conds[-1]["type"] if conds else ""


def best_summary(doc: dict[str, Any]) -> str:
    """The optimal trial's objective value, chosen by the objective metric's strategy."""
    status = doc.get("status") or {}
    objective = (doc.get("spec") or {}).get("objective") or {}
    name = objective.get("objectiveMetricName")
    strategy = next((m.get("value") for m in objective.get("metricStrategies") or [] if m.get("name") == name),
                    "latest")
    metrics = ((status.get("currentOptimalTrial") or {}).get("observation") or {}).get("metrics") or []
    for m in metrics:
        if m["name"] == name:
            value = m.get(strategy, "unavailable")
            return f"{name}={m['latest'] if value == 'unavailable' else value}"
    return ""


# -- commands ----------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Validate experiment files; exit 1 if any is invalid."""
    bad = 0
    for path in args.files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}")
            bad += 1
            continue
        try:
            exps = load_experiments(text)
        except SpecError as exc:
            bad += 1
            for e in exc.errors:
                print(f"{path}: {e}")
            continue
        errors = [e for exp in exps for e in validate_experiment(exp)]
        if errors:
            bad += 1
            for e in errors:
                print(f"{path}: {e}")
        else:
            print(f"{path}: valid ({', '.join(x.metadata.name for x in exps)})")
    return 1 if bad else 0


def _read_experiment_file(path: str) -> tuple[dict[str, Any], str]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        exps = load_experiments(text)
    except SpecError as exc:
        raise CliError("\n".join(f"{path}: {e}" for e in exc.errors)) from exc
    if len(exps) != 1:
        raise CliError(f"{path}: expected one Experiment, found {len(exps)}")
    errors = [str(e) for e in validate_experiment(exps[0])] or unsupported(exps[0])
    if errors:
        raise CliError("\n".join(f"{path}: {e}" for e in errors))
    return msgspec.to_builtins(exps[0]), str(p.resolve().parent)


async def _create(bus: Bus, doc: dict[str, Any], source_dir: str, settings: Settings, *, replace: bool) -> str:
    name = doc["metadata"]["name"]
    if replace:
        reply = await request(bus, "delete", {"name": name}, settings)
        if reply.get("ok"):
            print(f"experiment.kubeflow.org/{name} deleted")
    reply = await request(bus, "create", {"experiment": doc, "source_dir": source_dir}, settings)
    if not reply.get("ok"):
        raise CliError("\n".join(reply.get("errors") or [str(reply.get("error"))]))
    return name


async def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    """Submit an experiment to running natib actors."""
    doc, source_dir = _read_experiment_file(args.file)
    bus = await connect(settings)
    try:
        name = await _create(bus, doc, source_dir, settings, replace=False)
    finally:
        await bus.close()
    print(f"experiment.kubeflow.org/{name} created")
    return 0


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Create an experiment and follow it to the end; runs its own actors when none are running."""
    from natib.actors.app import ACTOR_KINDS, run_actors

    doc, source_dir = _read_experiment_file(args.file)
    bus = await connect(settings)
    stop = asyncio.Event()
    own: asyncio.Task[None] | None = None
    try:
        if not await actors_running(bus):
            ready = asyncio.Event()
            url = settings.nats_url or (await asyncio.to_thread(nats_url, settings))
            own = asyncio.create_task(run_actors(settings, url, list(ACTOR_KINDS), stop, ready=ready))
            await asyncio.wait_for(ready.wait(), 30)
            for _ in range(100):
                if await actors_running(bus):
                    break
                await asyncio.sleep(0.1)
        name = await _create(bus, doc, source_dir, settings, replace=args.replace)
        print(f"experiment.kubeflow.org/{name} created")
        state = await follow(bus, name, quiet=args.quiet, timeout=args.timeout)
    finally:
        stop.set()
        if own is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(own, settings.drain_timeout + 5)
        await bus.close()
    return print_result(state)


async def follow(bus: Bus, name: str, *, quiet: bool, timeout: float | None) -> ExperimentState:
    """Print trial outcomes as they happen until the experiment ends and its trials have stopped."""
    state = ExperimentState(name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    finished_at: float | None = None
    tail = await bus.tail(subjects.EVENTS_STREAM, subjects.experiment_events(name))
    try:
        while True:
            wait = 1.0
            if deadline is not None:
                wait = min(wait, max(0.01, deadline - loop.time()))
            raw = await tail.get(wait)
            if raw is not None:
                before = {t.name: t.phase for t in state.trials.values()}
                apply_raw(state, raw)
                if not quiet:
                    _print_progress(state, before)
            if state.is_finished():
                finished_at = finished_at or loop.time()
                if state.active() == 0 or loop.time() - finished_at > 15:
                    return state
            if deadline is not None and loop.time() >= deadline:
                raise CliError(f"experiment {name} did not finish within {timeout} s (it keeps running)")
    finally:
        await tail.close()


def _print_progress(state: ExperimentState, before: dict[str, str]) -> None:
    for t in sorted(state.trials.values(), key=lambda t: t.index):
        if before.get(t.name) == t.phase or t.phase in ("Pending", "Running"):
            continue
        value = state.objective_of(t)
        params = ", ".join(f"{k}={v}" for k, v in t.assignment.items())
        metric = state.experiment.spec.objective.objective_metric_name if state.experiment else ""
        done = state.completed_count()
        shown = f"{metric}={value}" if value is not None else t.message
        print(f"[{done}] {t.name} {t.phase}: {shown} ({params})", flush=True)


def print_result(state: ExperimentState) -> int:
    """Print the final condition and the best trial; 0 if the experiment succeeded."""
    cond = state.condition()
    status = state.katib_status()
    print(f"experiment {state.name} {cond.type if cond else state.phase}"
          f"{f' ({cond.reason}): {cond.message}' if cond else ''}")
    print(f"trials: {status.get('trials', 0)} total, {status.get('trialsSucceeded', 0)} succeeded, "
          f"{status.get('trialsFailed', 0)} failed, {status.get('trialsKilled', 0)} killed, "
          f"{status.get('trialsEarlyStopped', 0)} early stopped, "
          f"{status.get('trialMetricsUnavailable', 0)} metrics unavailable")
    best = status.get("currentOptimalTrial") or {}
    if best.get("bestTrialName"):
        print(f"best trial: {best['bestTrialName']}")
        for p in best["parameterAssignments"]:
            print(f"  {p['name']} = {p['value']}")
        for m in best["observation"]["metrics"]:
            print(f"  {m['name']}: latest={m['latest']} min={m['min']} max={m['max']}")
    return 0 if state.phase == "Succeeded" else 1


async def load_state(bus: Bus, name: str) -> ExperimentState:
    """Fold an experiment's whole log (CliError if it does not exist)."""
    state = await EventStore(bus).load(name)
    if state.experiment is None:
        raise CliError(f'experiments.kubeflow.org "{name}" not found')
    return state


async def cmd_get(args: argparse.Namespace, settings: Settings) -> int:
    """List experiments or trials."""
    from natib.actors.experiment import view

    bus = await connect(settings)
    try:
        if args.resource == "metrics":
            if not args.name:
                raise CliError("usage: natib get metrics TRIAL [-e EXPERIMENT] [-o json|yaml]")
            return await cmd_get_metrics(args, settings, bus)
        if args.resource in ("experiments", "experiment", "exp"):
            items = [msgspec.json.decode(v) for _k, v in await bus.kv_items("experiment.")]
            if args.name:
                items = [i for i in items if i["metadata"]["name"] == args.name]
                if not items:
                    state = await load_state(bus, args.name)
                    items = [view(state)]
            if args.output in ("json", "yaml"):
                print(dump({"apiVersion": "kubeflow.org/v1beta1", "kind": "ExperimentList", "items": items},
                           args.output))
                return 0
            rows = [[i["metadata"]["name"], last_condition(i["status"]), str(i["status"].get("trials", 0)),
                     str(i["status"].get("trialsSucceeded", 0)), str(i["status"].get("trialsFailed", 0)),
                     best_summary(i), age(i["status"].get("startTime"))] for i in items]
            print(table(rows, ["NAME", "STATUS", "TRIALS", "SUCCEEDED", "FAILED", "BEST", "AGE"]) if rows
                  else "No experiments found.")
            return 0
        names = [args.experiment] if args.experiment else [
            k.split(".", 1)[1] for k, _v in await bus.kv_items("experiment.")]
        trials: list[dict[str, Any]] = []
        rows = []
        for name in names:
            state = await load_state(bus, name)
            metric = state.experiment.spec.objective.objective_metric_name if state.experiment else ""
            for t in sorted(state.trials.values(), key=lambda t: t.index):
                trials.append(state.trial_status(t))
                value = state.objective_of(t)
                rows.append([t.name, name, t.phase, f"{metric}={value}" if value is not None else "",
                             ", ".join(f"{k}={v}" for k, v in t.assignment.items())])
        if args.output in ("json", "yaml"):
            print(dump({"apiVersion": "kubeflow.org/v1beta1", "kind": "TrialList", "items": trials}, args.output))
        else:
            print(table(rows, ["NAME", "EXPERIMENT", "STATUS", "OBJECTIVE", "PARAMETERS"]) if rows
                  else "No trials found.")
        return 0
    finally:
        await bus.close()


async def cmd_get_metrics(args: argparse.Namespace, settings: Settings, bus: Bus) -> int:
    """Print one trial's metric history: every reported value in report order."""
    experiment = args.experiment or args.name.rsplit("-", 1)[0]
    state = await load_state(bus, experiment)
    trial = state.trials.get(args.name)
    if trial is None:
        raise CliError(f'trials.kubeflow.org "{args.name}" not found in experiment {experiment}')
    logs = [{"step": m.step, "name": m.name, "value": m.value,
             "timestamp": m.timestamp.isoformat() if m.timestamp else None} for m in trial.metric_logs]
    if args.output in ("json", "yaml"):
        print(dump({"trial": trial.name, "experiment": experiment, "phase": trial.phase, "metrics": logs,
                    "observation": [msgspec.to_builtins(m) for m in trial.observation({}, state.metric_names())]},
                   args.output))
    else:
        rows = [[str(m["step"]), m["name"], m["value"], m["timestamp"] or ""] for m in logs]
        print(table(rows, ["STEP", "NAME", "VALUE", "TIMESTAMP"]) if rows else f"No metrics reported by {trial.name}.")
    return 0


async def cmd_describe(args: argparse.Namespace, settings: Settings) -> int:
    """Show one experiment in full."""
    from natib.actors.experiment import view

    bus = await connect(settings)
    try:
        state = await load_state(bus, args.name)
    finally:
        await bus.close()
    doc = view(state)
    if args.output in ("json", "yaml"):
        print(dump(doc, args.output))
        return 0
    spec = state.experiment.spec if state.experiment else None
    print(f"Name:         {state.name}\nUID:          {state.uid}")
    if spec is not None:
        print(f"Algorithm:    {spec.algorithm.algorithm_name if spec.algorithm else ''}")
        print(f"Objective:    {spec.objective.type} {spec.objective.objective_metric_name}"
              f"{f' (goal {spec.objective.goal})' if spec.objective.goal is not None else ''}")
        print(f"Budget:       parallel {spec.parallel_trial_count}, max {spec.max_trial_count}, "
              f"max failed {spec.max_failed_trial_count}")
    print("Conditions:")
    for c in state.conditions:
        print(f"  {c.type:<11} {c.status:<6} {c.reason:<32} {c.message}")
    print(print_trials_block(state))
    return 0


def print_trials_block(state: ExperimentState) -> str:
    """The trials of an experiment as a table with their objective values."""
    rows = []
    for t in sorted(state.trials.values(), key=lambda t: t.index):
        value = state.objective_of(t)
        rows.append([t.name, t.phase, value or "", ", ".join(f"{k}={v}" for k, v in t.assignment.items())])
    best = state.best_trial()
    head = f"Best trial:   {best.name}\n" if best else ""
    return head + "Trials:\n" + (table(rows, ["NAME", "STATUS", "OBJECTIVE", "PARAMETERS"]) if rows else "  none")


async def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    """Print a trial's output (from NATS, so it works wherever the trial ran)."""
    experiment = args.experiment or args.trial.rsplit("-", 1)[0]
    bus = await connect(settings)
    try:
        subject = subjects.trial_log(experiment, args.trial)
        if not args.follow and await bus.get_next(subjects.LOGS_STREAM, 1, subject) is None:
            raise CliError(f"no output recorded for trial {args.trial} (experiment {experiment})")
        async for raw in bus.read(subjects.LOGS_STREAM, subject, follow=args.follow):
            sys.stdout.write(raw.data.decode("utf-8", "replace"))
            sys.stdout.flush()
            if args.follow and raw.headers.get("Natib-Eof"):
                break
    finally:
        await bus.close()
    return 0


async def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    """Print an experiment's raw event log, one event per line."""
    bus = await connect(settings)
    try:
        subject = subjects.experiment_events(args.experiment)
        if not args.follow and await bus.get_next(subjects.EVENTS_STREAM, 1, subject) is None:
            raise CliError(f'experiments.kubeflow.org "{args.experiment}" has no events')
        async for raw in bus.read(subjects.EVENTS_STREAM, subject, follow=args.follow):
            print(format_event(raw.seq, raw.subject, raw.data, args.output), flush=True)
    finally:
        await bus.close()
    return 0


def format_event(seq: int, subject: str, data: bytes, fmt: str) -> str:
    """One event as a line: JSON with its sequence, or ``seq time type key=value...``."""
    try:
        env = codec.decode(data)
    except UndecodableMessage as exc:
        return json.dumps({"seq": seq, "subject": subject, "error": str(exc)}) if fmt == "json" else \
            f"{seq:>6} {'-':<24} undecodable {exc}"
    if fmt == "json":
        doc = json.loads(data)
        return json.dumps({"seq": seq, "subject": subject, **doc})
    if env is None:
        return f"{seq:>6} {'-':<24} (unknown event type)"
    body = msgspec.to_builtins(env.body)
    kind = body.pop("type", "?")
    if kind == "experiment.created":
        body = {"uid": body.get("uid"), "seed": body.get("seed")}
    fields = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in body.items()
                      if k not in ("run_spec",) and v not in (None, [], {}))
    return f"{seq:>6} {env.time.strftime('%H:%M:%S.%f')[:-3]:<12} {kind:<26} {fields}"


async def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Delete an experiment: stop its trials and remove its events and logs."""
    bus = await connect(settings)
    try:
        reply = await request(bus, "delete", {"name": args.name}, settings)
    finally:
        await bus.close()
    if not reply.get("ok"):
        raise CliError("\n".join(reply.get("errors") or []))
    print(f"experiment.kubeflow.org/{args.name} deleted")
    return 0


async def cmd_patch(args: argparse.Namespace, settings: Settings) -> int:
    """Edit an experiment's trial budgets (and restart it when it may be resumed)."""
    payload: dict[str, Any] = {"name": args.name}
    for flag, key in (("max_trials", "max_trial_count"), ("parallel", "parallel_trial_count"),
                      ("max_failed", "max_failed_trial_count")):
        if getattr(args, flag) is not None:
            payload[key] = getattr(args, flag)
    if len(payload) == 1:
        raise CliError("nothing to change: give --max-trials, --parallel or --max-failed")
    bus = await connect(settings)
    try:
        reply = await request(bus, "patch", payload, settings)
    finally:
        await bus.close()
    if not reply.get("ok"):
        raise CliError("\n".join(reply.get("errors") or []))
    print(f"experiment.kubeflow.org/{args.name} patched" + (" (restarting)" if reply.get("restarted") else ""))
    return 0


async def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Run NATS (when needed) and actors in the foreground until SIGTERM/SIGINT."""
    from natib.actors.app import ACTOR_KINDS, run_actors
    from natib.runtime.supervisor import install_signal_handlers

    kinds = [args.kind] if getattr(args, "kind", None) else list(ACTOR_KINDS)
    url = await asyncio.to_thread(nats_url, settings)
    stop = asyncio.Event()
    install_signal_handlers(stop)
    print(f"natib {__version__}: {', '.join(kinds)} on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    health_port = getattr(args, "health_port", None) or settings.health_port
    await run_actors(settings, url, kinds, stop, replicas=getattr(args, "replicas", 1), health_port=health_port)
    return 0


def cmd_server(args: argparse.Namespace, settings: Settings) -> int:
    """Start, stop or show natib's own nats-server."""
    if args.action == "start":
        info = ensure_server(settings.home, settings.nats_server)
        print(f"nats-server {'started' if info.started else 'running'}: {info.url} (pid {info.pid})")
    elif args.action == "stop":
        print("nats-server stopped" if stop_server(settings.home) else "nats-server was not running")
    else:
        info = server_status(settings.home)
        print(f"nats-server running: {info.url} (pid {info.pid})" if info else "nats-server is not running")
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print every environment variable natib reads, its default and current value."""
    import os

    from natib.runtime.auth import AUTH_VARS

    secret = ("NATS_PASSWORD", "NATS_TOKEN")
    rows = [[v.name, v.default, "***" if v.name in secret and os.environ.get(v.name) else os.environ.get(v.name, ""),
             v.meaning] for v in (*ENV_VARS, *AUTH_VARS)]
    print(table(rows, ["VARIABLE", "DEFAULT", "CURRENT", "MEANING"]))
    return 0


# -- parser --------------------------------------------------------------------------------------------


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 1 to 65535, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every natib command."""
    p = argparse.ArgumentParser(prog="natib", description="Katib-compatible hyperparameter tuning on NATS.")
    p.add_argument("--version", action="version", version=f"natib {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("up", help="run NATS (if needed) and all actors in the foreground")
    s.add_argument("--health-port", type=_port, default=None, metavar="N",
                   help="serve /healthz and /readyz on this port (default: env NATIB_HEALTH_PORT, else none)")
    s.set_defaults(func=cmd_up)
    s = sub.add_parser("actor", help="run the replicas of one actor kind")
    s.add_argument("kind", choices=["controller", "suggestion", "launcher", "collector", "early-stopping",
                                    "k8s-controller", "dbmanager"])
    s.add_argument("--replicas", type=int, default=1)
    s.add_argument("--health-port", type=_port, default=None, metavar="N",
                   help="serve /healthz and /readyz on this port (default: env NATIB_HEALTH_PORT, else none)")
    s.set_defaults(func=cmd_up)
    s = sub.add_parser("run", help="create an experiment, follow it, print the best trial")
    s.add_argument("file")
    s.add_argument("--replace", action="store_true", help="delete an experiment of the same name first")
    s.add_argument("--timeout", type=float, default=None, help="give up following after this many seconds")
    s.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("create", help="submit an experiment to running actors")
    s.add_argument("-f", "--file", required=True)
    s.set_defaults(func=cmd_create)
    s = sub.add_parser("get", help="list experiments or trials, or print a trial's metrics")
    s.add_argument("resource", choices=["experiments", "experiment", "exp", "trials", "trial", "metrics"])
    s.add_argument("name", nargs="?")
    s.add_argument("-e", "--experiment", help="trials of this experiment only")
    s.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    s.set_defaults(func=cmd_get)
    s = sub.add_parser("describe", help="show an experiment in full")
    s.add_argument("resource", choices=["experiment", "experiments", "exp"])
    s.add_argument("name")
    s.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    s.set_defaults(func=cmd_describe)
    s = sub.add_parser("logs", help="print a trial's output")
    s.add_argument("trial")
    s.add_argument("-e", "--experiment")
    s.add_argument("-f", "--follow", action="store_true")
    s.set_defaults(func=cmd_logs)
    s = sub.add_parser("events", help="print an experiment's event log")
    s.add_argument("experiment")
    s.add_argument("-f", "--follow", action="store_true")
    s.add_argument("-o", "--output", choices=["text", "json"], default="text")
    s.set_defaults(func=cmd_events)
    s = sub.add_parser("delete", help="delete an experiment and stop its trials")
    s.add_argument("resource", choices=["experiment", "experiments", "exp"])
    s.add_argument("name")
    s.set_defaults(func=cmd_delete)
    s = sub.add_parser("patch", help="edit an experiment's trial budgets (restarts a resumable experiment)")
    s.add_argument("resource", choices=["experiment", "experiments", "exp"])
    s.add_argument("name")
    s.add_argument("--max-trials", type=int, dest="max_trials", help="new maxTrialCount")
    s.add_argument("--parallel", type=int, help="new parallelTrialCount")
    s.add_argument("--max-failed", type=int, dest="max_failed", help="new maxFailedTrialCount")
    s.set_defaults(func=cmd_patch)
    s = sub.add_parser("validate", help="check experiment files; exit 1 if any is invalid")
    s.add_argument("files", nargs="+")
    s.set_defaults(func=cmd_validate)
    s = sub.add_parser("server", help="manage natib's own nats-server")
    s.add_argument("action", choices=["start", "stop", "status"])
    s.set_defaults(func=cmd_server)
    s = sub.add_parser("config", help="list the environment variables natib reads")
    s.set_defaults(func=cmd_config)
    from natib.cli.replay import register_replay_commands

    register_replay_commands(sub)
    from natib.actors.launcher.sidecar import register_sidecar_command

    register_sidecar_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``natib`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level if args.command in ("up", "actor") else "warning",
                          settings.log_format)
        result = args.func(args, settings)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except NatibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `head`) went away; stop quietly like other Unix tools.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
