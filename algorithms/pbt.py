"""Population based training: a fixed-size population evolves generation by generation, the weakest members
taking over the hyperparameters and checkpoints of the strongest, the others perturbing their own.

The population is recomputed from the trials' labels (generation, member slot, parent) on every call; each
generation's plan depends only on the seed and the previous generation's results, so asking twice gives the
same members.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from natib.algorithms.base import effective_seed, random_state_errors, unknown_setting_errors
from natib.algorithms.sampling import (
    NumericGrid,
    iter_points,
    sample_assignment,
    sample_value,
    space_errors,
    space_size,
)
from natib.algorithms.space import (
    Assignment,
    ObjectiveType,
    Parameter,
    SearchSpace,
    SuggestResult,
    Trial,
    assignment_key,
)

#: Katib's label holding a trial's generation (0 for the random initial population).
GENERATION_LABEL = "pbt.suggestion.katib.kubeflow.org/generation"
#: Katib's label naming the trial whose checkpoint this trial starts from (absent in generation 0).
PARENT_LABEL = "pbt.suggestion.katib.kubeflow.org/parent"
#: The member's slot in the population (0..n_population-1); a failed member is re-run in the same slot.
MEMBER_LABEL = "pbt.natib/member"

REQUIRED_SETTINGS: tuple[str, ...] = ("suggestion_trial_dir", "n_population", "truncation_threshold")
OPTIONAL_SETTINGS: tuple[str, ...] = ("resample_probability", "random_state")

#: Runs of one member within one generation before it counts as the worst member instead of being re-run.
MAX_ATTEMPTS = 3

#: The perturbation factors of explore, as in Katib.
PERTURB_FACTORS = (0.8, 1.2)

#: Draws tried for a new initial member before listing what is left of a finite space.
MAX_DRAWS = 64
ENUMERATION_LIMIT = 1_000_000

# Keeps plan streams apart from other uses of the same seed.
_STREAM = 0x9B7


def checkpoint_plan(trial_name: str, labels: Mapping[str, str]) -> tuple[str, str | None]:
    """The checkpoint directory names for a trial: its own, and its parent's (to copy into its own first).

    Both are plain directory names under the experiment's checkpoint folder; ValueError for a name that could
    escape that folder.
    """
    parent = labels.get(PARENT_LABEL) or None
    for name in (trial_name, parent):
        if name is not None and (name in ("", ".", "..") or any(c in name for c in "/\\\0")):
            raise ValueError(f"invalid trial name for a checkpoint directory: {name!r}")
    return trial_name, parent


def _in_unit_interval(raw: str) -> bool:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return False
    return 0.0 <= value <= 1.0


def _step_errors(space: SearchSpace) -> list[str]:
    return [
        f"Param {p.name} step is nil; pbt samples and perturbs numeric parameters on their step grid, "
        "so every double parameter must include step"
        for p in space.parameters
        if p.type == "double" and p.step is None
    ]


@dataclass(frozen=True)
class PBTSettings:
    """Parsed PBT settings; ``resample_probability`` None means every explored value is perturbed."""

    n_population: int
    truncation_threshold: float
    resample_probability: float | None

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> PBTSettings:
        """Parse settings that passed validation."""
        raw = settings.get("resample_probability")
        return cls(
            n_population=int(settings["n_population"]),
            truncation_threshold=float(settings["truncation_threshold"]),
            resample_probability=float(raw) if raw is not None else None,
        )

    @property
    def cut(self) -> int:
        """How many members fall in each tail: the bottom ones exploit, the top ones are copied."""
        x = self.n_population * self.truncation_threshold
        return min(self.n_population, math.floor(x + 1e-9 * max(1.0, x)))


@dataclass(frozen=True)
class _Member:
    params: Assignment
    parent: str | None


class PBT:
    """Katib's ``pbt``: n_population random members, then truncation selection each generation.

    Members in the bottom ``truncation_threshold`` share copy the parameters (and checkpoint) of a random
    top-share member; the others perturb their own values by x0.8 or x1.2 on the step grid (one step at least,
    clipped to the bounds), shift categorical values by one position, or with ``resample_probability``
    redraw a value from its distribution. Failed members re-run with the same parameters. It never exhausts.
    """

    name: ClassVar[str] = "pbt"
    settings_names: ClassVar[tuple[str, ...]] = REQUIRED_SETTINGS + OPTIONAL_SETTINGS

    def validate(
        self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None
    ) -> list[str]:
        """Katib's messages for missing or out-of-range settings; every double must have a step."""
        errors = unknown_setting_errors(settings, self.settings_names, self.name) + random_state_errors(settings)
        missing = [k for k in REQUIRED_SETTINGS if k not in settings]
        if missing:
            errors.append(f"Required params missing: {', '.join(missing)}")
        if "suggestion_trial_dir" in settings and not settings["suggestion_trial_dir"].strip():
            errors.append("Param(suggestion_trial_dir) should be a non-empty path")
        if "n_population" in settings:
            raw = settings["n_population"]
            try:
                if int(raw) < 5:
                    errors.append("Param(n_population) should be >= 5")
            except (TypeError, ValueError) as exc:
                errors.append(f"failed to validate n_population({raw}): {exc}")
        if "truncation_threshold" in settings and not _in_unit_interval(settings["truncation_threshold"]):
            errors.append("Param(truncation_threshold) should be between 0 and 1, inclusive")
        if "resample_probability" in settings and not _in_unit_interval(settings["resample_probability"]):
            errors.append(
                "Param(resample_probability) should be null to perturb at 0.8 or 1.2, or be between 0 and 1, "
                "inclusive, to resample"
            )
        shape = space_errors(space)
        return errors + (shape or _step_errors(space))

    def suggest(
        self,
        space: SearchSpace,
        history: Sequence[Trial],
        n: int,
        settings: Mapping[str, str],
        seed: int,
        objective: ObjectiveType,
    ) -> SuggestResult:
        """Re-runs of failed members, then the members of the current generation not yet created, up to ``n``."""
        errors = self.validate(space, settings, None)
        if errors:
            raise ValueError(errors[0])
        cfg = PBTSettings.from_settings(settings)
        seed = effective_seed(settings, seed)
        sign = 1.0 if objective == "maximize" else -1.0

        runs: dict[tuple[int, int], list[Trial]] = {}
        for trial in history:
            g, k = _label_int(trial, GENERATION_LABEL), _label_int(trial, MEMBER_LABEL)
            if g is not None and k is not None and g >= 0 and 0 <= k < cfg.n_population:
                runs.setdefault((g, k), []).append(trial)
        generation = max((g for g, _ in runs), default=0)

        requeue: list[tuple[int, Trial]] = []
        missing: list[int] = []
        waiting = False
        for k in range(cfg.n_population):
            slot = runs.get((generation, k), [])
            if not slot:
                missing.append(k)
            elif slot[-1].is_active:
                waiting = True
            elif not slot[-1].has_result and len(slot) < MAX_ATTEMPTS:
                requeue.append((k, slot[-1]))
        if not (missing or requeue or waiting):
            generation += 1
            missing = list(range(cfg.n_population))

        plan = self._plan(space, cfg, runs, generation, seed, sign) if missing else []
        out: list[Assignment] = []
        labels: list[dict[str, str]] = []

        def emit(k: int, params: Mapping[str, str], parent: str | None) -> None:
            out.append({p.name: str(params.get(p.name, "")) for p in space.parameters})
            label = {GENERATION_LABEL: str(generation), MEMBER_LABEL: str(k)}
            if parent:
                label[PARENT_LABEL] = parent
            labels.append(label)

        for k, failed in requeue:
            if len(out) < n:
                emit(k, failed.assignment, failed.labels.get(PARENT_LABEL))
        for k in missing:
            if len(out) < n:
                emit(k, plan[k].params, plan[k].parent)
        return SuggestResult(assignments=out, exhausted=False, labels=labels)

    def _plan(
        self,
        space: SearchSpace,
        cfg: PBTSettings,
        runs: Mapping[tuple[int, int], Sequence[Trial]],
        generation: int,
        seed: int,
        sign: float,
    ) -> list[_Member]:
        """Every member of ``generation``, from the seed alone for generation 0, else from the one before."""
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _STREAM, generation])
        if generation == 0:
            return [_Member(params, None) for params in _initial_population(space, cfg.n_population, rng)]

        previous: list[Trial | None] = []
        scores: list[float] = []
        for k in range(cfg.n_population):
            slot = runs.get((generation - 1, k), [])
            last = slot[-1] if slot else None
            previous.append(last)
            if last is not None and last.has_result and last.objective is not None:
                scores.append(sign * last.objective)
            else:
                scores.append(-math.inf)

        ranked = sorted(range(cfg.n_population), key=lambda k: (-scores[k], k))
        cut = cfg.cut
        bottom = set(ranked[cfg.n_population - cut :]) if cut else set()
        donors = [k for k in ranked[:cut] if math.isfinite(scores[k])]

        members: list[_Member] = []
        unused: list[int] = []
        for k in range(cfg.n_population):
            choices = [d for d in donors if d != k]
            if k in bottom and choices:
                # Donors are drawn without replacement while any remain, so exploiters spread over the top.
                if not any(d != k for d in unused):
                    unused = list(donors)
                pool = [d for d in unused if d != k]
                donor = pool[int(rng.integers(len(pool)))]
                unused.remove(donor)
                source = previous[donor]
                assert source is not None
                members.append(_Member(dict(source.assignment), source.name))
                continue
            own = previous[k]
            if own is None or not math.isfinite(scores[k]):
                # Nothing to continue from: start afresh rather than from a checkpoint that may not exist.
                members.append(_Member(sample_assignment(space, rng), None))
                continue
            members.append(_Member(_explore(space, own.assignment, cfg.resample_probability, rng), own.name))
        return members


