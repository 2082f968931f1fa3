"""A custom metrics collector: follows a JSON-lines metrics file and prints each value as name=value.

It stops once the file has not grown for a few seconds after the trial started writing it, or when
natib stops it at the end of the trial.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(path: str, idle_seconds: float = 3.0) -> int:
    target, offset, last_growth = Path(path), 0, None
    # Wait as long as it takes for the trial to start writing; natib stops this process if it never does.
    while last_growth is None or time.monotonic() - last_growth < idle_seconds:
        if target.exists() and target.stat().st_size > offset:
            with target.open() as fh:
                fh.seek(offset)
                lines = fh.read().splitlines(keepends=True)
            for line in lines:
                if not line.endswith("\n"):
                    break
                offset += len(line.encode())
                record = json.loads(line)
                print(" ".join(f"{k}={v}" for k, v in record.items() if k in ("accuracy", "loss")), flush=True)
            last_growth = time.monotonic()
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
