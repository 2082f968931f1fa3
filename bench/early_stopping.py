"""What early stopping saves: one random search run without early stopping, with medianstop and with hyperband.

Each run is the same experiment (random search with a fixed ``random_state``, the digits trainer with a fixed
number of epochs and a per-epoch delay from ``bench/slow_digits.py``) through every natib actor in one
process, against its own throwaway nats-server. For each run it reports the trial-steps spent (the objective
reports, i.e. epochs, summed over trials), the trials early stopped, the best objective found and the wall
time, then the steps saved and the best-objective difference against the run without early stopping.

A fixed ``random_state`` does not give every run the same trials: random search draws from a generator derived
from the history length at each request, and how the controller batches requests follows trial timing, which
early stopping changes. ``--paired`` therefore replays natib's own random draws (taken one request at a time)
as a grid over one categorical parameter, so every run gets the same trials in the same order.

    python bench/early_stopping.py [--paired] [--trials 36] [--parallel 3] [--epochs 12] [--epoch-delay 0.5]
                                   [--start-step 3] [--eta 3] [--min-resource 2] [--runs none,medianstop,hyperband]
                                   [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

from harness import run_to_end

from natib.actors.app import ACTOR_KINDS, run_actors
from natib.algorithms.random import RandomSearch
from natib.algorithms.space import Trial
from natib.messages.spec import load_experiment, search_space
from natib.messages.state import ExperimentState, as_float
from natib.runtime.bus import Bus
from natib.runtime.logging import configure_logging
from natib.runtime.server import TestServer
from natib.runtime.settings import Settings

TRAINER = Path(__file__).resolve().parent / "slow_digits.py"
#: The report at which a rule judged a trial, as its StopTrial message states it.
JUDGED_AT = re.compile(r"at (?:step|rung) (\d+)")


def experiment(name: str, args: argparse.Namespace, early_stopping: dict[str, object] | None) -> dict[str, object]:
    """The benchmark experiment: lr, alpha and loss searched at random, epochs fixed, optional early stopping."""
    command = [sys.executable, str(TRAINER), f"--epoch-delay={args.epoch_delay}", f"--epochs={args.epochs}",
               "--lr=${trialParameters.lr}", "--alpha=${trialParameters.alpha}", "--loss=${trialParameters.loss}"]
    spec: dict[str, object] = {
        "objective": {"type": "maximize", "objectiveMetricName": "accuracy", "additionalMetricNames": ["loss"]},
        "algorithm": {"algorithmName": "random",
                      "algorithmSettings": [{"name": "random_state", "value": str(args.seed)}]},
        "maxTrialCount": args.trials, "parallelTrialCount": args.parallel, "maxFailedTrialCount": 3,
        "parameters": [
            # Wide on purpose: very small rates barely learn, very large ones (with a large alpha) thrash.
            {"name": "lr", "parameterType": "double",
             "feasibleSpace": {"min": "0.00001", "max": "10", "distribution": "logUniform"}},
            {"name": "alpha", "parameterType": "double",
             "feasibleSpace": {"min": "0.000001", "max": "0.3", "distribution": "logUniform"}},
            {"name": "loss", "parameterType": "categorical",
             "feasibleSpace": {"list": ["hinge", "log_loss", "modified_huber"]}},
        ],
        "trialTemplate": {
            "primaryContainerName": "main",
            "trialParameters": [{"name": p, "reference": p} for p in ("lr", "alpha", "loss")],
            "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                "containers": [{"name": "main", "image": "none", "command": command}],
                "restartPolicy": "Never"}}}},
        },
    }
    if early_stopping is not None:
        spec["earlyStopping"] = early_stopping
    return {"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "metadata": {"name": name}, "spec": spec}


def random_draws(args: argparse.Namespace) -> list[dict[str, str]]:
    """The assignments natib's random search gives this experiment's trials when it is asked for one at a time.

    Which points a run gets depends on how the controller batches its requests (the generator is derived from
    the history length at each request), and batching follows trial timing, which early stopping changes.
    """
    spec = load_experiment(experiment("draws", args, None)).spec
    space, settings = search_space(spec), {"random_state": str(args.seed)}
    history: list[Trial] = []
    for i in range(args.trials):
        [point] = RandomSearch().suggest(space, history, 1, settings, 0, "maximize").assignments
        history.append(Trial(name=f"t{i}", assignment=point, status="succeeded"))
    return [dict(t.assignment) for t in history]


def paired_experiment(name: str, args: argparse.Namespace,
                      early_stopping: dict[str, object] | None) -> dict[str, object]:
    """The same trials in the same order in every run: a grid over the random draws, one trial per draw."""
    doc = experiment(name, args, early_stopping)
    spec: dict[str, object] = doc["spec"]  # type: ignore[assignment]
    configs = [f"--lr={a['lr']} --alpha={a['alpha']} --loss={a['loss']}" for a in random_draws(args)]
    spec["algorithm"] = {"algorithmName": "grid"}
    spec["parameters"] = [{"name": "config", "parameterType": "categorical", "feasibleSpace": {"list": configs}}]
    template: dict[str, object] = spec["trialTemplate"]  # type: ignore[assignment]
    template["trialParameters"] = [{"name": "config", "reference": "config"}]
    container = template["trialSpec"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    container["command"] = [*container["command"][:4], "--flags=${trialParameters.config}"]
    return doc


def early_stopping_specs(args: argparse.Namespace) -> dict[str, dict[str, object] | None]:
    """The three runs' ``earlyStopping`` sections, by run name."""
    return {
        "none": None,
        "medianstop": {"algorithmName": "medianstop", "algorithmSettings": [
            {"name": "min_trials_required", "value": str(args.min_trials_required)},
            {"name": "start_step", "value": str(args.start_step)}]},
        "hyperband": {"algorithmName": "hyperband", "algorithmSettings": [
            {"name": "eta", "value": str(args.eta)},
            {"name": "min_resource", "value": str(args.min_resource)}]},
    }


