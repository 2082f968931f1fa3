"""CMA-ES (Katib's ``cmaes``) over the int and double parameters, its state rebuilt from history on every call.

Trials are grouped, in creation order, into generations of the population size. Replaying the history asks
each generation from a freshly seeded ``cmaes.CMA`` and tells it once every member has finished, so the same
history always rebuilds the same optimiser and a restarted controller loses nothing.

Replaying a long history costs tens of milliseconds, so each call also writes the optimiser as it stood at the
start of the current generation into the ``STATE_LABEL`` label of its first new trial. The next call restores
it from the newest such label, checked against a digest of the trials before that generation, and replays only
the generations finished since; a label that does not fit (other settings, a changed history) is ignored and
the whole history is replayed. Either way the answer is the same.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from cmaes import CMA

from natib.algorithms.base import effective_seed, random_state_errors, unknown_setting_errors
from natib.algorithms.gp import UnitEncoder, all_used, random_point
from natib.algorithms.random import UsedPoints
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


class _CMA(CMA):
    """``cmaes.CMA`` counting the normal vectors it draws, so its random stream can be rebuilt from the seed."""

    def __init__(self, *, seed: int, sigma: float, **kwargs: object) -> None:
        super().__init__(seed=seed, sigma=sigma, **kwargs)  # type: ignore[arg-type]
        # The function history starts as np.empty, and its slots are only read once every one has been
        # written (should_stop, past funhist_term generations); zeros keep the carried state reproducible.
        self._funhist_values = np.zeros(2 * self._funhist_term)
        self.natib_seed = seed
        self.natib_sigma0 = sigma
        self.natib_samples = 0

    def _sample_solution(self) -> np.ndarray:
        # Each sample draws one standard normal vector of length dim from the generator, nothing else.
        self.natib_samples += 1
        return super()._sample_solution()  # type: ignore[no-any-return]


#: The optimiser fields that change after construction (all others follow from dim, population and sigma).
_CMA_STATE = ("_mean", "_sigma", "_C", "_B", "_D", "_p_sigma", "_pc", "_g", "_funhist_values")

#: Label carrying the optimiser as it was at the start of the current generation (see ``_Replay.snapshot``).
STATE_LABEL = "cmaes.natib/state"
_STATE_VERSION = 1


@dataclass
class _Run:
    """One CMA-ES run between restarts: its optimiser and how many trials it has been told."""

    cma: _CMA
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
        # The worst result among history[:scanned], where scanned is the end of the last generation told.
        self.worst: float | None = None
        self.scanned = 0
        self._before_ask: dict[str, object] = {}
        self.prefix: tuple[int, str] = (-1, "")  # (start, fingerprint of history[:start]) once computed

    def _new_run(self, mean: np.ndarray, sigma: float, popsize: int, large: bool) -> _Run:
        cma_seed = int(_stream(self.seed, self.restarts, _TAG_CMA_SEED).integers(2**31))
        bounds = np.tile([0.0, 1.0], (self.enc.dim, 1))
        return _Run(_CMA(mean=mean, sigma=sigma, bounds=bounds, seed=cma_seed, population_size=popsize), large=large)

    @property
    def popsize(self) -> int:
        """Members per generation in the current run."""
        return int(self.run.cma.population_size)

    def ask_generation(self) -> None:
        """Draw the current generation's points; every generation asks the full population, used or not."""
        cma = self.run.cma
        # What a snapshot needs of the optimiser before asking: asking replaces C, B and D (never in place),
        # tell updates the mean and the function history in place, so those two are copied.
        self._before_ask = {f: getattr(cma, f) for f in _CMA_STATE}
        self._before_ask["_mean"] = cma._mean.copy()
        self._before_ask["_funhist_values"] = cma._funhist_values.copy()
        self._before_ask["samples"] = cma.natib_samples
        self.asked = [cma.ask() for _ in range(self.popsize)]

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

    def snapshot(self, history: Sequence[Trial], config: str) -> str:
        """The replay as it stood at the start of the current generation, as the text of ``STATE_LABEL``.

        Restored (``_restore``) against a history whose first ``start`` trials are unchanged, it continues
        exactly as a replay of the whole history would: floats are written in full (repr round-trips), and
        the optimiser's random stream is rebuilt from its seed and the number of vectors it has drawn.
        """
        cma = self.run.cma
        state = {
            "v": _STATE_VERSION,
            "config": config,
            "start": self.start,
            "prefix": self.prefix[1] if self.prefix[0] == self.start else _fingerprint(history[: self.start]),
            "worst": self.worst,
            "restarts": self.restarts,
            "large_runs": self.large_runs,
            "evals": [self.evals[False], self.evals[True]],
            "told": self.run.told,
            "large": self.run.large,
            "popsize": self.popsize,
            "cma_seed": cma.natib_seed,
            "cma_sigma0": cma.natib_sigma0,
            "samples": self._before_ask["samples"],
            "cma": {f: _pack(self._before_ask[f]) for f in _CMA_STATE},
        }
        return json.dumps(state, separators=(",", ":"))


