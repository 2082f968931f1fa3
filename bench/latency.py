"""Suggestion latency: the time to produce one suggestion after N finished trials, natib against Optuna.

For each algorithm, dimension d and history size N, one history of N finished trials is built once (uniform
random points in [-5, 5]^d scored by the sphere function; for ``cmaes`` the points an Optuna CMA-ES run chose,
so that Optuna's sampler finds the optimiser state it keeps in its trials), and both sides see exactly it:

- natib: ``get_algorithm(name).suggest(space, history, 1, {}, seed, "minimize")``, one untimed call and then
  the median of ``--repeats`` timed calls. natib keeps no state between calls, so every call does all its work.
- Optuna: a fresh study and sampler with the same seed, ``add_trials`` of the same trials, then
  ``study.ask(distributions)`` + ``study.tell(trial, value)`` timed. The first ask+tell is reported on its own
  ("first"); the table's number is the median of ``--repeats`` ask+tell pairs after it (steady state: GPSampler
  reuses the kernel parameters of its previous fit as the starting point, CMA-ES unpickles its optimiser).
  Each timed tell adds one trial, so Optuna's history grows to N + repeats; negligible next to N.

Both libraries are warmed up on a small study first, so no import or first-use cost is timed. Defaults on both
sides (natib's settings are empty; Optuna's samplers get only ``seed``). Optuna's GPSampler needs PyTorch; without
it the Optuna column of ``bayesianoptimization`` is left empty.

Times are process CPU time by default (``--clock cpu``) with BLAS and torch held to one thread on both sides
(``--threads 1``), so that other work on a shared machine does not leak into the numbers; on an idle machine
single-threaded CPU time and wall time agree. The JSON output keeps both clocks for every call.

    python bench/latency.py [--quick] [--json] [--repeats 7] [--gp-repeats 3] [--clock cpu|wall] [--threads 1]
                            [--seed 0] [--algorithms tpe,cmaes]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from natib.algorithms.registry import get_algorithm
from natib.algorithms.space import Parameter, SearchSpace, Trial

LOW, HIGH = -5.0, 5.0

#: natib name -> how the Optuna counterpart is built, for the table's notes.
OPTUNA_NAMES: dict[str, str] = {
    "tpe": "TPESampler(multivariate=False)",
    "multivariate-tpe": "TPESampler(multivariate=True)",
    "cmaes": "CmaEsSampler",
    "sobol": 'QMCSampler(qmc_type="sobol", scramble=True)',
    "random": "RandomSampler",
    "bayesianoptimization": "GPSampler",
}
ALGORITHMS: tuple[str, ...] = tuple(OPTUNA_NAMES)

#: History sizes; the Gaussian-process samplers are cubic in N, so they stop at 500.
SIZES = (100, 1000, 2000)
GP_SIZES = (100, 500)
DIMS = (5, 20)
QUICK_SIZES = (100, 1000)
QUICK_DIMS = (5,)


@dataclass
class Row:
    """One measurement: milliseconds per suggestion on each side (None where a side could not run).

    ``natib_ms``, ``optuna_ms`` and ``optuna_first_ms`` are on the clock chosen with ``--clock``; the runs keep
    both clocks, as (wall ms, CPU ms) pairs.
    """

    algorithm: str
    d: int
    n: int
    clock: str = "cpu"
    natib_ms: float | None = None
    optuna_ms: float | None = None
    optuna_first_ms: float | None = None
    natib_runs: list[tuple[float, float]] = field(default_factory=list)
    optuna_runs: list[tuple[float, float]] = field(default_factory=list)
    optuna_first: tuple[float, float] | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """natib time over Optuna time: below 1 means natib is faster."""
        if self.natib_ms is None or not self.optuna_ms:
            return None
        return self.natib_ms / self.optuna_ms


def sphere(x: Sequence[float]) -> float:
    """The objective every history is scored by."""
    return float(sum(v * v for v in x))


def space_of(d: int) -> SearchSpace:
    """d uniform doubles in [LOW, HIGH], named x0..x{d-1}."""
    return SearchSpace(tuple(Parameter(name=f"x{i}", type="double", min=LOW, max=HIGH) for i in range(d)))


def natib_history(points: np.ndarray, values: Sequence[float]) -> list[Trial]:
    """The points as finished natib trials; values are written the way natib writes doubles (repr)."""
    params = [f"x{i}" for i in range(points.shape[1])]
    return [
        Trial(
            name=f"t{k}",
            assignment={p: repr(float(v)) for p, v in zip(params, row, strict=True)},
            status="succeeded",
            objective=float(y),
        )
        for k, (row, y) in enumerate(zip(points, values, strict=True))
    ]


# --- Optuna ------------------------------------------------------------------------------------------------------


def optuna_available() -> tuple[bool, bool]:
    """Whether Optuna imports, and whether PyTorch (needed by GPSampler) does."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False, False
    try:
        import torch  # noqa: F401
    except ImportError:
        return True, False
    return True, True


