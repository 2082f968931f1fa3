"""``auto``: picks the strongest algorithm for the search space, the way Optuna's AutoSampler does.

Spaces with categorical or discrete parameters get multivariate TPE; purely numeric spaces get Bayesian
optimisation (a Gaussian process) while the history is small enough for it to stay fast, then TPE. The
choice depends only on the space and the history length, so it is reproducible like every other answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from natib.algorithms.base import random_state_errors, unknown_setting_errors
from natib.algorithms.space import ObjectiveType, SearchSpace, SuggestResult, Trial

#: Above this many trials a Gaussian process gets slow, and TPE takes over.
GP_HISTORY_LIMIT = 250


def choose_algorithm(space: SearchSpace, history_length: int) -> str:
    """The Katib name of the algorithm ``auto`` uses for this space after this many trials."""
    from natib.algorithms.registry import KNOWN_ALGORITHMS

    numeric = all(p.is_numeric_range for p in space.parameters)
    if numeric and history_length < GP_HISTORY_LIMIT and "bayesianoptimization" in KNOWN_ALGORITHMS:
        return "bayesianoptimization"
    if "multivariate-tpe" in KNOWN_ALGORITHMS:
        return "multivariate-tpe"
    return "random"


class AutoSearch:
    """Delegates each request to the algorithm ``choose_algorithm`` picks; only ``random_state`` is a setting."""

    name: ClassVar[str] = "auto"
    settings_names: ClassVar[tuple[str, ...]] = ("random_state",)

    def validate(self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None) -> list[str]:
        """Settings errors, then whatever the first chosen algorithm finds wrong with the space."""
        from natib.algorithms.registry import get_algorithm

        errors = unknown_setting_errors(settings, self.settings_names, self.name) + random_state_errors(settings)
        if errors:
            return errors
        return get_algorithm(choose_algorithm(space, 0)).validate(space, settings, max_trial_count)

    def suggest(self, space: SearchSpace, history: Sequence[Trial], n: int, settings: Mapping[str, str],
                seed: int, objective: ObjectiveType) -> SuggestResult:
        """The chosen algorithm's suggestions."""
        from natib.algorithms.registry import get_algorithm

        return get_algorithm(choose_algorithm(space, len(history))).suggest(space, history, n, settings, seed,
                                                                             objective)
