#!/usr/bin/env python3
"""The digits trainer (``examples/trainers/digits.py``) with a fixed delay per epoch, for the early-stopping bench.

Trains exactly as digits.py does (same flags, same seeds, same per-epoch numbers) but waits ``--epoch-delay``
seconds before reporting each epoch, so an epoch costs as much wall time as a real one would and an
early-stopping decision can reach the trial before it ends. It prints only the per-epoch
``epoch=k accuracy=... loss=...`` lines: digits.py's closing summary repeats the last epoch, and leaving it out
makes a trial's number of objective reports equal its number of epochs.

    python bench/slow_digits.py --epoch-delay 0.5 --lr 0.01 --alpha 1e-4 --epochs 12 --loss hinge
    python bench/slow_digits.py --epoch-delay 0.5 --epochs 12 --flags "--lr=0.01 --alpha=1e-4 --loss=hinge"
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "trainers"))

import digits  # found through the path set just above
from reporting import StdoutReporter


class SlowReporter(StdoutReporter):
    """Stdout reports, each one ``delay`` seconds after the previous epoch's."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        time.sleep(self.delay)
        super().report(epoch, metrics)


def main(argv: list[str] | None = None) -> int:
    """Parse ``--epoch-delay`` and ``--flags``, then run digits.py on the other flags with the slow reporter."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch-delay", type=float, default=0.5, help="seconds added to every epoch")
    parser.add_argument("--flags", default="", help="more digits.py flags in one string (one trial parameter)")
    ours, rest = parser.parse_known_args(argv)
    args = digits.parse_args(rest + shlex.split(ours.flags))
    # A report kind digits.py does not know: it then skips its closing summary lines.
    args.report = "bench-stdout"
    digits.parse_args = lambda _argv=None: args
    digits.make_reporter = lambda *_: SlowReporter(ours.epoch_delay)
    return digits.main()


if __name__ == "__main__":
    sys.exit(main())
