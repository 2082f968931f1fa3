"""Hyperband and successive halving: brackets of random configurations whose best are promoted to more resource.

Every bracket, rung and promotion is recomputed from the trials' labels and assignments, so the algorithm holds
no state. Brackets run side by side: a later bracket's first rung starts while an earlier bracket waits for
results, so parallel slots never sit idle while work remains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from natib.algorithms.base import effective_seed, random_state_errors, rng_for, unknown_setting_errors
from natib.algorithms.sampling import NumericGrid, iter_points, sample_assignment, space_errors, space_size
from natib.algorithms.space import (
    Assignment,
    ObjectiveType,
    Parameter,
    SearchSpace,
    SuggestResult,
    Trial,
    assignment_key,
)

#: Label holding a trial's bracket (Hyperband's s: s_max is the most aggressive bracket, 0 the plain one).
BRACKET_LABEL = "hyperband.natib/bracket"
#: Label holding a trial's rung inside its bracket (0 = the random configurations).
RUNG_LABEL = "hyperband.natib/rung"
#: Label naming the trial whose configuration was promoted into this one (absent on rung 0).
PARENT_LABEL = "hyperband.natib/parent"

#: Default reduction factor between rungs.
DEFAULT_ETA = 3.0

#: Draws tried for a fresh configuration before settling for one only new within its bracket.
MAX_DRAWS = 64

#: Finite configuration spaces up to this many points are listed when random draws keep colliding.
ENUMERATION_LIMIT = 1_000_000

# Slack for products and logarithms such as log(81)/log(3) = 3.9999999999999996 that must count as whole.
_EPS = 1e-9


def _floor(x: float) -> int:
    return math.floor(x + _EPS * max(1.0, abs(x)))


def _ceil(x: float) -> int:
    return math.ceil(x - _EPS * max(1.0, abs(x)))


def _parse_number(raw: str) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _resource_type_error(param: Parameter) -> str | None:
    if param.is_numeric_range:
        return None
    if param.type == "discrete" and param.values and all(_parse_number(v) is not None for v in param.values):
        return None
    return (
        f"resource parameter {param.name} must be an int, a double or a discrete parameter with numeric values, "
        f"not {param.type}"
    )


def _settings_errors(space: SearchSpace, settings: Mapping[str, str], algorithm: str) -> list[str]:
    allowed = ("r_l", "resource_name", "eta", "random_state")
    errors = unknown_setting_errors(settings, allowed, algorithm) + random_state_errors(settings)
    if "r_l" not in settings or "resource_name" not in settings:
        return [*errors, "r_l and resource_name must be set."]
    r_l = _parse_number(settings["r_l"])
    if r_l is None or r_l <= 0:
        errors.append("r_l must be a positive float number.")
    if "eta" in settings:
        eta = _parse_number(settings["eta"])
        # Katib resets eta <= 0 to 3; eta in (0, 1] would make every bracket infinite or empty, so it is refused.
        if eta is None or 0 < eta <= 1:
            errors.append(
                f"eta must be a number greater than 1 (values <= 0 mean {DEFAULT_ETA:g}), got {settings['eta']}"
            )
    names = space.names()
    if settings["resource_name"] not in names:
        errors.append("value of resource_name setting must be in parameters.")
    else:
        type_error = _resource_type_error(space.get(settings["resource_name"]))
        if type_error:
            errors.append(type_error)
    return errors


@dataclass(frozen=True)
class BracketPlan:
    """Hyperband's arithmetic for one experiment: bracket sizes, rung sizes and the resource at every rung."""

    r_l: float
    eta: float
    s_max: int

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> BracketPlan:
        """The plan for valid settings (``r_l`` required, ``eta`` defaulting to 3 and reset to 3 when <= 0)."""
        r_l = float(settings["r_l"])
        eta = float(settings.get("eta", DEFAULT_ETA))
        if eta <= 0:
            eta = DEFAULT_ETA
        return cls(r_l=r_l, eta=eta, s_max=max(0, _floor(math.log(r_l) / math.log(eta))))

    def initial_size(self, s: int) -> int:
        """How many random configurations bracket ``s`` starts with: ceil((s_max+1)/(s+1) * eta^s)."""
        return max(1, _ceil((self.s_max + 1) / (s + 1) * self.eta**s))

    def rung_sizes(self, s: int, cap: int | None = None) -> list[int]:
        """Trials per rung of bracket ``s``; each rung keeps the best floor(n/eta), at least one.

        ``cap`` bounds the first rung by the number of distinct configurations the space holds.
        """
        size = self.initial_size(s)
        if cap is not None:
            size = max(1, min(size, cap))
        sizes = [size]
        for _ in range(s):
            sizes.append(max(1, _floor(sizes[-1] / self.eta)))
        return sizes

    def resource(self, s: int, i: int) -> float:
        """The resource of rung ``i`` of bracket ``s``: r_l * eta^(i-s), so the last rung gets r_l."""
        return self.r_l * self.eta ** (i - s)


