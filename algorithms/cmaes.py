"""CMA-ES (Katib's ``cmaes``) over the int and double parameters, its state rebuilt from history on every call.

Trials are grouped, in creation order, into generations of the population size. Replaying the history asks
each generation from a freshly seeded ``cmaes.CMA`` and tells it once every member has finished, so the same
history always rebuilds the same optimiser and a restarted controller loses nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from cmaes import CMA

from natib.algorithms.base import effective_seed, random_state_errors, unknown_setting_errors
from natib.algorithms.gp import UnitEncoder, all_used, random_point
from natib.algorithms.sampling import sample_value, space_errors, space_size
from natib.algorithms.space import (
    Assignment,
    ObjectiveType,
    Parameter,
    SearchSpace,
    SuggestResult,
    Trial,
    assignment_key,
)

RESTART_STRATEGIES = ("none", "ipop", "bipop")

#: Initial step size on the unit cube each parameter is mapped to: a sixth of the range.
DEFAULT_SIGMA = 1 / 6

#: Factor by which IPOP (and BIPOP's large regime) grows the population at each restart.
POPULATION_GROWTH = 2

#: Fresh draws tried when a sampled point repeats one already used, before falling back to a random point.
MAX_REDRAWS = 16

# Tags that keep the random streams derived from the same (seed, index) apart.
_TAG_CATEGORICAL = 1
_TAG_REDRAW = 2
_TAG_RESTART = 3
_TAG_CMA_SEED = 4
_TAG_FALLBACK = 5


def _stream(seed: int, *keys: int) -> np.random.Generator:
    # Seeded by trial index rather than call, so one call for n points equals several calls for parts of them.
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *keys])


def _numeric(space: SearchSpace) -> tuple[Parameter, ...]:
    return tuple(p for p in space.parameters if p.is_numeric_range)


def _sigma_errors(settings: Mapping[str, str]) -> list[str]:
    if "sigma" not in settings:
        return []
    raw = settings["sigma"]
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        return [f"failed to validate sigma({raw}): {exc}"]
    if not (math.isfinite(value) and value > 0):
        return ["sigma should be great than zero"]
    return []


@dataclass
class _Run:
    """One CMA-ES run between restarts: its optimiser and how many trials it has been told."""

    cma: CMA
    told: int = 0
    large: bool = True


class _Replay:
    """The optimiser rebuilt from history: the current run and generation, and the points it asked for."""

    def __init__(self, enc: UnitEncoder, seed: int, sigma0: float, strategy: str) -> None:
        self.enc, self.seed, self.sigma0, self.strategy = enc, seed, sigma0, strategy
        self.pop0 = 4 + int(3 * math.log(enc.dim))
        self.restarts = 0
        self.large_runs = 0
        self.evals = {True: 0, False: 0}
        self.run = self._new_run(np.full(enc.dim, 0.5), sigma0, self.pop0, large=True)
        self.start = 0  # index in history of the current generation's first trial
        self.asked: list[np.ndarray] = []

    def _new_run(self, mean: np.ndarray, sigma: float, popsize: int, large: bool) -> _Run:
        cma_seed = int(_stream(self.seed, self.restarts, _TAG_CMA_SEED).integers(2**31))
        bounds = np.tile([0.0, 1.0], (self.enc.dim, 1))
        return _Run(CMA(mean=mean, sigma=sigma, bounds=bounds, seed=cma_seed, population_size=popsize), large=large)

    @property
    def popsize(self) -> int:
        """Members per generation in the current run."""
        return int(self.run.cma.population_size)

    def ask_generation(self) -> None:
        """Draw the current generation's points; every generation asks the full population, used or not."""
        self.asked = [self.run.cma.ask() for _ in range(self.popsize)]

    def tell(self, solutions: list[tuple[np.ndarray, float]]) -> None:
        """Finish the current generation, restarting first if the strategy says the run has converged."""
        self.run.cma.tell(solutions)
        self.run.told += len(solutions)
        self.start += len(solutions)
        if self.strategy != "none" and self.run.cma.should_stop():
            self._restart()
        self.ask_generation()

    def _restart(self) -> None:
        self.evals[self.run.large] += self.run.told
        self.restarts += 1
        rng = _stream(self.seed, self.restarts, _TAG_RESTART)
        mean = rng.random(self.enc.dim)
        u_pop, u_sigma = rng.random(2)
        if self.strategy == "bipop" and self.evals[False] < self.evals[True]:
            # BIPOP's small regime: a population between the default and half the latest large one, and a
            # smaller step, for a local search that costs about as much as the large runs did.
            large_pop = self.pop0 * POPULATION_GROWTH**self.large_runs
            popsize = max(4, int(self.pop0 * (0.5 * large_pop / self.pop0) ** (u_pop**2)))
            self.run = self._new_run(mean, self.sigma0 * 10 ** (-2 * u_sigma), popsize, large=False)
            return
        self.large_runs += 1
        popsize = self.pop0 * POPULATION_GROWTH**self.large_runs
        self.run = self._new_run(mean, self.sigma0, popsize, large=True)


