"""Sobol search: a scrambled Sobol low-discrepancy sequence, continued across requests and restarts."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from scipy.stats import qmc

from natib.algorithms.base import (
    effective_seed,
    rng_for,
    seeded_sampler_errors,
)
from natib.algorithms.random import UsedPoints, count_on_grid
from natib.algorithms.sampling import from_unit, iter_points, space_size
from natib.algorithms.space import (
    Assignment,
    ObjectiveType,
    SearchSpace,
    SuggestResult,
    Trial,
    assignment_key,
)

#: Sequence points generated per block while looking for unused points.
BLOCK = 64

#: Sequence points examined past the requested ones before listing what is left of a finite space.
MAX_SKIPPED = 4096

#: Finite spaces up to this many points are listed when the sequence keeps landing on used points.
ENUMERATION_LIMIT = 1_000_000

#: scipy's Sobol engine holds at most 2**30 points per sequence.
MAX_INDEX = 2**30


def sobol_points(dim: int, seed: int, start: int, count: int) -> np.ndarray:
    """Points ``start`` .. ``start + count - 1`` of the scrambled Sobol sequence for ``seed``, in [0, 1)^dim."""
    engine = qmc.Sobol(d=max(dim, 1), scramble=True, seed=np.random.default_rng([int(seed) & 0xFFFFFFFF]))
    if start:
        engine.fast_forward(start)
    with warnings.catch_warnings():
        # The balance warning concerns sample sizes that are not powers of two; a sequence continued one
        # request at a time is still the same sequence, so it does not apply here.
        warnings.simplefilter("ignore", UserWarning)
        return engine.random(count)[:, :dim]


class SobolSearch:
    """Katib's ``sobol``: the k-th suggestion of an experiment is point k of one scrambled Sobol sequence.

    The sequence depends only on the seed (``random_state`` when set), and k counts every trial so far, so
    a restarted experiment carries on where it stopped. Unit coordinates go through each parameter's
    distribution and step; lists are picked by position. Points already tried are skipped.
    """

    name: ClassVar[str] = "sobol"
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
        """The next ``n`` unused sequence points; ``exhausted`` once a finite space has no unused point left."""
        seed = effective_seed(settings, seed)
        params = space.parameters
        used = UsedPoints(space, history)
        total = space_size(space)
        listable = total is not None and total <= ENUMERATION_LIMIT
        remaining = total - count_on_grid(space, used.all()) if listable and total is not None else None

        out: list[Assignment] = []
        k = len(history)
        budget_end = k + n + MAX_SKIPPED
        while len(out) < n and remaining != 0:
            if k >= min(budget_end, MAX_INDEX):
                break
            count = min(max(n - len(out), BLOCK), MAX_INDEX - k)
            block = sobol_points(len(params), seed, k, count)
            for row in block:
                k += 1
                candidate = {p.name: from_unit(p, u) for p, u in zip(params, row, strict=True)}
                key = assignment_key(space, candidate)
                if key in used:
                    continue
                used.add(key)
                out.append(candidate)
                if remaining is not None:
                    remaining -= 1
                if len(out) >= n or remaining == 0:
                    break

        if len(out) < n and remaining != 0:
            # The sequence keeps landing on used points: a nearly used-up finite space, or a continuous
            # one with min == max. Listing the rest beats stalling; a repeat is the last resort.
            rng = rng_for(seed, history)
            if listable:
                taken = used.all()
                free = [pt for pt in iter_points(space) if pt not in taken]
                take = rng.permutation(len(free))[: n - len(out)]
                out.extend(dict(zip(space.names(), free[int(i)], strict=True)) for i in take)
                remaining = len(free) - len(take)
            else:
                while len(out) < n:
                    out.append({p.name: from_unit(p, float(rng.random())) for p in params})
        return SuggestResult(assignments=out, exhausted=remaining == 0)
