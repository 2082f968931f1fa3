"""Horizontal scale of the trial launcher: no-op trial throughput with 1, 2 and 4 launcher replicas.

Every run gets a fresh nats-server and home. The controller, suggestion, collector and early-stopping
actors run one replica each in this process; the launcher runs N replicas, in this process too (as
``natib actor launcher --replicas N`` would), or with ``--processes`` as N separate ``natib actor
launcher`` processes (as N pods would). Each run then checks from the event log that no work was
duplicated: every trial created once, started once (one attempt), and ended once; in-process runs also
count how many launches each replica took, to show that the replicas shared the work.

    python bench/scale.py [--trials 200] [--parallel 16] [--replicas 1 2 4] [--repeat 3] [--processes] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from harness import noop_experiment, run_to_end

from natib.actors import app
from natib.actors.base import Context
from natib.actors.launcher.actor import launcher_for
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.runtime.bus import Bus
from natib.runtime.logging import configure_logging
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings

NAME = "scale"
OTHERS = ["controller", "suggestion", "collector", "early-stopping"]
OUTCOMES = (ev.TrialSucceeded, ev.TrialFailed, ev.TrialMetricsUnavailable, ev.TrialKilled, ev.TrialEarlyStopped)


def counting_launcher(launches: Counter[str]):  # type: ignore[no-untyped-def]
    """A launcher factory whose launchers count, per replica, the LaunchTrial commands they handle."""
    def make(ctx: Context):  # type: ignore[no-untyped-def]
        launcher = launcher_for(ctx)
        launch = launcher.launch

        async def counted(experiment: str, cmd):  # type: ignore[no-untyped-def]
            launches[ctx.replica] += 1
            await launch(experiment, cmd)

        launcher.launch = counted  # type: ignore[method-assign]
        return launcher
    return make


async def duplicates(bus: Bus) -> dict[str, object]:
    """Count each trial's creations, starts and outcomes in the log; anything but one of each is duplication."""
    created: Counter[str] = Counter()
    started: Counter[tuple[str, int]] = Counter()
    ended: Counter[str] = Counter()
    async for raw in bus.read(subjects.EVENTS_STREAM, subjects.experiment_events(NAME)):
        env = codec.decode(raw.data)
        body = env.body if env is not None else None
        if isinstance(body, ev.TrialCreated):
            created[body.trial] += 1
        elif isinstance(body, ev.TrialStarted):
            started[(body.trial, body.attempt)] += 1
        elif isinstance(body, OUTCOMES):
            ended[body.trial] += 1
    return {
        "created_twice": sum(1 for n in created.values() if n > 1),
        "started_twice": sum(1 for n in started.values() if n > 1),
        "rerun_attempts": sum(1 for _t, a in started if a > 1),
        "never_started": len(set(created) - {t for t, _a in started}),
        "ended_twice": sum(1 for n in ended.values() if n > 1),
        "trials_created": len(created),
    }