def _pack(value: object) -> object:
    if isinstance(value, np.ndarray):
        return {"shape": list(value.shape), "data": value.ravel().tolist()}
    if isinstance(value, np.floating):
        return {"f64": float(value)}
    if isinstance(value, np.integer):
        return {"i64": int(value)}
    return value


def _unpack(value: object) -> object:
    if isinstance(value, dict):
        if "shape" in value:
            return np.array(value["data"], dtype=float).reshape(value["shape"])
        if "f64" in value:
            return np.float64(value["f64"])
        if "i64" in value:
            return np.int64(value["i64"])
    return value


def _fingerprint(trials: Sequence[Trial]) -> str:
    """A digest of what the replay reads from each trial: its identity, its state and its result."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\x1f".join([t.name for t in trials]).encode())
    digest.update(b"\x1e")
    digest.update("\x1f".join([t.status for t in trials]).encode())
    digest.update(b"\x1e")
    objectives = [math.nan if t.objective is None else t.objective for t in trials]
    digest.update(np.array(objectives, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _config(enc: UnitEncoder, seed: int, sigma0: float, strategy: str, objective: ObjectiveType) -> str:
    """What a snapshot is only valid for: the settings and the numeric parameters."""
    params = [(p.name, p.type, p.min, p.max, p.step, p.distribution) for p in enc.params]
    return hashlib.blake2b(repr((seed, sigma0, strategy, objective, params)).encode(), digest_size=16).hexdigest()


def _restore(
    enc: UnitEncoder, history: Sequence[Trial], seed: int, sigma0: float, strategy: str, config: str
) -> _Replay | None:
    """The replay from the newest ``STATE_LABEL`` in history, or None if there is none that fits this history."""
    raw = next((t.labels[STATE_LABEL] for t in reversed(history) if STATE_LABEL in t.labels), None)
    if raw is None:
        return None
    try:
        state = json.loads(raw)
        if state.get("v") != _STATE_VERSION or state["config"] != config:
            return None
        start = int(state["start"])
        if not 0 <= start <= len(history) or state["prefix"] != _fingerprint(history[:start]):
            return None
        prefix = (start, str(state["prefix"]))
        replay = _Replay.__new__(_Replay)
        replay.enc, replay.seed, replay.sigma0, replay.strategy = enc, seed, sigma0, strategy
        replay.pop0 = 4 + int(3 * math.log(enc.dim))
        replay.restarts = int(state["restarts"])
        replay.large_runs = int(state["large_runs"])
        replay.evals = {False: int(state["evals"][0]), True: int(state["evals"][1])}
        replay.start = replay.scanned = start
        replay.worst = None if state["worst"] is None else float(state["worst"])
        replay.asked = []
        replay._before_ask = {}
        replay.prefix = prefix
        bounds = np.tile([0.0, 1.0], (enc.dim, 1))
        cma = _CMA(
            mean=np.full(enc.dim, 0.5),
            sigma=float(state["cma_sigma0"]),
            bounds=bounds,
            seed=int(state["cma_seed"]),
            population_size=int(state["popsize"]),
        )
        dim = enc.dim
        shapes = {"_mean": (dim,), "_C": (dim, dim), "_B": (dim, dim), "_D": (dim,), "_p_sigma": (dim,)}
        shapes |= {"_pc": (dim,), "_funhist_values": cma._funhist_values.shape}
        for f in _CMA_STATE:
            value = _unpack(state["cma"][f])
            if f in shapes and value is not None and not (isinstance(value, np.ndarray) and value.shape == shapes[f]):
                return None
            setattr(cma, f, value)
        samples = int(state["samples"])
        cma._rng.randn(samples * enc.dim)  # the draws of every sample so far, as one call makes them
        cma.natib_samples = samples
        replay.run = _Run(cma, told=int(state["told"]), large=bool(state["large"]))
        return replay
    except (KeyError, TypeError, ValueError, IndexError):
        return None


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
        used = UsedPoints(space, history)
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
        # The optimiser travels with the first new trial, so the next call starts from it instead of replaying
        # the whole history; one copy per call is enough, as only the newest one is read.
        config = _config(enc, seed, sigma0, strategy, objective)
        labels = [{STATE_LABEL: replay.snapshot(history, config)} if i == 0 else {} for i in range(len(out))]
        return SuggestResult(assignments=out, labels=labels)


def _replay(
    enc: UnitEncoder,
    num_space: SearchSpace,
    history: Sequence[Trial],
    seed: int,
    sigma0: float,
    strategy: str,
    objective: ObjectiveType,
    use_labels: bool = True,
) -> _Replay:
    """Rebuild the optimiser by telling every finished generation of ``history`` in order.

    The newest ``STATE_LABEL`` in history, when it was written for these settings and the trials before its
    generation are unchanged, stands in for replaying those trials; the result is the same either way.
    """
    sign = -1.0 if objective == "maximize" else 1.0
    config = _config(enc, seed, sigma0, strategy, objective)
    replay = (_restore(enc, history, seed, sigma0, strategy, config) if use_labels else None) or _Replay(
        enc, seed, sigma0, strategy
    )
    replay.ask_generation()
    while True:
        end = replay.start + replay.popsize
        members = history[replay.start : end]
        if len(members) < replay.popsize or any(t.is_active for t in members):
            return replay
        # The worst result among history[:end], kept as a running maximum: ``end`` only grows.
        for t in history[replay.scanned : end]:
            if t.has_result and t.objective is not None:
                value = sign * t.objective
                if replay.worst is None or value > replay.worst:
                    replay.worst = value
        replay.scanned = end
        fallback = replay.worst if replay.worst is not None else 0.0
        solutions: list[tuple[np.ndarray, float]] = []
        for asked, t in zip(replay.asked, members, strict=True):
            value = sign * t.objective if t.has_result and t.objective is not None else fallback
            solutions.append((_told_point(enc, asked, t.assignment), value))
        replay.tell(solutions)


def _told_point(enc: UnitEncoder, asked: np.ndarray, assignment: Mapping[str, str]) -> np.ndarray:
    """What a member is told: its exact draw if the trial ran this optimiser's draw, else where it actually is.

    A trial that ran something else (a redraw, a point from another source) is told its encoded assignment.
    """
    # Compared the way assignment_key compares, one parameter at a time, stopping at the first difference.
    # decode writes each value as assignment_key would, so only a differently written value needs parsing.
    for c in enc.columns:
        p = c.param
        decoded = enc.decode_column(c, asked)
        raw = assignment.get(p.name, "")
        if raw == decoded:
            continue
        try:
            same = p.is_numeric_range and p.format(float(raw)) == decoded
        except ValueError:
            same = False
        if not same:
            break
    else:
        return asked
    encoded = enc.encode(assignment)
    return encoded if encoded is not None else asked


def _complete(space: SearchSpace, numeric: Assignment, rng: np.random.Generator) -> Assignment:
    """The full assignment in spec order: the decoded numeric values plus a random draw for every list."""
    return {p.name: numeric[p.name] if p.name in numeric else sample_value(p, rng) for p in space.parameters}


def _random_only(space: SearchSpace, history: Sequence[Trial], n: int, seed: int, used: UsedPoints) -> SuggestResult:
    """Random distinct points, for a space without any numeric parameter (validation rejects it for Katib)."""
    out: list[Assignment] = []
    for i in range(n):
        pick = random_point(space, _stream(seed, len(history) + i, _TAG_FALLBACK), used)
        if pick is None:
            return SuggestResult(assignments=out, exhausted=True)
        out.append(pick)
        used.add(assignment_key(space, pick))
    total = space_size(space)
    return SuggestResult(assignments=out, exhausted=total is not None and all_used(space, used.all()))
