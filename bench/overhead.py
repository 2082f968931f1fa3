"""natib's per-trial overhead: no-op trials through natib against spawning the same process directly.

Runs N no-op trials (``true`` by default) with parallelism P through every natib actor in one process,
against a throwaway nats-server, and in the same run spawns the same command N times from Python with
the same parallelism. Prints both throughputs, their ratio, and natib's extra time per trial.

    python bench/overhead.py [--trials 200] [--parallel 8] [--command true]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import noop_experiment, run_to_end

from natib.actors.app import ACTOR_KINDS, run_actors
from natib.messages.state import ExperimentState
from natib.runtime.bus import Bus
from natib.runtime.logging import configure_logging
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings


async def spawn_floor(trials: int, parallel: int, argv: list[str]) -> float:
    """Seconds to spawn and reap the command ``trials`` times, ``parallel`` at a time, from Python."""
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(trials)))
    return time.perf_counter() - start


async def through_natib(
    trials: int, parallel: int, argv: list[str], home: Path, url: str
) -> tuple[float, ExperimentState]:
    """Seconds from creating the experiment to its end, with every actor running in this process."""
    settings = Settings(nats_url=url, home=home, drain_timeout=2.0)
    stop, ready = asyncio.Event(), asyncio.Event()
    actors = asyncio.create_task(run_actors(settings, url, list(ACTOR_KINDS), stop, ready=ready))
    await ready.wait()
    bus = await Bus.connect(url)
    try:
        elapsed, state = await run_to_end(bus, noop_experiment("overhead", trials, parallel, argv))
    finally:
        stop.set()
        await actors
        await bus.close()
    return elapsed, state


async def main() -> None:
    """Run both measurements and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--command", default="true", help="the no-op trial command (e.g. 'python -c pass')")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    configure_logging("error", "json")
    argv = shlex.split(args.command)
    # Trials find commands with natib's interpreter directory first on PATH; the floor must run the same binary.
    trial_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    argv[0] = shutil.which(argv[0], path=trial_path) or argv[0]
    with tempfile.TemporaryDirectory(prefix="natib-bench-") as tmp, TestServer(Path(tmp) / "nats") as server:
        floor = await spawn_floor(args.trials, args.parallel, argv)
        natib, state = await through_natib(args.trials, args.parallel, argv, Path(tmp) / "home", server.url)
    counts = state.counts()
    latencies = sorted((t.completed - t.created).total_seconds() for t in state.trials.values() if t.completed)
    result = {
        "trials": args.trials, "parallel": args.parallel, "command": args.command,
        "spawn_seconds": round(floor, 3), "natib_seconds": round(natib, 3),
        "spawn_trials_per_second": round(args.trials / floor, 1),
        "natib_trials_per_second": round(args.trials / natib, 1),
        "slowdown_ratio": round(natib / floor, 2),
        "overhead_ms_per_trial": round((natib - floor) * args.parallel / args.trials * 1000, 1),
        "median_trial_latency_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "completed": state.completed_count(), "buckets": {k: v for k, v in counts.items() if v},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.trials} no-op trials ({args.command!r}), {args.parallel} in parallel")
    print(f"  spawn from Python: {floor:7.2f} s  {result['spawn_trials_per_second']:8.1f} trials/s")
    print(f"  through natib:     {natib:7.2f} s  {result['natib_trials_per_second']:8.1f} trials/s")
    print(f"  natib / spawn:     {result['slowdown_ratio']:.2f}x; overhead {result['overhead_ms_per_trial']} ms per "
          f"trial slot; median trial latency (created -> outcome) {result['median_trial_latency_ms']} ms")
    print(f"  outcome: {result['buckets']}")
    if state.completed_count() != args.trials:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