def make_sampler(name: str, seed: int) -> Any:
    """A fresh Optuna sampler matching natib's ``name``, seeded like natib."""
    import optuna

    s = optuna.samplers
    if name == "tpe":
        # Optuna 5's TPESampler is multivariate unless told otherwise; natib's tpe is the independent one.
        return s.TPESampler(seed=seed, multivariate=False)
    if name == "multivariate-tpe":
        return s.TPESampler(seed=seed, multivariate=True)
    if name == "cmaes":
        return s.CmaEsSampler(seed=seed)
    if name == "sobol":
        return s.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    if name == "random":
        return s.RandomSampler(seed=seed)
    if name == "bayesianoptimization":
        return s.GPSampler(seed=seed)
    raise KeyError(name)


def distributions(d: int) -> dict[str, Any]:
    """Optuna's view of ``space_of(d)``."""
    from optuna.distributions import FloatDistribution

    return {f"x{i}": FloatDistribution(LOW, HIGH) for i in range(d)}


def frozen_trials(points: np.ndarray, values: Sequence[float]) -> list[Any]:
    """The points as completed Optuna trials (no sampler state attached)."""
    from optuna.trial import create_trial

    dists = distributions(points.shape[1])
    return [
        create_trial(params={f"x{i}": float(v) for i, v in enumerate(row)}, distributions=dists, value=float(y))
        for row, y in zip(points, values, strict=True)
    ]


Timing = tuple[float, float]


def _since(wall: float, cpu: float) -> Timing:
    """(wall ms, CPU ms) elapsed since the two readings."""
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def ask_tell(study: Any, dists: dict[str, Any]) -> Timing:
    """(wall ms, CPU ms) for one ``ask`` (which samples every parameter) and its ``tell``."""
    wall, cpu = time.perf_counter(), time.process_time()
    trial = study.ask(dists)
    x = [trial.params[f"x{i}"] for i in range(len(dists))]
    study.tell(trial, sphere(x))
    return _since(wall, cpu)


def cmaes_history(d: int, n: int, seed: int) -> list[Any]:
    """n trials chosen by Optuna's CMA-ES on the sphere, with the optimiser state it stores in them."""
    import optuna

    study = optuna.create_study(sampler=make_sampler("cmaes", seed))
    dists = distributions(d)
    for _ in range(n):
        ask_tell(study, dists)
    return list(study.get_trials(deepcopy=False))


def time_optuna(name: str, trials: list[Any], d: int, seed: int, repeats: int) -> tuple[Timing, list[Timing]]:
    """Optuna's first ask+tell on a fresh sampler over ``trials``, then ``repeats`` more."""
    import optuna

    study = optuna.create_study(sampler=make_sampler(name, seed))
    study.add_trials(trials)
    dists = distributions(d)
    first = ask_tell(study, dists)
    return first, [ask_tell(study, dists) for _ in range(repeats)]


# --- natib -------------------------------------------------------------------------------------------------------


def time_natib(name: str, space: SearchSpace, history: list[Trial], seed: int, repeats: int) -> list[Timing]:
    """natib's ``suggest`` for one point: one untimed call, then ``repeats`` timed ones."""
    algorithm = get_algorithm(name)

    def once() -> Timing:
        wall, cpu = time.perf_counter(), time.process_time()
        result = algorithm.suggest(space, history, 1, {}, seed, "minimize")
        elapsed = _since(wall, cpu)
        if len(result.assignments) != 1:
            raise RuntimeError(f"{name} returned {len(result.assignments)} assignments")
        return elapsed

    once()
    return [once() for _ in range(repeats)]


# --- the run -----------------------------------------------------------------------------------------------------


def history_points(name: str, d: int, n: int, seed: int, have_optuna: bool) -> tuple[np.ndarray, list[float], Any]:
    """The shared history: points, values, and the Optuna trials holding them (None without Optuna)."""
    if name == "cmaes" and have_optuna:
        trials = cmaes_history(d, n, seed)
        points = np.array([[t.params[f"x{i}"] for i in range(d)] for t in trials])
        return points, [float(t.value) for t in trials], trials
    rng = np.random.default_rng([seed, d, n])
    points = rng.uniform(LOW, HIGH, size=(n, d))
    values = [sphere(row) for row in points]
    return points, values, frozen_trials(points, values) if have_optuna else None


