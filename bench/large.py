"""A large experiment: N no-op trials with every actor kind in its own process.

Reports the time to finish, trial throughput, the peak resident memory of each actor process, and how
fast the experiment list is answered from the KV views at that size (the query itself, and the
`natib get experiments` command end to end).

    python bench/large.py [--trials 10000] [--parallel 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from harness import noop_experiment

from natib.messages import subjects
from natib.runtime.bus import Bus
from natib.runtime.server import TestServer

KINDS = ("controller", "suggestion", "launcher", "collector", "early-stopping")
NATIB = str(Path(sys.executable).parent / "natib")


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident memory of a process in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def start_actors(env: dict[str, str], logs: Path) -> dict[str, subprocess.Popen[bytes]]:
    """One `natib actor KIND` process per kind."""
    return {kind: subprocess.Popen([NATIB, "actor", kind], env=env, stdout=subprocess.DEVNULL,
                                   stderr=logs.open("ab")) for kind in KINDS}


def time_command(env: dict[str, str], args: list[str], repeat: int) -> tuple[list[float], int]:
    """Milliseconds per run of a natib command, and the line count of its last output."""
    times, lines = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = subprocess.run([NATIB, *args], env=env, capture_output=True, text=True, check=True)
        times.append((time.perf_counter() - t0) * 1000)
        lines = len(out.stdout.splitlines())
    return times, lines


async def main() -> None:
    """Run the experiment and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10000)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="natib-large-") as tmp, TestServer(Path(tmp) / "nats") as server:
        env = {**os.environ, "NATS_URL": server.url, "NATIB_HOME": str(Path(tmp) / "home"),
               "NATIB_LOG_LEVEL": "warning", "NATIB_LOG_FORMAT": "json"}
        logs = Path(tmp) / "actors.log"
        procs = await asyncio.to_thread(start_actors, env, logs)
        peak = dict.fromkeys(KINDS, 0)
        bus = await Bus.connect(server.url)
        try:
            for _ in range(100):
                try:
                    await bus.request(subjects.api("ping"), b"{}", timeout=1)
                    break
                except Exception:  # the actors are not up yet
                    await asyncio.sleep(0.2)
            start = time.monotonic()
            doc = noop_experiment("large", args.trials, args.parallel)
            reply = msgspec.json.decode(await bus.request(
                subjects.api("create"), msgspec.json.encode({"experiment": doc}), timeout=30))
            assert reply["ok"], reply
            status: dict[str, object] = {}
            while True:
                for kind, proc in procs.items():
                    peak[kind] = max(peak[kind], rss_kib(proc.pid)[1])
                raw = await bus.kv_get(subjects.state_key("large"))
                status = msgspec.json.decode(raw)["status"] if raw else {}
                done = any(c["type"] == "Succeeded" and c["status"] == "True" for c in status.get("conditions", []))
                if done and not status.get("trialsRunning") and not status.get("trialsPending"):
                    break
                if time.monotonic() - start > 3600:
                    raise SystemExit("did not finish within an hour")
                await asyncio.sleep(2)
            elapsed = time.monotonic() - start
            for kind, proc in procs.items():
                peak[kind] = max(peak[kind], rss_kib(proc.pid)[1])
            query = []
            for _ in range(30):
                t0 = time.perf_counter()
                items = [msgspec.json.decode(v) for _k, v in await bus.kv_items("experiment.")]
                query.append((time.perf_counter() - t0) * 1000)
            cli, lines = await asyncio.to_thread(time_command, env, ["get", "experiments"], 5)
            startup, _ = await asyncio.to_thread(time_command, env, ["--version"], 3)
        finally:
            await bus.close()
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(30)
    result = {
        "trials": args.trials, "parallel": args.parallel, "seconds": round(elapsed, 1),
        "trials_per_second": round(args.trials / elapsed, 1), "status_trials": status.get("trials"),
        "peak_rss_mib": {k: round(v / 1024, 1) for k, v in peak.items()},
        "get_experiments_query_ms_p50": round(statistics.median(query), 2),
        "get_experiments_query_ms_max": round(max(query), 2),
        "get_experiments_cli_ms_p50": round(statistics.median(cli), 1),
        "cli_startup_ms_p50": round(statistics.median(startup), 1),
        "experiments_listed": len(items), "cli_lines": lines,
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    asyncio.run(main())
