"""Running the trial programs as real subprocesses and reading their metrics the way natib's collector does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from natib.actors.metrics.parsers import TextParser, as_float

REPO = Path(__file__).resolve().parents[2]
TINY = ["--threads", "1"]


def run_recipe(name: str, *args: str, cache: Path, timeout: float = 120,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m natib.trials.<name> ARGS --cache-dir CACHE`` with the test's interpreter."""
    return subprocess.run([sys.executable, "-m", f"natib.trials.{name}", *args, *TINY, "--cache-dir", str(cache)],
                          capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
                          env=env or dict(os.environ), check=False)


def metrics(stdout: str, *names: str) -> dict[str, float]:
    """The last value of each named metric, parsed by natib's StdOut (TEXT) parser."""
    parser = TextParser(names)
    found: dict[str, float] = {}
    for sample in parser.feed(stdout.encode()) + parser.flush():
        value = as_float(sample.value)
        assert value is not None, f"{sample.name}={sample.value} is not a number"
        found[sample.name] = value
    missing = [n for n in names if n not in found]
    assert not missing, f"metrics {missing} missing from:\n{stdout}"
    return found
