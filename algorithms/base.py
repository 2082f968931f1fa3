"""The interface every search algorithm implements, and the shared settings helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol

import numpy as np

from natib.algorithms.space import ObjectiveType, SearchSpace, SuggestResult, Trial


class Algorithm(Protocol):
    """A search algorithm. Implementations are stateless: everything comes in through the arguments."""

    name: ClassVar[str]

    def validate(
        self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None
    ) -> list[str]:
        """Return Katib-style error messages for bad settings or an unsupported space (empty if valid)."""
        ...

    def suggest(
        self,
        space: SearchSpace,
        history: Sequence[Trial],
        n: int,
        settings: Mapping[str, str],
        seed: int,
        objective: ObjectiveType,
    ) -> SuggestResult:
        """Return up to ``n`` new assignments given every trial so far (pending and running included)."""
        ...


def rng_for(seed: int, history: Sequence[Trial], *extra: int) -> np.random.Generator:
    """A generator derived from the seed and the history length, never from stored state."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, len(history), *extra])


def unknown_setting_errors(settings: Mapping[str, str], allowed: Sequence[str], algorithm: str) -> list[str]:
    """Katib's message for every setting the algorithm does not know, in the order given."""
    return [f"unknown setting {name} for algorithm {algorithm}" for name in settings if name not in allowed]


def random_state_errors(settings: Mapping[str, str]) -> list[str]:
    """Katib's messages for a ``random_state`` setting that is not an integer >= 0 (empty if absent or valid)."""
    if "random_state" not in settings:
        return []
    raw = settings["random_state"]
    try:
        value = int(raw)
    except (TypeError, ValueError) as exc:
        return [f"failed to validate random_state({raw}): {exc}"]
    if value < 0:
        return ["random_state should be great or equal than zero"]
    return []


def seeded_sampler_errors(space: SearchSpace, settings: Mapping[str, str], algorithm: str) -> list[str]:
    """Validation of an algorithm whose only setting is ``random_state`` and that samples every parameter."""
    from natib.algorithms.sampling import space_errors

    return (
        unknown_setting_errors(settings, ("random_state",), algorithm)
        + random_state_errors(settings)
        + space_errors(space)
    )


def effective_seed(settings: Mapping[str, str], seed: int) -> int:
    """The ``random_state`` setting when present (it pins the sequence), else the experiment's seed."""
    errors = random_state_errors(settings)
    if errors:
        raise ValueError(errors[0])
    if "random_state" in settings:
        return int(settings["random_state"])
    return seed