class CMAES:
    """Katib's ``cmaes``: covariance matrix adaptation over the numeric parameters, on the unit cube.

    Ints, stepped doubles and log scales are handled by the unit-cube encoding and snapped when decoded.
    Categorical and discrete parameters are not part of the CMA-ES search: each trial draws them at random.
    A generation is told once all its members have finished; failed ones count as the worst result seen so
    far. When more points are requested than the current generation has left, the extra ones are drawn
    from the current distribution with their own seeds and become members of the next generation, so
    parallel workers never idle. ``sigma`` is the initial step on that unit cube (default 1/6 of each range).
    ``ipop`` restarts with a doubled population when the optimiser reports convergence; ``bipop`` also
    interleaves runs with small populations and steps, whichever regime has used fewer evaluations.
    """

    name: ClassVar[str] = "cmaes"
    settings_names: ClassVar[tuple[str, ...]] = ("random_state", "sigma", "restart_strategy")

    def validate(self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None) -> list[str]:
        """Check settings with Katib's messages, and that at least two int or double parameters exist."""
        errors = unknown_setting_errors(settings, self.settings_names, self.name) + random_state_errors(settings)
        errors += _sigma_errors(settings)
        strategy = settings.get("restart_strategy", "none")
        if strategy not in RESTART_STRATEGIES:
            errors.append(f"invalid restart_strategy: '{strategy}'")
        if len(_numeric(space)) < 2:
            errors.append("CMA-ES only supports two or more dimensional continuous search space.")
        return errors + space_errors(space)

    def suggest(
        self,
        space: SearchSpace,
        history: Sequence[Trial],
        n: int,
        settings: Mapping[str, str],
        seed: int,
        objective: ObjectiveType,
    ) -> SuggestResult:
        """Up to ``n`` distinct new points: the rest of the current generation, then draws for the next."""
        errors = random_state_errors(settings) + _sigma_errors(settings)
        strategy = settings.get("restart_strategy", "none")
        if strategy not in RESTART_STRATEGIES:
            errors.append(f"invalid restart_strategy: '{strategy}'")
        if errors:
            raise ValueError(errors[0])
        seed = effective_seed(settings, seed)
        sigma0 = float(settings.get("sigma", DEFAULT_SIGMA))
        numeric = _numeric(space)
        used = {assignment_key(space, t.assignment) for t in history}
        if not numeric:
            return _random_only(space, history, n, seed, used)

        enc = UnitEncoder(numeric)
        num_space = SearchSpace(numeric)
        replay = _replay(enc, num_space, history, seed, sigma0, strategy, objective)
        side = copy.deepcopy(replay.run.cma)

        out: list[Assignment] = []
        for i in range(n):
            j = len(history) + i
            slot = j - replay.start
            pick: Assignment | None = None
            for attempt in range(MAX_REDRAWS + 1):
                if attempt == 0 and slot < len(replay.asked):
                    x = replay.asked[slot]
                else:
                    side.reseed_rng(int(_stream(seed, j, attempt, _TAG_REDRAW).integers(2**31)))
                    x = side.ask()
                candidate = _complete(space, enc.decode(x), _stream(seed, j, attempt, _TAG_CATEGORICAL))
                if assignment_key(space, candidate) not in used:
                    pick = candidate
                    break
            if pick is None:
                pick = random_point(space, _stream(seed, j, _TAG_FALLBACK), used)
                if pick is None:
                    return SuggestResult(assignments=out, exhausted=True)
            out.append(pick)
            used.add(assignment_key(space, pick))
        return SuggestResult(assignments=out)


def _replay(
    enc: UnitEncoder,
    num_space: SearchSpace,
    history: Sequence[Trial],
    seed: int,
    sigma0: float,
    strategy: str,
    objective: ObjectiveType,
) -> _Replay:
    """Rebuild the optimiser by telling every finished generation of ``history`` in order."""
    sign = -1.0 if objective == "maximize" else 1.0
    replay = _Replay(enc, seed, sigma0, strategy)
    replay.ask_generation()
    while True:
        end = replay.start + replay.popsize
        members = history[replay.start : end]
        if len(members) < replay.popsize or any(t.is_active for t in members):
            return replay
        results = [sign * t.objective for t in history[:end] if t.has_result and t.objective is not None]
        worst = max(results) if results else 0.0
        solutions: list[tuple[np.ndarray, float]] = []
        for asked, t in zip(replay.asked, members, strict=True):
            value = sign * t.objective if t.has_result and t.objective is not None else worst
            # A member this optimiser drew is told its exact draw; anything else (a redraw, a point from
            # another source) is told where it actually is.
            x = asked
            if assignment_key(num_space, enc.decode(asked)) != assignment_key(num_space, t.assignment):
                encoded = enc.encode(t.assignment)
                if encoded is not None:
                    x = encoded
            solutions.append((x, value))
        replay.tell(solutions)


def _complete(space: SearchSpace, numeric: Assignment, rng: np.random.Generator) -> Assignment:
    """The full assignment in spec order: the decoded numeric values plus a random draw for every list."""
    return {p.name: numeric[p.name] if p.name in numeric else sample_value(p, rng) for p in space.parameters}


def _random_only(
    space: SearchSpace, history: Sequence[Trial], n: int, seed: int, used: set[tuple[str, ...]]
) -> SuggestResult:
    """Random distinct points, for a space without any numeric parameter (validation rejects it for Katib)."""
    out: list[Assignment] = []
    for i in range(n):
        pick = random_point(space, _stream(seed, len(history) + i, _TAG_FALLBACK), used)
        if pick is None:
            return SuggestResult(assignments=out, exhausted=True)
        out.append(pick)
        used.add(assignment_key(space, pick))
    total = space_size(space)
    return SuggestResult(assignments=out, exhausted=total is not None and all_used(space, used))