def format_resource(param: Parameter, r: float) -> str:
    """The resource value ``r`` as an assignment of ``param``: int(r) for ints, inside bounds and on the step.

    Doubles keep the fraction (a resource such as a share of the data set need not be whole); discrete
    parameters take the nearest listed value, the larger one on a tie.
    """
    nearest_int = round(r)
    if abs(r - nearest_int) <= _EPS * max(1.0, abs(r)):
        r = float(nearest_int)
    if not param.is_numeric_range:
        numeric = [(float(v), v) for v in param.values]
        return min(numeric, key=lambda pair: (abs(pair[0] - r), -pair[0]))[1]
    assert param.min is not None and param.max is not None
    value = float(math.floor(r)) if param.type == "int" else r
    if param.type == "int" or param.step is not None:
        grid = NumericGrid(param)
        return param.format(grid.value(grid.nearest_index(value)))
    return param.format(min(max(value, float(param.min)), float(param.max)))


def _label_int(trial: Trial, label: str) -> int | None:
    raw = trial.labels.get(label)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


class _Brackets:
    """Hyperband's bookkeeping, shared by the full algorithm and by successive halving (a single bracket)."""

    name: ClassVar[str]

    def _bracket_order(self, plan: BracketPlan) -> list[int]:
        raise NotImplementedError

    def validate(
        self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None
    ) -> list[str]:
        """Check ``r_l``, ``resource_name``, ``eta`` and ``random_state`` with Katib's messages, and the space."""
        return _settings_errors(space, settings, self.name) + space_errors(space)

    def total_trials(self, space: SearchSpace, settings: Mapping[str, str]) -> int:
        """How many trials the whole search creates for these settings (useful for sizing maxTrialCount)."""
        plan = BracketPlan.from_settings(settings)
        cap = space_size(_others(space, settings["resource_name"]))
        return sum(sum(plan.rung_sizes(s, cap)) for s in self._bracket_order(plan))

    def suggest(
        self,
        space: SearchSpace,
        history: Sequence[Trial],
        n: int,
        settings: Mapping[str, str],
        seed: int,
        objective: ObjectiveType,
    ) -> SuggestResult:
        """Promotions that are due, then new random configurations, up to ``n``; exhausted once all are created."""
        errors = _settings_errors(space, settings, self.name)
        if errors:
            raise ValueError(errors[0])
        plan = BracketPlan.from_settings(settings)
        resource = space.get(settings["resource_name"])
        others = _others(space, resource.name)
        cap = space_size(others)
        rng = rng_for(effective_seed(settings, seed), history)
        sign = 1.0 if objective == "maximize" else -1.0

        order = self._bracket_order(plan)
        rungs: dict[tuple[int, int], list[tuple[int, Trial]]] = {}
        for index, trial in enumerate(history):
            s, i = _label_int(trial, BRACKET_LABEL), _label_int(trial, RUNG_LABEL)
            if s is not None and i is not None and s in order and 0 <= i <= s:
                rungs.setdefault((s, i), []).append((index, trial))

        def rank(item: tuple[int, Trial]) -> tuple[int, float, int]:
            index, trial = item
            if trial.has_result and trial.objective is not None:
                return (0, -sign * trial.objective, index)
            # Failed, killed and metric-less trials rank below every result, as the worst of the rung.
            return (1, 0.0, index)

        out: list[Assignment] = []
        labels: list[dict[str, str]] = []
        outstanding = 0

        # Promotions first: they extend the brackets that are furthest along, whose trials run longest.
        for s in order:
            sizes = plan.rung_sizes(s, cap)
            for i in range(s):
                lower, upper = rungs.get((s, i), []), rungs.get((s, i + 1), [])
                need = sizes[i + 1] - len(upper)
                if need <= 0:
                    continue
                if len(lower) < sizes[i] or any(t.is_active for _, t in lower):
                    outstanding += need
                    continue
                promoted = {t.labels.get(PARENT_LABEL) for _, t in upper}
                candidates = [t for _, t in sorted(lower, key=rank) if t.name not in promoted][:need]
                outstanding += len(candidates)
                value = format_resource(resource, plan.resource(s, i + 1))
                for parent in candidates:
                    if len(out) >= n:
                        break
                    assignment = {p.name: str(parent.assignment.get(p.name, "")) for p in space.parameters}
                    assignment[resource.name] = value
                    out.append(assignment)
                    labels.append({BRACKET_LABEL: str(s), RUNG_LABEL: str(i + 1), PARENT_LABEL: parent.name})

        configs = {assignment_key(others, t.assignment) for t in history}
        points = {assignment_key(space, t.assignment) for t in history} | {assignment_key(space, a) for a in out}
        for s in order:
            need = plan.rung_sizes(s, cap)[0] - len(rungs.get((s, 0), []))
            if need <= 0:
                continue
            outstanding += need
            value = format_resource(resource, plan.resource(s, 0))
            for _ in range(need):
                if len(out) >= n:
                    break
                assignment = _fresh_point(space, others, resource.name, value, rng, configs, points)
                configs.add(assignment_key(others, assignment))
                points.add(assignment_key(space, assignment))
                out.append(assignment)
                labels.append({BRACKET_LABEL: str(s), RUNG_LABEL: "0"})

        return SuggestResult(assignments=out, exhausted=outstanding == len(out), labels=labels)


