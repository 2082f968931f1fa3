"""Helpers the trial programs share: device choice, metric printing, seeding, training and measuring.

Metrics go to stdout as ``name=value`` lines, the format natib's (and Katib's) StdOut collector reads;
everything else a trial says should go to stderr (:func:`note`).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, inputs, targets)``: the loss of one batch (default: cross-entropy)."""


class TrialError(ValueError):
    """A bad flag or setting of a trial program; the message names the flag and the reason."""


def device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cpu`` or ``cuda`` (``cuda:N``) forces one."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise TrialError(f"--device: {requested!r} was asked for but CUDA is not available on this machine")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrialError(f"--device: {requested!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
        return dev
    raise TrialError(f"--device: must be auto, cpu, cuda or cuda:N, got {requested!r}")


def _format(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.6g}"
    return str(value)


def report(**metrics: object) -> None:
    """Print each metric as a ``name=value`` line on stdout and flush."""
    for name, value in metrics.items():
        print(f"{name}={_format(value)}", flush=True)


def note(message: str) -> None:
    """A progress message for people: stderr, so no collector takes it for a metric."""
    print(message, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for repeatable runs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_threads(threads: int) -> None:
    """Limit torch's CPU threads (0 keeps torch's default); parallel trials on few cores run faster with 1."""
    if threads < 0:
        raise TrialError(f"--threads: must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, generator: torch.Generator | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of (x, y), shuffled when a generator is given."""
    if batch_size <= 0:
        raise TrialError(f"--batch-size: must be > 0, got {batch_size}")
    n = len(x)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float = 1e-3,
          batch_size: int = 64, dev: torch.device | None = None, seed: int = 0, weight_decay: float = 0.0,
          loss_fn: LossFn | None = None, on_epoch: Callable[[int, float], None] | None = None) -> float:
    """Train with Adam for ``epochs`` passes; return the last epoch's mean loss.

    ``on_epoch(epoch, mean_loss)`` is called after each pass (epochs count from 1).
    """
    if epochs < 0:
        raise TrialError(f"epochs: must be >= 0, got {epochs}")
    if not (lr > 0 and math.isfinite(lr)):
        raise TrialError(f"lr: must be a finite number > 0, got {lr}")
    dev = dev or next(model.parameters()).device
    model.to(dev)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    last = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        for xb, yb in batches(x, y, batch_size, generator=gen):
            xb, yb = xb.to(dev), yb.to(dev)
            opt.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, xb, yb) if loss_fn else nn.functional.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
            count += len(xb)
        last = total / max(count, 1)
        if on_epoch:
            on_epoch(epoch, last)
    model.eval()
    return last


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, dev: torch.device | None = None,
            batch_size: int = 256) -> torch.Tensor:
    """Logits for ``x`` (on the CPU), in evaluation mode."""
    model.eval()
    if dev is None:
        first = next(iter(model.parameters()), None)
        dev = first.device if first is not None else torch.device("cpu")
    out = [model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, dev: torch.device | None = None,
             batch_size: int = 256) -> float:
    """Accuracy of ``model`` on (x, y), between 0 and 1."""
    if len(x) == 0:
        return float("nan")
    logits = predict(model, x, dev=dev, batch_size=batch_size)
    return float((logits.argmax(dim=1) == y.cpu()).float().mean())


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's serialized ``state_dict`` (what ``torch.save`` writes)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def count_parameters(model: nn.Module, *, nonzero: bool = False) -> int:
    """Number of parameter values (``nonzero=True``: only those not exactly zero)."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p.detach())) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def cache_dir(explicit: str | None = None) -> Path:
    """Where trained teachers and baselines are kept.

    ``explicit`` (a ``--cache-dir`` flag) first, then ``NATIB_CACHE_DIR``, then ``$NATIB_HOME/cache``, then
    ``~/.cache/natib``.
    """
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("NATIB_CACHE_DIR"):
        return Path(os.environ["NATIB_CACHE_DIR"]).expanduser()
    if os.environ.get("NATIB_HOME"):
        return Path(os.environ["NATIB_HOME"]).expanduser() / "cache"
    return Path.home() / ".cache" / "natib"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place.

    Readers never see a half-written file, and when several trials save the same file at once the last
    rename wins with a complete copy.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cached(path: Path) -> Any | None:
    """What :func:`atomic_save` wrote at ``path``, or None if it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        note(f"ignoring unreadable cache file {path}: {exc}")
        return None


def _int_at_least(text: str, low: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    return _int_at_least(text, 1, "> 0")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, ">= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every recipe has: data, split, seed, device, threads, cache, batch size."""
    parser.add_argument("--data", default=None,
                        help="an .npz file or a directory of class subfolders (default: scikit-learn's digits)")
    parser.add_argument("--val-fraction", type=fraction, default=0.2, help="share of the data held out (0.2)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the split, init and shuffling (0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch CPU threads (0: torch's default)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="training batch size (64)")
    parser.add_argument("--cache-dir", default=None,
                        help="where trained baselines and teachers are kept (default: $NATIB_CACHE_DIR, "
                             "$NATIB_HOME/cache or ~/.cache/natib)")
    parser.add_argument("--no-cache", action="store_true", help="always train the baseline or teacher afresh")


def run_main(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a recipe's ``main``; a bad flag or data set becomes one line on stderr and exit status 2."""
    from natib.trials.data import DatasetError

    try:
        main(argv)
    except (TrialError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