def _label_int(trial: Trial, label: str) -> int | None:
    raw = trial.labels.get(label)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _initial_population(space: SearchSpace, count: int, rng: np.random.Generator) -> list[Assignment]:
    """``count`` random members, all different while the space has room."""
    out: list[Assignment] = []
    seen: set[tuple[str, ...]] = set()
    size = space_size(space)
    for _ in range(count):
        drawn = sample_assignment(space, rng)
        for _ in range(MAX_DRAWS):
            if assignment_key(space, drawn) not in seen:
                break
            drawn = sample_assignment(space, rng)
        else:
            if size is not None and size <= ENUMERATION_LIMIT:
                free = [pt for pt in iter_points(space) if pt not in seen]
                if free:
                    drawn = dict(zip(space.names(), free[int(rng.integers(len(free)))], strict=True))
        seen.add(assignment_key(space, drawn))
        out.append(drawn)
    return out


def _explore(
    space: SearchSpace, base: Mapping[str, str], resample_probability: float | None, rng: np.random.Generator
) -> Assignment:
    """A perturbed copy of ``base``: each value resampled with ``resample_probability``, else perturbed."""
    out: Assignment = {}
    for p in space.parameters:
        if resample_probability is not None and rng.random() < resample_probability:
            out[p.name] = sample_value(p, rng)
        else:
            out[p.name] = perturb(p, str(base.get(p.name, "")), rng)
    return out


