"""natib's algorithms as a library: an ask/tell loop over a Katib-style parameter list.

    study = Study([{"name": "lr", "parameterType": "double",
                    "feasibleSpace": {"min": "0.0001", "max": "0.1", "distribution": "logUniform"}}],
                  algorithm="tpe", objective="minimize", seed=7)
    for _ in range(20):
        trial = study.ask()
        study.tell(trial, train(**trial.params))
    print(study.best.params)

It calls the same ``get_algorithm(name).suggest(space, history, n, settings, seed, objective)`` that the
suggestion actor calls, so a study behaves exactly like an experiment with the same seed and history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from natib.algorithms.registry import get_algorithm
from natib.algorithms.space import ObjectiveType, SearchSpace, Trial, TrialStatus


@dataclass
class StudyTrial:
    """One asked trial: its name, its assignment as Katib strings, and the same values typed."""

    name: str
    assignment: dict[str, str]
    params: dict[str, float | int | str]
    labels: dict[str, str] = field(default_factory=dict)
    status: TrialStatus = "running"
    value: float | None = None


class Study:
    """Asks an algorithm for trials and tells it their results; pure and in-process (no NATS)."""

    def __init__(self, parameters: Sequence[Mapping[str, object]] | SearchSpace, *, algorithm: str = "auto",
                 settings: Mapping[str, str] | None = None, objective: ObjectiveType = "minimize",
                 seed: int = 0, max_trial_count: int | None = None) -> None:
        self.space = parameters if isinstance(parameters, SearchSpace) else SearchSpace.from_katib(parameters)
        self.algorithm = get_algorithm(algorithm)
        self.settings = {k: str(v) for k, v in (settings or {}).items()}
        self.objective: ObjectiveType = objective
        self.seed = seed
        errors = self.algorithm.validate(self.space, self.settings, max_trial_count)
        if errors:
            raise ValueError("; ".join(errors))
        self.trials: list[StudyTrial] = []
        self.exhausted = False

    def history(self) -> list[Trial]:
        """Every trial so far as algorithms see it."""
        return [Trial(t.name, t.assignment, t.status, t.value, t.labels) for t in self.trials]

    def ask(self) -> StudyTrial:
        """One new trial (IndexError when the search is over or waits for results)."""
        batch = self.ask_batch(1)
        if not batch:
            raise IndexError("the algorithm has nothing to suggest now" + (" (exhausted)" if self.exhausted else ""))
        return batch[0]

    def ask_batch(self, n: int) -> list[StudyTrial]:
        """Up to ``n`` new trials to run in parallel (running trials are taken into account)."""
        result = self.algorithm.suggest(self.space, self.history(), n, self.settings, self.seed, self.objective)
        self.exhausted = result.exhausted
        out = []
        for i, assignment in enumerate(result.assignments):
            labels = result.labels[i] if i < len(result.labels) else {}
            trial = StudyTrial(f"trial-{len(self.trials):04d}", dict(assignment), self._typed(assignment),
                               dict(labels))
            self.trials.append(trial)
            out.append(trial)
        return out

    def tell(self, trial: StudyTrial | str, value: float | None, *, status: TrialStatus = "succeeded") -> None:
        """Record a trial's objective value (or a failure with ``status="failed"`` and no value)."""
        name = trial.name if isinstance(trial, StudyTrial) else trial
        found = next((t for t in self.trials if t.name == name), None)
        if found is None:
            raise KeyError(f"no trial called {name}")
        found.status, found.value = status, value

    @property
    def best(self) -> StudyTrial | None:
        """The best told trial in the study's direction (the first one wins ties)."""
        done = [t for t in self.trials if t.value is not None and t.status in ("succeeded", "early_stopped")]
        if not done:
            return None
        pick = max if self.objective == "maximize" else min
        return pick(done, key=lambda t: t.value)  # type: ignore[arg-type, return-value]

    def _typed(self, assignment: Mapping[str, str]) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {}
        for p in self.space.parameters:
            raw = assignment[p.name]
            if p.type == "int":
                out[p.name] = int(float(raw))
            elif p.type in ("double", "discrete"):
                try:
                    out[p.name] = float(raw)
                except ValueError:
                    out[p.name] = raw
            else:
                out[p.name] = raw
        return out