async def run_experiment(doc: dict[str, object], home: Path, url: str) -> tuple[float, ExperimentState]:
    """Seconds from creating the experiment to its end, with every actor running in this process."""
    settings = Settings(nats_url=url, home=home, drain_timeout=2.0)
    stop, ready = asyncio.Event(), asyncio.Event()
    actors = asyncio.create_task(run_actors(settings, url, list(ACTOR_KINDS), stop, ready=ready))
    await ready.wait()
    bus = await Bus.connect(url)
    try:
        elapsed, state = await run_to_end(bus, doc, idle_timeout=120)
    finally:
        stop.set()
        await actors
        await bus.close()
    return elapsed, state


def summarise(run: str, elapsed: float, state: ExperimentState) -> dict[str, object]:
    """The run's figures, folded from its events."""
    assert state.experiment is not None
    metric = state.experiment.spec.objective.objective_metric_name
    trials = sorted(state.trials.values(), key=lambda t: t.index)
    steps = {t.name: sum(1 for m in t.metric_logs if m.name == metric) for t in trials}
    stopped = [t for t in trials if t.phase == "EarlyStopped"]
    # Epochs a stopped trial ran past the report at which it was condemned (decision and kill latency).
    overrun = [steps[t.name] - int(m.group(1)) for t in stopped if (m := JUDGED_AT.search(t.message))]
    best = state.best_trial()
    best_value = as_float(state.objective_of(best) or "") if best is not None else None
    return {
        "run": run, "trials": len(trials), "buckets": {k: v for k, v in state.counts().items() if v},
        "trial_steps": sum(steps.values()), "early_stopped": len(stopped),
        "stopped_at_steps": dict(sorted(Counter(steps[t.name] for t in stopped).items())),
        "steps_past_decision": sum(overrun),
        "best_objective": best_value, "best_trial": best.name if best is not None else None,
        "best_assignment": dict(best.assignment) if best is not None else None,
        "metric_strategy": state.experiment.spec.metric_strategy(metric),
        "wall_seconds": round(elapsed, 2),
        "assignments": sorted(tuple(sorted(t.assignment.items())) for t in trials),
    }


