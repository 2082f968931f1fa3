"""Pieces every benchmark shares: a no-op experiment, and creating one and following it to its end."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from natib.messages import subjects
from natib.messages.state import ExperimentState
from natib.runtime.bus import Bus
from natib.runtime.store import apply_raw


def noop_experiment(name: str, trials: int, parallel: int, argv: list[str] | None = None) -> dict[str, Any]:
    """Random search over one double whose trials run ``argv`` (default ``true``) and report no metric.

    Such trials end MetricsUnavailable, which still completes them: what is measured is natib, not training.
    """
    return {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "metadata": {"name": name},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": "score"},
            "algorithm": {"algorithmName": "random"},
            "maxTrialCount": trials, "parallelTrialCount": parallel,
            "parameters": [{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1"}}],
            "trialTemplate": {
                "primaryContainerName": "main", "trialParameters": [{"name": "x", "reference": "x"}],
                "trialSpec": {"apiVersion": "batch/v1", "kind": "Job",
                              "metadata": {"annotations": {"x": "${trialParameters.x}"}},
                              "spec": {"template": {"spec": {"containers": [
                                  {"name": "main", "image": "none", "command": argv or ["true"]}]}}}},
            },
        },
    }


async def run_to_end(bus: Bus, doc: dict[str, Any], *, idle_timeout: float = 60) -> tuple[float, ExperimentState]:
    """Create the experiment through running actors and fold its events until it ends: (seconds, state)."""
    name = doc["metadata"]["name"]
    state = ExperimentState(name)
    tail = await bus.tail(subjects.EVENTS_STREAM, subjects.experiment_events(name))
    try:
        start = time.perf_counter()
        reply = msgspec.json.decode(await bus.request(subjects.api("create"), msgspec.json.encode(
            {"experiment": doc}), timeout=30))
        if not reply.get("ok"):
            raise SystemExit(f"create failed: {reply}")
        while not state.is_finished():
            raw = await tail.get(idle_timeout)
            if raw is None:
                raise SystemExit(f"no progress for {idle_timeout} s")
            apply_raw(state, raw)
        return time.perf_counter() - start, state
    finally:
        await tail.close()