def perturb(param: Parameter, raw: str, rng: np.random.Generator) -> str:
    """One explore step of a value: x0.8 or x1.2 snapped to the step grid, moving at least one step unless
    clipped at a bound; list values move to a neighbour (categorical lists wrap around, discrete ones do not).

    A value that is not a valid point of the parameter is redrawn instead.
    """
    if param.is_numeric_range:
        try:
            value = float(raw)
        except ValueError:
            return sample_value(param, rng)
        if not math.isfinite(value):
            return sample_value(param, rng)
        grid = NumericGrid(param)
        factor = PERTURB_FACTORS[int(rng.integers(len(PERTURB_FACTORS)))]
        target = value * factor
        k0 = grid.nearest_index(value)
        k1 = grid.nearest_index(target)
        if k1 == k0:
            # Snapping would undo a small move (or the value is 0, which scaling cannot change): step instead.
            direction = (1 if factor > 1 else -1) if target == value else (1 if target > value else -1)
            k1 = min(max(k0 + direction, 0), grid.count - 1)
        return param.format(grid.value(k1))
    values = list(dict.fromkeys(param.values))
    if raw not in values:
        return sample_value(param, rng)
    if len(values) == 1:
        return values[0]
    shift = 1 if rng.random() < 0.5 else -1
    i = values.index(raw) + shift
    if param.type == "categorical":
        return values[i % len(values)]
    if not 0 <= i < len(values):
        i = values.index(raw) - shift
    return values[i]