async def main() -> None:
    """Run the experiment once per early-stopping choice and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=36)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--epoch-delay", type=float, default=0.5, help="seconds each epoch of a trial takes")
    parser.add_argument("--seed", type=int, default=7, help="the random search's random_state")
    parser.add_argument("--min-trials-required", type=int, default=3, help="medianstop setting")
    parser.add_argument("--start-step", type=int, default=3, help="medianstop setting")
    parser.add_argument("--eta", type=int, default=3, help="hyperband setting")
    parser.add_argument("--min-resource", type=int, default=2, help="hyperband setting")
    parser.add_argument("--runs", default="none,medianstop,hyperband",
                        help="comma-separated subset of none, medianstop, hyperband ('none' always runs)")
    parser.add_argument("--paired", action="store_true",
                        help="give every run the same trials in the same order (a grid over the random draws)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    configure_logging("error", "json")
    specs = early_stopping_specs(args)
    runs = ["none"] + [r for r in args.runs.split(",") if r and r != "none"]
    results = []
    for run in runs:
        with tempfile.TemporaryDirectory(prefix="natib-bench-es-") as tmp, TestServer(Path(tmp) / "nats") as server:
            doc = (paired_experiment if args.paired else experiment)(f"es-{run}", args, specs[run])
            elapsed, state = await run_experiment(doc, Path(tmp) / "home", server.url)
        results.append(summarise(run, elapsed, state))
        if not args.json:
            print(f"  {run}: done in {elapsed:.1f} s", file=sys.stderr)
    base = results[0]
    base_steps, base_best = int(base["trial_steps"]), base["best_objective"]  # type: ignore[call-overload]
    for r in results:
        r["steps_saved_pct"] = round(100 * (1 - int(r["trial_steps"]) / base_steps), 1)  # type: ignore[call-overload]
        r["best_diff_pct"] = (round(100 * (float(r["best_objective"]) - base_best) / base_best, 2)  # type: ignore[arg-type]
                              if r["best_objective"] is not None and base_best else None)
        r["same_parameters_as_none"] = r["assignments"] == base["assignments"]
        r["trials_shared_with_none"] = sum((Counter(r["assignments"]) & Counter(base["assignments"])).values())  # type: ignore[arg-type]
        r["targets_met"] = (r["steps_saved_pct"] >= 40 and r["best_diff_pct"] is not None
                            and r["best_diff_pct"] >= -1.0) if r["run"] != "none" else None
    settings = {"mode": "paired" if args.paired else "random",
                "trials": args.trials, "parallel": args.parallel, "epochs": args.epochs,
                "epoch_delay": args.epoch_delay, "random_state": args.seed,
                "medianstop": {"min_trials_required": args.min_trials_required, "start_step": args.start_step},
                "hyperband": {"eta": args.eta, "min_resource": args.min_resource}}
    if args.json:
        print(json.dumps({"settings": settings,
                          "runs": [{k: v for k, v in r.items() if k != "assignments"} for r in results]}))
        return
    mode = "paired grid over random draws" if args.paired else "random search"
    print(f"{mode}: {args.trials} trials, {args.parallel} in parallel, digits trainer {args.epochs} epochs x "
          f"{args.epoch_delay} s, random_state {args.seed}; medianstop min_trials_required="
          f"{args.min_trials_required} start_step={args.start_step}; hyperband eta={args.eta} "
          f"min_resource={args.min_resource}")
    header = (f"{'early stopping':<15}{'trial-steps':>12}{'saved':>8}{'stopped':>9}{'best':>8}{'vs none':>9}"
              f"{'wall s':>8}  same trials  stopped at (steps: trials)")
    print(header)
    for r in results:
        same = "yes" if r["same_parameters_as_none"] else f"{r['trials_shared_with_none']} of {r['trials']}"
        print(f"{r['run']:<15}{r['trial_steps']:>12}{r['steps_saved_pct']:>7}%{r['early_stopped']:>9}"
              f"{r['best_objective']:>8.4f}{r['best_diff_pct']:>8}%{r['wall_seconds']:>8}  "
              f"{same:<11}  "
              f"{r['stopped_at_steps'] or '-'}")
    for r in results[1:]:
        print(f"  {r['run']}: steps saved {r['steps_saved_pct']}% (target >= 40%), best objective "
              f"{r['best_diff_pct']:+}% vs none (target >= -1%): {'met' if r['targets_met'] else 'MISSED'}")


if __name__ == "__main__":
    asyncio.run(main())
