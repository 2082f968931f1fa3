"""Early-stopping rules and their settings validation, as pure functions of reported values.

Two rules are implemented: ``medianstop`` (Katib's median stopping rule) and ``hyperband`` (asynchronous
successive halving over a trial's reports). Both satisfy :class:`EarlyStoppingRule`, and
:func:`early_stopping_rule` builds one from an experiment's ``earlyStopping`` name and settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from natib.algorithms.space import ObjectiveType

#: Early-stopping algorithms natib implements.
KNOWN_EARLY_STOPPING: tuple[str, ...] = ("medianstop", "hyperband")

#: Which other trials a rule compares a trial with: only completed ones (Succeeded or EarlyStopped), or every
#: other trial that has reported, running ones included.
PeerSelection = Literal["completed", "all"]


class EarlyStoppingRule(Protocol):
    """What the early-stopping actor needs from a rule: which peers it wants, a decision, and its reason."""

    @property
    def peers(self) -> PeerSelection:
        """Which other trials' reports ``should_stop`` and ``explain`` expect in ``others``."""
        ...

    def should_stop(
        self, trial_values: Sequence[float], others: Sequence[Sequence[float]], objective: ObjectiveType
    ) -> bool:
        """Whether the trial with reports ``trial_values`` should stop now, given the peers' report series."""
        ...

    def explain(
        self, trial_values: Sequence[float], others: Sequence[Sequence[float]], objective: ObjectiveType
    ) -> str:
        """Why the trial is stopped, for the StopTrial message (meaningful when ``should_stop`` is true)."""
        ...

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


_HYPERBAND_DEFAULTS: dict[str, int] = {"eta": 3, "min_resource": 1}
_HYPERBAND_SETTINGS: tuple[str, ...] = ("eta", "min_resource", "max_resource")


def _hyperband_errors(settings: Mapping[str, str]) -> list[str]:
    errors: list[str] = []
    parsed: dict[str, int] = {}
    for name, raw in settings.items():
        if name not in _HYPERBAND_SETTINGS:
            errors.append(f"unknown setting {name} for algorithm hyperband")
            continue
        try:
            value = int(raw)
        except (TypeError, ValueError) as exc:
            # eta's own message already says it must be an integer.
            errors.append("eta must be an integer greater than or equal to two (>=2)" if name == "eta"
                          else f"failed to validate {name}({raw}): {exc}")
            continue
        if name == "eta" and value < 2:
            errors.append("eta must be an integer greater than or equal to two (>=2)")
        elif name == "min_resource" and value < 1:
            errors.append("min_resource must be greater or equal than one (>=1)")
        else:
            parsed[name] = value
    # Compare max_resource with the effective min_resource, unless min_resource itself was rejected.
    minimum = parsed.get("min_resource", None if "min_resource" in settings else _HYPERBAND_DEFAULTS["min_resource"])
    if "max_resource" in parsed and minimum is not None and parsed["max_resource"] < minimum:
        errors.append("max_resource must be greater than or equal to min_resource")
    return errors


_VALIDATORS: dict[str, Callable[[Mapping[str, str]], list[str]]] = {
    "medianstop": _medianstop_errors,
    "hyperband": _hyperband_errors,
}


def validate_early_stopping(name: str, settings: Mapping[str, str]) -> list[str]:
    """Katib's messages for an unknown early-stopping algorithm or bad settings (empty if valid)."""
    validator = _VALIDATORS.get(name)
    if validator is None:
        return [f"unknown algorithm name {name}"]
    return validator(settings)


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

    @property
    def peers(self) -> PeerSelection:
        """Completed trials only, as in Katib: a running peer's curve is not a result yet."""
        return "completed"

    def explain(
        self, trial_values: Sequence[float], others: Sequence[Sequence[float]], objective: ObjectiveType
    ) -> str:
        """The median the trial fell behind and the step at which it was judged."""
        step = len(trial_values)
        return f"objective worse than the median {self.threshold(step, others)} at step {step}"