def _others(space: SearchSpace, resource_name: str) -> SearchSpace:
    return SearchSpace(tuple(p for p in space.parameters if p.name != resource_name))


def _fresh_point(
    space: SearchSpace,
    others: SearchSpace,
    resource_name: str,
    value: str,
    rng: np.random.Generator,
    configs: set[tuple[str, ...]],
    points: set[tuple[str, ...]],
) -> Assignment:
    """A random configuration at resource ``value``: untried at any resource if possible, else a new point.

    Only a space whose non-resource part is nearly used up, with a resource range that clips several rungs
    to the same value, can be left with a repeat.
    """

    def at(config: Mapping[str, str]) -> Assignment:
        return {p.name: value if p.name == resource_name else config[p.name] for p in space.parameters}

    drawn = at(sample_assignment(others, rng))
    for _ in range(MAX_DRAWS):
        if assignment_key(others, drawn) not in configs:
            return drawn
        drawn = at(sample_assignment(others, rng))
    for _ in range(MAX_DRAWS):
        if assignment_key(space, drawn) not in points:
            return drawn
        drawn = at(sample_assignment(others, rng))
    size = space_size(others)
    if size is not None and size <= ENUMERATION_LIMIT:
        names = others.names()
        candidates = (at(dict(zip(names, pt, strict=True))) for pt in iter_points(others))
        free = [a for a in candidates if assignment_key(space, a) not in points]
        if free:
            return free[int(rng.integers(len(free)))]
    return drawn


class Hyperband(_Brackets):
    """Katib's ``hyperband``: brackets s = s_max..0, each successive halving from ceil((s_max+1)/(s+1)*eta^s)
    random configurations at resource r_l*eta^-s up to r_l.

    Unlike Katib it needs no minimum parallelTrialCount, runs brackets side by side, and promotes as soon as a
    rung's results are all in (failed trials rank last).
    """

    name: ClassVar[str] = "hyperband"

    def _bracket_order(self, plan: BracketPlan) -> list[int]:
        return list(range(plan.s_max, -1, -1))


class SuccessiveHalving(_Brackets):
    """Successive halving: Hyperband's most aggressive bracket (s = s_max) alone, with the same settings."""

    name: ClassVar[str] = "successive-halving"

    def _bracket_order(self, plan: BracketPlan) -> list[int]:
        return [plan.s_max]
