"""Random search: independent draws from each parameter's distribution, never repeating a point already tried."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from natib.algorithms.base import effective_seed, random_state_errors, rng_for, unknown_setting_errors
from natib.algorithms.sampling import finite_values, iter_points, sample_assignment, space_errors, space_size
from natib.algorithms.space import (
    Assignment,
    ObjectiveType,
    SearchSpace,
    SuggestResult,
    Trial,
    assignment_key,
)

#: Draws tried for one new point before falling back to listing what is left of a finite space.
MAX_DRAWS = 64

#: Finite spaces up to this many points are listed when draws keep hitting used points.
ENUMERATION_LIMIT = 1_000_000


class RandomSearch:
    """Katib's ``random``: each suggestion is drawn independently; repeats of earlier points are redrawn."""

    name: ClassVar[str] = "random"
    settings_names: ClassVar[tuple[str, ...]] = ("random_state",)

    def validate(
        self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None
    ) -> list[str]:
        """Check settings (only ``random_state``) and that every parameter can be sampled."""
        return (
            unknown_setting_errors(settings, self.settings_names, self.name)
            + random_state_errors(settings)
            + space_errors(space)
        )

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
        used = {assignment_key(space, t.assignment) for t in history}
        total = space_size(space)
        listable = total is not None and total <= ENUMERATION_LIMIT
        remaining = total - _count_on_grid(space, used) if listable and total is not None else None

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
                    free = [pt for pt in iter_points(space) if pt not in used]
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


def _count_on_grid(space: SearchSpace, keys: set[tuple[str, ...]]) -> int:
    """How many of ``keys`` are points of the finite space (history may hold points from outside it)."""
    allowed = [set(finite_values(p) or ()) for p in space.parameters]
    return sum(1 for key in keys if all(v in ok for v, ok in zip(key, allowed, strict=True)))
