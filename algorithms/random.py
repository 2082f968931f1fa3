"""Random search: independent draws from each parameter's distribution, never repeating a point already tried."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from natib.algorithms.base import (
    effective_seed,
    rng_for,
    seeded_sampler_errors,
)
from natib.algorithms.sampling import finite_values, iter_points, sample_assignment, space_size
from natib.algorithms.space import (
    Assignment,
    ObjectiveType,
    Parameter,
    SearchSpace,
    SuggestResult,
    Trial,
    assignment_key,
)

#: Draws tried for one new point before falling back to listing what is left of a finite space.
MAX_DRAWS = 64

#: Finite spaces up to this many points are listed when draws keep hitting used points.
ENUMERATION_LIMIT = 1_000_000

Key = tuple[str, ...]


class UsedPoints:
    """The ``assignment_key``s of every trial in history plus the points added since: ``key in used``.

    Building every key costs a float parse and a ``repr`` per value of every trial, which dominated a
    suggestion once history held a few thousand trials. When the space has a continuous double, a key is
    first looked up by that one parameter's value text among the history's values of it (as natib writes
    doubles: shortest repr, "0.0" for zero), and the full key set is built only when that text occurs, which
    for a continuous parameter is practically never. A history value of that parameter spelled another way
    (``"1.50"`` for 1.5) is not parsed, so a new point equal to it only after parsing is not caught: that
    needs a fresh draw to equal a foreign value to the last bit.
    """

    def __init__(self, space: SearchSpace, history: Sequence[Trial]) -> None:
        self.space = space
        self._history = history
        self._added: set[Key] = set()
        self._keys: set[Key] | None = None
        self._probe = _probe_index(space)
        self._probe_texts: set[str | None] = set()
        if self._probe is None:
            self._keys = {assignment_key(space, t.assignment) for t in history}
        else:
            name = space.parameters[self._probe].name
            self._probe_texts = {t.assignment.get(name) for t in history}

    def _history_keys(self) -> set[Key]:
        if self._keys is None:
            self._keys = {assignment_key(self.space, t.assignment) for t in self._history}
        return self._keys

    def __contains__(self, key: object) -> bool:
        if key in self._added:
            return True
        if self._keys is None and self._probe is not None and isinstance(key, tuple):
            if key[self._probe] not in self._probe_texts:
                return False
        return key in self._history_keys()

    def add(self, key: Key) -> None:
        """Mark ``key`` as used (a point suggested in this call)."""
        self._added.add(key)

    def all(self) -> set[Key]:
        """Every used key: history and the points added."""
        return self._history_keys() | self._added


def _probe_index(space: SearchSpace) -> int | None:
    """The position of a continuous double with room to vary (one without atoms preferred), or None."""

    def fits(p: Parameter) -> bool:
        return p.type == "double" and p.step is None and p.min is not None and p.max is not None and p.min < p.max

    candidates = [i for i, p in enumerate(space.parameters) if fits(p)]
    for i in candidates:
        if space.parameters[i].distribution in ("uniform", "logUniform"):
            return i
    # Normal draws land exactly on a bound now and then; such a column still rules out nearly every trial.
    return candidates[0] if candidates else None


class RandomSearch:
    """Katib's ``random``: each suggestion is drawn independently; repeats of earlier points are redrawn."""

    name: ClassVar[str] = "random"
    settings_names: ClassVar[tuple[str, ...]] = ("random_state",)

    def validate(
        self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None
    ) -> list[str]:
        """Check settings (only ``random_state``) and that every parameter can be sampled."""
        return seeded_sampler_errors(space, settings, self.name)

    def suggest(
        self,
        space: SearchSpace,
        history: Sequence[Trial],
        n: int,
        settings: Mapping[str, str],
        seed: int,
        objective: ObjectiveType,
    ) -> SuggestResult:
        """Up to ``n`` points not in history; ``exhausted`` once a finite space has no unused point left."""
        rng = rng_for(effective_seed(settings, seed), history)
        used = UsedPoints(space, history)
        total = space_size(space)
        listable = total is not None and total <= ENUMERATION_LIMIT
        remaining = total - count_on_grid(space, used.all()) if listable and total is not None else None

        out: list[Assignment] = []
        while len(out) < n and remaining != 0:
            candidate = None
            for _ in range(MAX_DRAWS):
                drawn = sample_assignment(space, rng)
                if assignment_key(space, drawn) not in used:
                    candidate = drawn
                    break
            if candidate is None:
                if not listable:
                    # Only a huge, nearly used-up finite space or a continuous one with min == max gets here;
                    # a repeat beats stalling the experiment.
                    candidate = drawn
                else:
                    taken = used.all()
                    free = [pt for pt in iter_points(space) if pt not in taken]
                    if not free:
                        remaining = 0
                        break
                    pick = free[int(rng.integers(len(free)))]
                    candidate = dict(zip(space.names(), pick, strict=True))
            key = assignment_key(space, candidate)
            if remaining is not None and key not in used:
                remaining -= 1
            used.add(key)
            out.append(candidate)
        return SuggestResult(assignments=out, exhausted=remaining == 0)


def count_on_grid(space: SearchSpace, keys: set[Key]) -> int:
    """How many of ``keys`` are points of the finite space (history may hold points from outside it)."""
    allowed = [set(finite_values(p) or ()) for p in space.parameters]
    return sum(1 for key in keys if all(v in ok for v, ok in zip(key, allowed, strict=True)))