def warm_up(names: Sequence[str], seed: int, have_optuna: bool, have_torch: bool) -> None:
    """Run every algorithm once on a small history, so imports and first-use costs stay out of the timings."""
    for name in names:
        points, values, trials = history_points(name, 3, 20, seed, have_optuna)
        # A natib failure is reported by the measurement itself.
        with contextlib.suppress(Exception):
            time_natib(name, space_of(3), natib_history(points, values), seed, 1)
        if have_optuna and (name != "bayesianoptimization" or have_torch):
            time_optuna(name, trials, 3, seed, 1)


def measure(name: str, d: int, n: int, seed: int, repeats: int, clock: str, have_optuna: bool, have_torch: bool) -> Row:
    """One row of the table."""
    row = Row(algorithm=name, d=d, n=n, clock=clock)
    pick = 1 if clock == "cpu" else 0
    points, values, trials = history_points(name, d, n, seed, have_optuna)
    notes: list[str] = []
    try:
        row.natib_runs = time_natib(name, space_of(d), natib_history(points, values), seed, repeats)
        row.natib_ms = statistics.median(r[pick] for r in row.natib_runs)
    except Exception as exc:
        notes.append(f"natib error: {type(exc).__name__}: {exc}")
    if not have_optuna:
        notes.append("optuna not installed")
    elif name == "bayesianoptimization" and not have_torch:
        notes.append("optuna GPSampler needs torch (not installed)")
    else:
        row.optuna_first, row.optuna_runs = time_optuna(name, trials, d, seed, repeats)
        row.optuna_first_ms = row.optuna_first[pick]
        row.optuna_ms = statistics.median(r[pick] for r in row.optuna_runs)
    row.note = "; ".join(notes)
    return row


def plan(quick: bool, names: Sequence[str]) -> list[tuple[str, int, int]]:
    """(algorithm, d, N) in the order they are run."""
    dims = QUICK_DIMS if quick else DIMS
    out: list[tuple[str, int, int]] = []
    for name in names:
        sizes = GP_SIZES if name == "bayesianoptimization" else (QUICK_SIZES if quick else SIZES)
        out += [(name, d, n) for d in dims for n in sizes]
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| algorithm | d | N | natib ms | optuna ms | ratio (natib/optuna) | optuna first ask ms | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(
            f"| {r.algorithm} | {r.d} | {r.n} | {_ms(r.natib_ms)} | {_ms(r.optuna_ms)} | {ratio} | "
            f"{_ms(r.optuna_first_ms)} | {r.note} |"
        )
    return "\n".join(lines)


def environment(have_torch: bool) -> dict[str, Any]:
    """Versions and machine facts that the numbers depend on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_1m": round(os.getloadavg()[0], 1),
    }
    try:
        import optuna

        info["optuna"] = optuna.__version__
    except ImportError:
        info["optuna"] = None
    if have_torch:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    """Parse flags, run every measurement, print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100, 1000 and d = 5 only (GP: N = 100, 500)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per side, median reported")
    parser.add_argument("--gp-repeats", type=int, default=3, help="--repeats for bayesianoptimization / GPSampler")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="what the table shows: process CPU time (robust on a shared machine) or wall time; JSON has both",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="BLAS and torch threads on both sides (1 makes CPU time = wall time)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated natib names")
    args = parser.parse_args(argv)
    names = [a for a in args.algorithms.split(",") if a]
    unknown = [a for a in names if a not in OPTUNA_NAMES]
    if unknown:
        parser.error(f"unknown algorithms: {', '.join(unknown)}")

    logging.getLogger("optuna").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="optuna")
    warnings.filterwarnings("ignore", message=".*experimental.*")
    have_optuna, have_torch = optuna_available()
    if have_optuna:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)

    threadpool_limits(limits=args.threads)
    if have_torch:
        import torch

        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    warm_up(names, args.seed, have_optuna, have_torch)
    rows: list[Row] = []
    for name, d, n in plan(args.quick, names):
        repeats = args.gp_repeats if name == "bayesianoptimization" else args.repeats
        row = measure(name, d, n, args.seed, repeats, args.clock, have_optuna, have_torch)
        rows.append(row)
        print(
            f"# {name} d={d} N={n}: natib {_ms(row.natib_ms)} ms, optuna {_ms(row.optuna_ms)} ms {row.note}",
            file=sys.stderr,
            flush=True,
        )
    total = time.perf_counter() - started
    if args.json:
        out(
            json.dumps(
                {
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "argv": sys.argv,
                    "environment": environment(have_torch),
                    "repeats": args.repeats,
                    "gp_repeats": args.gp_repeats,
                    "clock": args.clock,
                    "threads": args.threads,
                    "seed": args.seed,
                    "total_s": round(total, 1),
                    "rows": [asdict(r) | {"ratio": r.ratio} for r in rows],
                },
                indent=2,
            )
        )
    else:
        out(table(rows))
        out(
            f"\n{args.clock} time, median; total {total:.0f} s; threads {args.threads}; "
            f"{json.dumps(environment(have_torch))}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
