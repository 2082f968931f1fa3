"""Grid search: every combination of parameter values, in a fixed order, each tried once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from natib.algorithms.base import random_state_errors, unknown_setting_errors
from natib.algorithms.sampling import iter_points, space_errors, space_size
from natib.algorithms.space import (
    Assignment,
    ObjectiveType,
    SearchSpace,
    SuggestResult,
    Trial,
    assignment_key,
)

#: Grids larger than this are refused at validation: walking them on every suggestion would be too slow.
MAX_GRID_POINTS = 10_000_000


def _step_errors(space: SearchSpace) -> list[str]:
    return [
        f"Param {p.name} step is nil; For discrete search space, all parameters must include step"
        for p in space.parameters
        if p.type == "double" and p.step is None
    ]


class GridSearch:
    """Katib's ``grid``: the cartesian product of the parameters' values, first parameter varying slowest.

    Distributions do not apply: a grid is its points. ``random_state`` is accepted for compatibility and has
    no effect, since the order is fixed.
    """

    name: ClassVar[str] = "grid"
    settings_names: ClassVar[tuple[str, ...]] = ("random_state",)

    def validate(
        self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None
    ) -> list[str]:
        """Check settings, that every double has a step, and that the grid can hold ``max_trial_count`` trials."""
        errors = unknown_setting_errors(settings, self.settings_names, self.name) + random_state_errors(
            settings
        )
        shape_errors = space_errors(space) + _step_errors(space)
        if shape_errors:
            return errors + shape_errors
        size = space_size(space)
        assert size is not None  # every double has a step, so every parameter is finite
        if size > MAX_GRID_POINTS:
            errors.append(
                f"grid search space has {size} combinations, more than the {MAX_GRID_POINTS} grid supports; "
                "use larger steps or fewer values"
            )
        if max_trial_count is not None and max_trial_count > size:
            errors.append(f"Max Trial Count: {max_trial_count} > all possible search combinations: {size}")
        return errors

    def suggest(
        self,
        space: SearchSpace,
        history: Sequence[Trial],
        n: int,
        settings: Mapping[str, str],
        seed: int,
        objective: ObjectiveType,
    ) -> SuggestResult:
        """The next ``n`` grid points not in history (whatever their status); ``exhausted`` when none remain."""
        errors = _step_errors(space)
        if errors:
            raise ValueError(errors[0])
        used = {assignment_key(space, t.assignment) for t in history}
        names = space.names()
        out: list[Assignment] = []
        exhausted = True
        for point in iter_points(space):
            if point in used:
                continue
            if len(out) >= n:
                exhausted = False
                break
            out.append(dict(zip(names, point, strict=True)))
        return SuggestResult(assignments=out, exhausted=exhausted)
