"""Early-stopping settings validation and the median stopping rule, as pure functions of reported values."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from natib.algorithms.space import ObjectiveType

#: Early-stopping algorithms natib implements.
KNOWN_EARLY_STOPPING: tuple[str, ...] = ("medianstop",)

_MEDIANSTOP_DEFAULTS: dict[str, int] = {"min_trials_required": 3, "start_step": 4}


def _medianstop_errors(settings: Mapping[str, str]) -> list[str]:
    errors: list[str] = []
    for name, raw in settings.items():
        if name not in _MEDIANSTOP_DEFAULTS:
            errors.append(f"unknown setting {name} for algorithm medianstop")
            continue
        try:
            value = int(raw)
        except (TypeError, ValueError) as exc:
            errors.append(f"failed to validate {name}({raw}): {exc}")
            continue
        if name == "min_trials_required" and value <= 0:
            errors.append("min_trials_required must be greater than zero (>0)")
        elif name == "start_step" and value < 1:
            errors.append("start_step must be greater or equal than one (>=1)")
    return errors


def validate_early_stopping(name: str, settings: Mapping[str, str]) -> list[str]:
    """Katib's messages for an unknown early-stopping algorithm or bad settings (empty if valid)."""
    if name not in KNOWN_EARLY_STOPPING:
        return [f"unknown algorithm name {name}"]
    return _medianstop_errors(settings)


@dataclass(frozen=True)
class MedianStop:
    """The median stopping rule: stop a trial whose best value so far is worse than the median of its peers.

    Peers are completed trials; each contributes the running average of its first ``s`` reports, where ``s``
    is the number of reports the judged trial has made. No decision is taken before ``start_step`` reports
    or with fewer than ``min_trials_required`` peers.
    """

    min_trials_required: int = _MEDIANSTOP_DEFAULTS["min_trials_required"]
    start_step: int = _MEDIANSTOP_DEFAULTS["start_step"]

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> MedianStop:
        """Build the rule from Katib settings, defaults filling the gaps; ValueError with Katib's message if bad."""
        errors = _medianstop_errors(settings)
        if errors:
            raise ValueError("; ".join(errors))
        values = {**_MEDIANSTOP_DEFAULTS, **{k: int(v) for k, v in settings.items()}}
        return cls(min_trials_required=values["min_trials_required"], start_step=values["start_step"])

    def threshold(self, step: int, others: Sequence[Sequence[float]]) -> float | None:
        """The median of the peers' running averages over their first ``step`` reports, or None if too few peers."""
        averages = []
        for series in others:
            # A non-finite report (a diverged run) would turn the average into nan and silence the rule.
            head = [v for v in series[:step] if math.isfinite(v)]
            if head:
                averages.append(sum(head) / len(head))
        if len(averages) < self.min_trials_required:
            return None
        return float(np.median(averages))

    def should_stop(
        self, trial_values: Sequence[float], others: Sequence[Sequence[float]], objective: ObjectiveType
    ) -> bool:
        """Whether the trial with reports ``trial_values`` should stop now, given completed peers' reports."""
        step = len(trial_values)
        if step < self.start_step:
            return False
        finite = [v for v in trial_values if math.isfinite(v)]
        if not finite:
            return False
        median = self.threshold(step, others)
        if median is None:
            return False
        if objective == "minimize":
            return min(finite) > median
        return max(finite) < median