def _best(values: Sequence[float], objective: ObjectiveType) -> float | None:
    """The best finite value by the objective's direction, or None when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return min(finite) if objective == "minimize" else max(finite)


@dataclass(frozen=True)
class HyperbandStop:
    """Asynchronous successive halving (ASHA) over a trial's reports.

    Rungs sit at ``min_resource * eta**k`` reports (k = 0, 1, ...), below ``max_resource`` when it is given.
    When a trial's number of reports equals a rung ``r``, its best value over those ``r`` reports is ranked
    against the best value over the first ``r`` reports of every other trial that has reached ``r`` (running
    or finished). With ``n`` trials at the rung, itself included, it continues only if at most
    ``ceil(n / eta) - 1`` of the others are strictly better, i.e. it is in the top ``1/eta`` (ties favour the
    judged trial). While fewer than ``eta`` trials have reached the rung it always continues: a ranking among so
    few says too little, and the first trials of an experiment must be able to climb. Between rungs no
    decision is taken. Non-finite values are ignored (a trial or peer with no finite value up to the rung is
    left out of the comparison), but every report counts towards reaching a rung.
    """

    eta: int = _HYPERBAND_DEFAULTS["eta"]
    min_resource: int = _HYPERBAND_DEFAULTS["min_resource"]
    max_resource: int | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> HyperbandStop:
        """Build the rule from Katib settings, defaults filling the gaps; ValueError with Katib's message if bad."""
        errors = _hyperband_errors(settings)
        if errors:
            raise ValueError("; ".join(errors))
        values = {k: int(v) for k, v in settings.items()}
        return cls(eta=values.get("eta", _HYPERBAND_DEFAULTS["eta"]),
                   min_resource=values.get("min_resource", _HYPERBAND_DEFAULTS["min_resource"]),
                   max_resource=values.get("max_resource"))

    @property
    def peers(self) -> PeerSelection:
        """Every other trial with reports: asynchronous halving ranks running trials too."""
        return "all"

    def is_rung(self, reports: int) -> bool:
        """Whether a trial with ``reports`` reports has just reached a rung."""
        if reports < self.min_resource or reports % self.min_resource:
            return False
        if self.max_resource is not None and reports >= self.max_resource:
            return False
        quotient = reports // self.min_resource
        while quotient % self.eta == 0:
            quotient //= self.eta
        return quotient == 1

    def rung_values(self, rung: int, others: Sequence[Sequence[float]], objective: ObjectiveType) -> list[float]:
        """The best value over the first ``rung`` reports of every peer that has reached ``rung`` reports."""
        out = []
        for series in others:
            if len(series) >= rung and (best := _best(series[:rung], objective)) is not None:
                out.append(best)
        return out

    def _standing(
        self, trial_values: Sequence[float], others: Sequence[Sequence[float]], objective: ObjectiveType
    ) -> tuple[int, int, int] | None:
        """(rank, trials at the rung, number kept) when the trial is judged now, else None."""
        rung = len(trial_values)
        if not self.is_rung(rung):
            return None
        best = _best(trial_values, objective)
        if best is None:
            return None
        peers = self.rung_values(rung, others, objective)
        count = len(peers) + 1
        if count < self.eta:
            return None
        better = sum(1 for v in peers if (v < best if objective == "minimize" else v > best))
        return better + 1, count, math.ceil(count / self.eta)

    def should_stop(
        self, trial_values: Sequence[float], others: Sequence[Sequence[float]], objective: ObjectiveType
    ) -> bool:
        """Whether the trial, just at a rung, falls outside the top ``1/eta`` of the trials that reached it."""
        standing = self._standing(trial_values, others, objective)
        if standing is None:
            return False
        rank, _, kept = standing
        return rank > kept

    def explain(
        self, trial_values: Sequence[float], others: Sequence[Sequence[float]], objective: ObjectiveType
    ) -> str:
        """The trial's rank among the trials at its rung and how many of them continue."""
        standing = self._standing(trial_values, others, objective)
        if standing is None:
            return f"objective not judged at step {len(trial_values)}"
        rank, count, kept = standing
        return (f"objective ranked {rank} of {count} trials at rung {len(trial_values)}, "
                f"only the best {kept} continue (eta={self.eta})")


_FACTORIES: dict[str, Callable[[Mapping[str, str]], EarlyStoppingRule]] = {
    "medianstop": MedianStop.from_settings,
    "hyperband": HyperbandStop.from_settings,
}


def early_stopping_rule(name: str, settings: Mapping[str, str]) -> EarlyStoppingRule:
    """The rule an experiment's ``earlyStopping`` names; ValueError with Katib's message if unknown or bad."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown algorithm name {name}")
    return factory(settings)