async def one_run(trials: int, parallel: int, replicas: int, processes: bool) -> dict[str, object]:
    """One experiment against a fresh server; seconds from creation to the end, and the duplication check."""
    launches: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="natib-scale-") as tmp, TestServer(Path(tmp) / "nats") as server:
        home = Path(tmp) / "home"
        settings = Settings(nats_url=server.url, home=home, drain_timeout=2.0)
        stop, ready, lready = asyncio.Event(), asyncio.Event(), asyncio.Event()
        others = asyncio.create_task(app.run_actors(settings, server.url, OTHERS, stop, ready=ready))
        await ready.wait()
        procs: list[asyncio.subprocess.Process] = []
        saved = app.ACTOR_KINDS["launcher"]
        if processes:
            env = {**os.environ, "NATS_URL": server.url, "NATIB_HOME": str(home), "NATIB_LOG_LEVEL": "error",
                   "NATIB_LOG_FORMAT": "json", "NATIB_DRAIN_TIMEOUT": "2"}
            natib = str(Path(sys.executable).parent / "natib")
            procs = [await asyncio.create_subprocess_exec(natib, "actor", "launcher", env=env,
                                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for _ in range(replicas)]
            launchers = None
        else:
            app.ACTOR_KINDS["launcher"] = counting_launcher(launches)
            launchers = asyncio.create_task(app.run_actors(settings, server.url, ["launcher"], stop,
                                                           replicas=replicas, ready=lready))
            await lready.wait()
        bus = await Bus.connect(server.url)
        try:
            if processes:
                await _wait_for_consumers(bus, replicas)
            elapsed, state = await run_to_end(bus, noop_experiment(NAME, trials, parallel))
            dup = await duplicates(bus)
        finally:
            stop.set()
            for p in procs:
                p.terminate()
            for p in procs:
                await asyncio.wait_for(p.wait(), 20)
            await others
            if launchers is not None:
                await launchers
            app.ACTOR_KINDS["launcher"] = saved
            await bus.close()
    return {"seconds": elapsed, "completed": state.completed_count(), "launches_per_replica": dict(launches), **dup}


async def _wait_for_consumers(bus: Bus, replicas: int) -> None:
    """Wait until every launcher process is pulling from the shared launcher consumer."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # The consumer does not exist until the first launcher process has started.
        with contextlib.suppress(Exception):
            info = await bus.js.consumer_info(subjects.COMMANDS_STREAM, "launcher")
            if info.num_waiting >= replicas:
                return
        await asyncio.sleep(0.1)
    raise SystemExit("launcher processes did not start within 60 s")


async def main() -> None:
    """Measure every replica count and print throughput, speed-up and the duplication check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3, help="runs per replica count; the median is reported")
    parser.add_argument("--processes", action="store_true", help="run each launcher replica as its own process")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    configure_logging("error", "json")
    rows = []
    for replicas in args.replicas:
        runs = [await one_run(args.trials, args.parallel, replicas, args.processes) for _ in range(args.repeat)]
        seconds = statistics.median(r["seconds"] for r in runs)  # type: ignore[misc]
        clean = all(r["completed"] == args.trials == r["trials_created"] and not any(
            r[k] for k in ("created_twice", "started_twice", "rerun_attempts", "never_started", "ended_twice"))
            for r in runs)
        rows.append({
            "launcher_replicas": replicas, "seconds": round(seconds, 3),
            "trials_per_second": round(args.trials / seconds, 1),
            "runs_seconds": [round(r["seconds"], 3) for r in runs],  # type: ignore[call-overload]
            "launches_per_replica": [r["launches_per_replica"] for r in runs], "no_duplicates": clean,
        })
    base = rows[0]["trials_per_second"]
    for row in rows:
        row["speedup"] = round(row["trials_per_second"] / base, 2)  # type: ignore[operator]
    result = {"trials": args.trials, "parallel": args.parallel, "repeat": args.repeat,
              "mode": "processes" if args.processes else "in-process", "cpus": os.cpu_count(), "rows": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.trials} no-op trials, {args.parallel} in parallel, launcher replicas "
              f"{result['mode']}, median of {args.repeat} runs, {os.cpu_count()} CPUs")
        print("| launcher replicas | seconds | trials/s | speed-up | runs (s) | launches per replica | no duplicates |")
        print("|---:|---:|---:|---:|---|---|---|")
        for row in rows:
            share = "; ".join(" ".join(f"{k}:{v}" for k, v in sorted(d.items())) for d in row["launches_per_replica"]
                              if d)
            print(f"| {row['launcher_replicas']} | {row['seconds']:.2f} | {row['trials_per_second']} | "
                  f"{row['speedup']:.2f}x | {', '.join(f'{s:.2f}' for s in row['runs_seconds'])} | "
                  f"{share or 'n/a'} | {'yes' if row['no_duplicates'] else 'NO'} |")
    if not all(row["no_duplicates"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
