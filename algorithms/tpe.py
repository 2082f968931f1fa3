"""Tree-structured Parzen Estimators: ``tpe`` (one density per parameter) and ``multivariate-tpe`` (joint).

Both split the finished trials into a good group (the best ones) and a bad group, fit a Parzen density to
each, draw candidates from the good density l(x) and keep the one with the largest l(x)/g(x). Numeric
parameters are modelled in their transformed space (log for log distributions) with normal kernels
truncated to the bounds; steps and ints are scored by the probability of their grid cell; lists use
smoothed counts. Pending and running trials, and the points already chosen in the same batch, join the
bad group (a constant liar), so parallel trials spread out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from scipy.special import ndtr, ndtri

from natib.algorithms.base import rng_for, unknown_setting_errors
from natib.algorithms.random import RandomSearch
from natib.algorithms.sampling import (
    NumericGrid,
    finite_size,
    finite_values,
    from_unit,
    is_finite,
    iter_points,
    sample_assignment,
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
)

#: Numeric parameters with at most this many grid points are scored per grid cell; larger grids are
#: treated as continuous and snapped to the nearest point.
MAX_CELLS = 512

#: Random draws tried for a new point once every candidate is already used.
MAX_DRAWS = 64

#: Finite spaces up to this many points are listed when nothing else finds an unused point.
ENUMERATION_LIMIT = 1_000_000

#: Observations up to this many from the end of a group keep full weight; older ones fade linearly,
#: so the model follows a search that has moved on.
FULL_WEIGHT_RECENT = 25

#: Narrowest kernel, as a fraction of the parameter's range, so a cluster of equal values stays a density.
MIN_BANDWIDTH_FRACTION = 0.01

#: Joint kernel width as a fraction of the range, before the n^(-1/(d+4)) shrinkage of Scott's rule.
JOINT_BANDWIDTH = 0.2

_LOG_DISTRIBUTIONS = ("logUniform", "logNormal")
_TINY = 1e-300
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# --- settings ------------------------------------------------------------------------------------------------


def _parse(settings: Mapping[str, str], name: str, kind: type, errors: list[str]) -> float | int | None:
    """The setting converted with ``kind``, None if absent; a conversion failure is appended to ``errors``."""
    if name not in settings:
        return None
    raw = settings[name]
    try:
        return kind(raw)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        errors.append(f"failed to validate {name}({raw}): {exc}")
        return None


@dataclass(frozen=True)
class TPEConfig:
    """Parsed settings of either TPE variant."""

    gamma: float = 0.1
    prior_weight: float = 1.0
    n_ei_candidates: int = 24
    n_startup_trials: int = 10
    random_state: int | None = None


def parse_tpe_settings(settings: Mapping[str, str]) -> tuple[TPEConfig, list[str]]:
    """Settings of ``tpe`` (Katib's hyperopt names and messages) and the errors found in them."""
    errors: list[str] = []
    gamma = _parse(settings, "gamma", float, errors)
    if gamma is not None and not 0 < gamma < 1:
        errors.append("gamma should be in the range of (0, 1)")
    prior_weight = _parse(settings, "prior_weight", float, errors)
    if prior_weight is not None and not prior_weight > 0:
        errors.append("prior_weight should be great than zero")
    candidates = _parse(settings, "n_EI_candidates", int, errors)
    if candidates is not None and candidates <= 0:
        errors.append("n_EI_candidates should be great than zero")
    random_state = _parse(settings, "random_state", int, errors)
    if random_state is not None and random_state < 0:
        errors.append("random_state should be great or equal than zero")
    startup = _parse(settings, "n_startup_trials", int, errors)
    if startup is not None and startup < 0:
        errors.append("n_startup_trials should be great or equal than zero")
    default = TPEConfig()
    config = TPEConfig(
        gamma=default.gamma if gamma is None else float(gamma),
        prior_weight=default.prior_weight if prior_weight is None else float(prior_weight),
        n_ei_candidates=default.n_ei_candidates if candidates is None else int(candidates),
        n_startup_trials=default.n_startup_trials if startup is None else int(startup),
        random_state=None if random_state is None else int(random_state),
    )
    return config, errors


def parse_multivariate_settings(settings: Mapping[str, str]) -> tuple[TPEConfig, list[str]]:
    """Settings of ``multivariate-tpe`` (Katib's Optuna names and messages) and the errors found in them."""
    errors: list[str] = []
    values: dict[str, int] = {}
    for name in ("n_startup_trials", "n_ei_candidates", "random_state"):
        value = _parse(settings, name, int, errors)
        if value is None:
            continue
        if value < 0:
            errors.append(f"{name} should be greate or equal than zero")
            continue
        values[name] = int(value)
    default = TPEConfig()
    config = TPEConfig(
        gamma=default.gamma,
        prior_weight=default.prior_weight,
        # Zero candidates would leave nothing to choose from; one candidate is plain sampling from l(x).
        n_ei_candidates=max(1, values.get("n_ei_candidates", default.n_ei_candidates)),
        n_startup_trials=values.get("n_startup_trials", default.n_startup_trials),
        random_state=values.get("random_state"),
    )
    return config, errors


# --- the model's view of a parameter ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dim:
    """How one varying parameter is modelled: its kind, transformed bounds, prior and grid cells."""

    param: Parameter
    kind: Literal["cont", "cells", "cat"]
    log: bool = False
    lo: float = 0.0  # transformed bounds the kernels are truncated to (cells: the outer cell edges)
    hi: float = 1.0
    prior_normal: bool = False
    prior_mu: float = 0.0
    prior_sigma: float = 1.0
    edges: np.ndarray | None = None  # cells: count + 1 transformed edges
    labels: tuple[str, ...] = ()  # cells and cat: the formatted value of each index
    grid: NumericGrid | None = None  # cont on a large grid: snaps the continuous value
    cell_origin: float = 0.0  # cells: the first grid point and the spacing, to find the nearest point
    cell_step: float = 1.0

    @property
    def width(self) -> float:
        """The transformed range the kernels live on."""
        return self.hi - self.lo

    def encode(self, raws: Sequence[str], values: np.ndarray | None, lookup: Mapping[str, int]) -> np.ndarray:
        """History values in model coordinates (NaN where one cannot be read or is not in the list).

        ``values`` holds ``raws`` already parsed as floats (NaN where unreadable) for numeric parameters.
        """
        if self.kind == "cat":
            return np.array([lookup.get(r, math.nan) for r in raws], dtype=float)
        assert values is not None
        v = np.where(np.isfinite(values), values, np.nan)
        if self.kind == "cells":
            k = np.rint((v - self.cell_origin) / self.cell_step)
            return np.clip(k, 0, len(self.labels) - 1)
        if self.log:
            with np.errstate(invalid="ignore", divide="ignore"):
                v = np.log(np.where(v > 0, v, np.nan))
        return np.clip(v, self.lo, self.hi)

    def decode(self, x: float) -> str:
        """The formatted parameter value of a model coordinate."""
        if self.kind != "cont":
            return self.labels[int(x)]
        p = self.param
        assert p.min is not None and p.max is not None
        value = min(max(math.exp(x) if self.log else x, p.min), p.max)
        if self.grid is not None:
            return p.format(self.grid.value(self.grid.nearest_index(value)))
        return p.format(value)


@dataclass(frozen=True)
class _Layout:
    """The modelled parameters of a space and the values of those that cannot vary."""

    dims: tuple[_Dim, ...]
    fixed: dict[str, str]
    lookups: tuple[dict[str, int], ...]


def _transform(value: float, log: bool) -> float:
    return math.log(value) if log else value


def _make_dim(p: Parameter) -> _Dim | None:
    """The model of ``p``, or None when it has a single possible value."""
    if not p.is_numeric_range:
        labels = tuple(dict.fromkeys(p.values))
        return _Dim(p, "cat", labels=labels) if len(labels) > 1 else None
    assert p.min is not None and p.max is not None
    log = p.distribution in _LOG_DISTRIBUTIONS
    tmin, tmax = _transform(p.min, log), _transform(p.max, log)
    normal = p.distribution in ("normal", "logNormal")
    prior = {"prior_normal": normal, "prior_mu": (tmin + tmax) / 2, "prior_sigma": (tmax - tmin) / 6}
    size = finite_size(p)
    if size is None:
        if p.min == p.max:
            return None
        return _Dim(p, "cont", log=log, lo=tmin, hi=tmax, **prior)  # type: ignore[arg-type]
    if size <= 1:
        return None
    grid = NumericGrid(p)
    if size > MAX_CELLS:
        return _Dim(p, "cont", log=log, lo=tmin, hi=tmax, grid=grid, **prior)  # type: ignore[arg-type]
    points = np.array([_transform(float(grid.value(k)), log) for k in range(grid.count)])
    mids = (points[1:] + points[:-1]) / 2
    # The outer cells are as wide as their neighbours' half gaps, so the end points are not half as likely.
    first = points[0] - (points[1] - points[0]) / 2
    last = points[-1] + (points[-1] - points[-2]) / 2
    edges = np.concatenate(([first], mids, [last]))
    labels = tuple(p.format(grid.value(k)) for k in range(grid.count))
    origin = float(grid.value(0))
    spacing = float(grid.value(1)) - origin if p.type == "int" else float(p.step or 1.0)
    return _Dim(
        p,
        "cells",
        log=log,
        lo=float(first),
        hi=float(last),
        edges=edges,
        labels=labels,
        grid=grid,
        cell_origin=origin,
        cell_step=spacing,
        **prior,  # type: ignore[arg-type]
    )


@functools.lru_cache(maxsize=64)
def _layout(space: SearchSpace) -> _Layout:
    """The model layout of ``space``; cached because building grids is the costly part and spaces repeat."""
    dims: list[_Dim] = []
    fixed: dict[str, str] = {}
    for p in space.parameters:
        dim = _make_dim(p)
        if dim is None:
            fixed[p.name] = from_unit(p, 0.5)
        else:
            dims.append(dim)
    lookups = tuple({v: i for i, v in enumerate(d.labels)} if d.kind == "cat" else {} for d in dims)
    return _Layout(tuple(dims), fixed, lookups)


# --- truncated normal kernels ------------------------------------------------------------------------------------


def _mass_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Standard normal probability of [a, b], accurate in both tails."""
    upper = a > 0
    return np.where(upper, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))


def _kernel_logpdf(dim: _Dim, x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """log density (cells: log probability of the cell) of each candidate under each truncated normal.

    ``x`` has shape (C,), ``mu`` and ``sigma`` shape (M,) or broadcastable; the result is (C, M).
    """
    log_z = np.log(np.maximum(_mass_between((dim.lo - mu) / sigma, (dim.hi - mu) / sigma), _TINY))
    if dim.kind == "cells":
        assert dim.edges is not None
        k = x.astype(np.intp)
        a = (dim.edges[k][:, None] - mu) / sigma
        b = (dim.edges[k + 1][:, None] - mu) / sigma
        return np.log(np.maximum(_mass_between(a, b), _TINY)) - log_z
    z = (x[:, None] - mu) / sigma
    return -0.5 * z * z - np.log(sigma) - _HALF_LOG_2PI - log_z


def _prior_logpdf(dim: _Dim, x: np.ndarray) -> np.ndarray:
    """log density (cells: log probability) of each candidate under the parameter's own distribution."""
    if dim.prior_normal:
        mu = np.array([dim.prior_mu])
        sigma = np.array([max(dim.prior_sigma, _TINY)])
        return _kernel_logpdf(dim, x, mu, sigma)[:, 0]
    if dim.kind == "cells":
        assert dim.edges is not None
        k = x.astype(np.intp)
        return np.log((dim.edges[k + 1] - dim.edges[k]) / dim.width)
    return np.full(x.shape, -math.log(dim.width))


def _sample_truncated(
    dim: _Dim, mu: np.ndarray, sigma: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One draw from each truncated normal (mu[i], sigma[i]) on the dimension's bounds, as model coordinates."""
    lo_p = ndtr((dim.lo - mu) / sigma)
    hi_p = ndtr((dim.hi - mu) / sigma)
    u = lo_p + rng.random(mu.shape) * (hi_p - lo_p)
    with np.errstate(divide="ignore", over="ignore"):
        t = np.clip(mu + sigma * ndtri(u), dim.lo, dim.hi)
    return _snap(dim, np.nan_to_num(t, nan=(dim.lo + dim.hi) / 2))


def _sample_prior(dim: _Dim, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draws from the parameter's own distribution, as model coordinates."""
    if dim.kind == "cat":
        return rng.integers(len(dim.labels), size=size).astype(float)
    if dim.prior_normal:
        return _sample_truncated(
            dim, np.full(size, dim.prior_mu), np.full(size, max(dim.prior_sigma, _TINY)), rng
        )
    return _snap(dim, dim.lo + rng.random(size) * dim.width)


def _snap(dim: _Dim, t: np.ndarray) -> np.ndarray:
    """Continuous transformed values to model coordinates (cells: the index of the cell holding each)."""
    if dim.kind != "cells":
        return t
    assert dim.edges is not None
    k = np.searchsorted(dim.edges, t, side="right") - 1
    return np.clip(k, 0, len(dim.labels) - 1).astype(float)


def _centres(dim: _Dim, x: np.ndarray) -> np.ndarray:
    """Observations as kernel centres in the transformed space (cells: the centre of their cell)."""
    if dim.kind != "cells":
        return x
    assert dim.edges is not None
    k = x.astype(np.intp)
    return (dim.edges[k] + dim.edges[k + 1]) / 2


def _recency_weights(count: int) -> np.ndarray:
    """Weights for a group in history order: full for the latest observations, fading for old ones."""
    if count <= FULL_WEIGHT_RECENT:
        return np.ones(count)
    ramp = np.linspace(1.0 / count, 1.0, count - FULL_WEIGHT_RECENT)
    return np.concatenate((ramp, np.ones(FULL_WEIGHT_RECENT)))


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.squeeze(peak, axis=axis) + np.log(np.sum(np.exp(a - peak), axis=axis))


# --- univariate Parzen estimator -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parzen1D:
    """A mixture over one parameter: kernels at the observations plus the prior, with log weights."""

    dim: _Dim
    mu: np.ndarray
    sigma: np.ndarray
    log_w: np.ndarray  # one per kernel, then the prior's last
    cat_logp: np.ndarray | None = None  # lists: log probability of each value

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` draws from the mixture, as model coordinates."""
        if self.cat_logp is not None:
            return rng.choice(len(self.cat_logp), size=size, p=np.exp(self.cat_logp)).astype(float)
        w = np.exp(self.log_w - self.log_w.max())
        pick = rng.choice(len(w), size=size, p=w / w.sum())
        out = _sample_prior(self.dim, size, rng)
        from_kernel = pick < len(self.mu)
        if np.any(from_kernel):
            chosen = pick[from_kernel]
            out[from_kernel] = _sample_truncated(self.dim, self.mu[chosen], self.sigma[chosen], rng)
        return out

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        """log density (or probability) of each candidate."""
        if self.cat_logp is not None:
            return self.cat_logp[x.astype(np.intp)]
        parts = np.empty((len(x), len(self.mu) + 1))
        if len(self.mu):
            parts[:, :-1] = _kernel_logpdf(self.dim, x, self.mu, self.sigma)
        parts[:, -1] = _prior_logpdf(self.dim, x)
        return _logsumexp(parts + self.log_w, axis=1)


def _fit_1d(dim: _Dim, x: np.ndarray, weights: np.ndarray, prior_weight: float) -> _Parzen1D:
    """Fit the univariate estimator to observations ``x`` (model coordinates) with their weights."""
    total = weights.sum() + prior_weight
    if dim.kind == "cat":
        counts = np.bincount(x.astype(np.intp), weights=weights, minlength=len(dim.labels))
        probs = (counts + prior_weight / len(dim.labels)) / total
        return _Parzen1D(dim, np.empty(0), np.empty(0), np.empty(0), cat_logp=np.log(probs))
    mu = _centres(dim, x)
    # Each kernel reaches to the farther of its neighbours (the bounds at the ends): dense regions get
    # narrow kernels, isolated points wide ones.
    order = np.argsort(mu, kind="stable")
    s = mu[order]
    padded = np.concatenate(([dim.lo], s, [dim.hi]))
    gaps = np.maximum(padded[1:-1] - padded[:-2], padded[2:] - padded[1:-1])
    floor = dim.width / min(1.0 / MIN_BANDWIDTH_FRACTION, 1.0 + len(mu))
    sigma = np.empty_like(mu)
    sigma[order] = np.clip(gaps, floor, dim.width)
    log_w = np.log(np.concatenate((weights, [prior_weight])) / total)
    return _Parzen1D(dim, mu, sigma, log_w)


# --- joint Parzen estimator ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ParzenJoint:
    """A mixture of product kernels, one per observation, plus the product of the priors."""

    dims: tuple[_Dim, ...]
    centres: np.ndarray  # (M, d): numeric columns as kernel centres, list columns as value indices
    sigma: np.ndarray  # (d,): kernel width per numeric column (unused for lists)
    keep: np.ndarray  # (d,): for lists, the probability a kernel keeps its own value before smoothing
    log_w: np.ndarray  # (M + 1,): the prior's last

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` draws from the mixture, shape (size, d)."""
        m = len(self.centres)
        w = np.exp(self.log_w - self.log_w.max())
        pick = rng.choice(m + 1, size=size, p=w / w.sum())
        from_kernel = pick < m
        chosen = pick[from_kernel]
        out = np.empty((size, len(self.dims)))
        for j, dim in enumerate(self.dims):
            col = _sample_prior(dim, size, rng)
            if len(chosen):
                if dim.kind == "cat":
                    own = rng.random(len(chosen)) < self.keep[j]
                    own_values = self.centres[chosen, j]
                    col_k = col[from_kernel]
                    col_k[own] = own_values[own]
                    col[from_kernel] = col_k
                else:
                    mu = self.centres[chosen, j]
                    col[from_kernel] = _sample_truncated(dim, mu, np.full(len(mu), self.sigma[j]), rng)
            out[:, j] = col
        return out

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        """log density of each candidate row of ``x`` (C, d)."""
        m = len(self.centres)
        kernel = np.zeros((len(x), m))
        prior = np.zeros(len(x))
        for j, dim in enumerate(self.dims):
            xj = x[:, j]
            if dim.kind == "cat":
                k = len(dim.labels)
                smooth = (1.0 - self.keep[j]) / k
                same = xj[:, None] == self.centres[None, :, j]
                kernel += np.log(np.where(same, self.keep[j] + smooth, smooth))
                prior -= math.log(k)
            else:
                if m:
                    kernel += _kernel_logpdf(dim, xj, self.centres[:, j], np.full(m, self.sigma[j]))
                prior += _prior_logpdf(dim, xj)
        parts = np.concatenate((kernel, prior[:, None]), axis=1)
        return _logsumexp(parts + self.log_w, axis=1)


def _fit_joint(dims: tuple[_Dim, ...], x: np.ndarray, weights: np.ndarray, prior_weight: float) -> _ParzenJoint:
    """Fit the joint estimator: Scott-style widths shrinking with the group size and the dimension."""
    m, d = x.shape
    shrink = (m + 1) ** (-1.0 / (d + 4))
    centres = x.copy()
    sigma = np.ones(d)
    keep = np.zeros(d)
    for j, dim in enumerate(dims):
        if dim.kind == "cat":
            # A list kernel spreads the prior's weight, shared among the group's kernels, over every
            # value and adds one unit on its own value: it keeps its value more surely as the group grows.
            # (Smoothing lists as much as the numeric widths lost too many good categorical combinations.)
            keep[j] = 1.0 / (1.0 + len(dim.labels) * prior_weight / (m + 1))
        else:
            centres[:, j] = _centres(dim, x[:, j])
            sigma[j] = max(JOINT_BANDWIDTH * dim.width * shrink, MIN_BANDWIDTH_FRACTION * dim.width)
    total = weights.sum() + prior_weight
    log_w = np.log(np.concatenate((weights, [prior_weight])) / total)
    return _ParzenJoint(dims, centres, sigma, keep, log_w)


# --- the shared search loop -----------------------------------------------------------------------------------


#: The good group never holds more than this many results, so l(x) stays sharp in long experiments.
MAX_GOOD = 25


def _n_good(count: int, gamma: float) -> int:
    """Size of the good group: ceil(gamma * n) of n results, at least 1 and at most ``MAX_GOOD``.

    With the default gamma of 0.1 this is Optuna's split. Against hyperopt's ceil(gamma * sqrt(n)) and a
    fraction of 0.25 it found the narrow optimum of a plateau-heavy objective (logreg_wine in
    ``bench/problems.py``) far more often, and no worse elsewhere, in ``bench/quality.py``.
    """
    return min(count, max(1, min(MAX_GOOD, math.ceil(gamma * count))))


class _TPEBase:
    """The parts both variants share: settings, history encoding, the constant liar and deduplication."""

    name: ClassVar[str]
    settings_names: ClassVar[tuple[str, ...]]
    multivariate: ClassVar[bool]

    def _parse(self, settings: Mapping[str, str]) -> tuple[TPEConfig, list[str]]:
        raise NotImplementedError

    def validate(
        self, space: SearchSpace, settings: Mapping[str, str], max_trial_count: int | None
    ) -> list[str]:
        """Check settings with Katib's messages and that every parameter can be sampled."""
        return (
            unknown_setting_errors(settings, self.settings_names, self.name)
            + self._parse(settings)[1]
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
        """Up to ``n`` new points: random until ``n_startup_trials`` results exist, then TPE proposals."""
        config, errors = self._parse(settings)
        if errors:
            raise ValueError(errors[0])
        if config.random_state is not None:
            seed = config.random_state
        results = sum(1 for t in history if t.has_result)
        layout = _layout(space)
        if n <= 0 or results < max(1, config.n_startup_trials) or not layout.dims:
            return RandomSearch().suggest(space, history, n, {}, seed, objective)
        return self._propose(space, layout, history, n, config, seed, objective)

    def _propose(
        self,
        space: SearchSpace,
        layout: _Layout,
        history: Sequence[Trial],
        n: int,
        config: TPEConfig,
        seed: int,
        objective: ObjectiveType,
    ) -> SuggestResult:
        rng = rng_for(seed, history)
        dims = layout.dims
        sign = 1.0 if objective == "minimize" else -1.0
        raws, values = _columns(space, history)
        index = {name: i for i, name in enumerate(space.names())}
        coords = np.empty((len(history), len(dims)))
        for j, (d, lookup) in enumerate(zip(dims, layout.lookups, strict=True)):
            i = index[d.param.name]
            coords[:, j] = d.encode(raws[i], values[i], lookup)
        readable = ~np.isnan(coords).any(axis=1)
        has_result = np.array([t.has_result for t in history], dtype=bool)
        active = np.array([t.is_active for t in history], dtype=bool)
        losses = np.array([sign * t.objective if t.has_result and t.objective is not None else 0.0 for t in history])

        finished = np.flatnonzero(has_result & readable)
        order = finished[np.argsort(losses[finished], kind="stable")]
        n_good = _n_good(len(finished), config.gamma) if len(finished) else 0
        # Both groups stay in history order, which the recency weights rely on.
        good = coords[np.sort(order[:n_good])]
        bad_done = coords[np.sort(order[n_good:])]
        pending = coords[np.flatnonzero(active & readable)]

        key_columns = [_key_column(p, r, v) for p, r, v in zip(space.parameters, raws, values, strict=True)]
        used = set(zip(*key_columns, strict=True))
        total = space_size(space)
        listable = total is not None and total <= ENUMERATION_LIMIT
        remaining = total - _count_on_grid(space, used) if listable and total is not None else None

        good_model = self._fit(dims, good, config.prior_weight)
        out: list[Assignment] = []
        chosen: list[np.ndarray] = []
        while len(out) < n and remaining != 0:
            bad = np.concatenate([bad_done, pending, *(c[None, :] for c in chosen)])
            bad_model = self._fit(dims, bad, config.prior_weight)
            best = self._best_unused(space, layout, good_model, bad_model, config, rng, used)
            at: np.ndarray | None
            if best is None:
                drawn = _fallback(space, rng, used, listable)
                if drawn is None:
                    remaining = 0
                    break
                at, point = _encode_assignment(layout, drawn), drawn
            else:
                at, point = best
            key = _point_key(space, point)
            if remaining is not None and key not in used:
                remaining -= 1
            used.add(key)
            out.append(point)
            if at is not None:
                chosen.append(at)
        return SuggestResult(assignments=out, exhausted=remaining == 0)

    def _fit(
        self, dims: tuple[_Dim, ...], x: np.ndarray, prior_weight: float
    ) -> _ParzenJoint | list[_Parzen1D]:
        weights = _recency_weights(len(x))
        if self.multivariate:
            return _fit_joint(dims, x, weights, prior_weight)
        return [_fit_1d(d, x[:, j], weights, prior_weight) for j, d in enumerate(dims)]

    def _best_unused(
        self,
        space: SearchSpace,
        layout: _Layout,
        good_model: object,
        bad_model: object,
        config: TPEConfig,
        rng: np.random.Generator,
        used: set[tuple[str | float, ...]],
    ) -> tuple[np.ndarray, Assignment] | None:
        """The candidate with the best l/g that is not in ``used``, with its coordinates; None if all are."""
        c = config.n_ei_candidates
        if isinstance(good_model, _ParzenJoint):
            assert isinstance(bad_model, _ParzenJoint)
            cand = good_model.sample(c, rng)
            score = good_model.logpdf(cand) - bad_model.logpdf(cand)
            ranked = [cand[i] for i in np.argsort(-score, kind="stable")]
        else:
            assert isinstance(good_model, list) and isinstance(bad_model, list)
            cols = []
            scores = []
            for gm, bm in zip(good_model, bad_model, strict=True):
                col = gm.sample(c, rng)
                cols.append(col)
                scores.append(gm.logpdf(col) - bm.logpdf(col))
            cand = np.stack(cols, axis=1)
            per_dim = np.stack(scores, axis=1)
            # Each parameter takes its own best candidate; should that combination be used already,
            # whole candidate rows follow, best summed score first.
            best = cand[np.argmax(per_dim, axis=0), np.arange(cand.shape[1])]
            ranked = [best] + [cand[i] for i in np.argsort(-per_dim.sum(axis=1), kind="stable")]
        for coords in ranked:
            point = _decode(layout, space, coords)
            if _point_key(space, point) not in used:
                return coords, point
        return None


def _decode(layout: _Layout, space: SearchSpace, coords: np.ndarray) -> Assignment:
    values = {d.param.name: d.decode(float(x)) for d, x in zip(layout.dims, coords, strict=True)}
    values.update(layout.fixed)
    return {name: values[name] for name in space.names()}


def _encode_assignment(layout: _Layout, point: Assignment) -> np.ndarray | None:
    row = np.empty(len(layout.dims))
    for j, (d, lookup) in enumerate(zip(layout.dims, layout.lookups, strict=True)):
        raw = [point.get(d.param.name, "")]
        row[j] = d.encode(raw, _floats(raw) if d.kind != "cat" else None, lookup)[0]
    return None if np.any(np.isnan(row)) else row


def _floats(raws: Sequence[str]) -> np.ndarray:
    """Strings parsed as floats, NaN where one is not a number."""
    try:
        return np.array(raws, dtype=float).reshape(len(raws))
    except ValueError:
        out = np.empty(len(raws))
        for i, r in enumerate(raws):
            try:
                out[i] = float(r)
            except ValueError:
                out[i] = math.nan
        return out


def _columns(space: SearchSpace, history: Sequence[Trial]) -> tuple[list[list[str]], list[np.ndarray | None]]:
    """Every trial's value of each parameter, as text and (numeric parameters) parsed."""
    raws = [[t.assignment.get(p.name, "") for t in history] for p in space.parameters]
    values = [_floats(r) if p.is_numeric_range else None for p, r in zip(space.parameters, raws, strict=True)]
    return raws, values


def _key_value(param: Parameter, raw: str) -> str | float:
    """One component of ``_point_key``."""
    if not param.is_numeric_range:
        return raw
    try:
        value = float(raw)
        if not is_finite(param):
            # Doubles format by repr, which tells two floats apart exactly when they differ; skipping
            # the formatting keeps long histories cheap. Adding 0.0 merges -0.0 with 0.0, as formatting does.
            return value + 0.0 if not math.isnan(value) else raw
        return param.format(value)
    except (ValueError, OverflowError):
        return raw


def _key_column(param: Parameter, raws: list[str], values: np.ndarray | None) -> list[str | float]:
    """``_key_value`` of every entry of a column, using the floats already parsed where it can."""
    if values is None or is_finite(param):
        return [_key_value(param, r) for r in raws]
    return [v + 0.0 if v == v else r for v, r in zip(values.tolist(), raws, strict=True)]


def _point_key(space: SearchSpace, point: Mapping[str, str]) -> tuple[str | float, ...]:
    """A hashable key equal for two assignments exactly when ``assignment_key`` is; finite spaces get the
    very same key, so it compares with their listed points."""
    return tuple(_key_value(p, point.get(p.name, "")) for p in space.parameters)


def _fallback(
    space: SearchSpace, rng: np.random.Generator, used: set[tuple[str | float, ...]], listable: bool
) -> Assignment | None:
    """A random unused point when every candidate is used; None when a finite space has none left."""
    drawn: Assignment = {}
    for _ in range(MAX_DRAWS):
        drawn = sample_assignment(space, rng)
        if _point_key(space, drawn) not in used:
            return drawn
    if not listable:
        # A huge nearly used-up grid or a continuous space with min == max: a repeat beats stalling.
        return drawn
    free = [pt for pt in iter_points(space) if pt not in used]
    if not free:
        return None
    return dict(zip(space.names(), free[int(rng.integers(len(free)))], strict=True))


def _count_on_grid(space: SearchSpace, keys: set[tuple[str | float, ...]]) -> int:
    """How many of ``keys`` are points of the finite space (history may hold points from outside it)."""
    allowed = [set(finite_values(p) or ()) for p in space.parameters]
    return sum(1 for key in keys if all(v in ok for v, ok in zip(key, allowed, strict=True)))


class TPE(_TPEBase):
    """Katib's ``tpe``: one Parzen estimator per parameter, candidates scored parameter by parameter.

    Settings keep hyperopt's names: ``gamma`` (default 0.1, Optuna's; the good group holds ceil(gamma * n) of
    n results, at most 25), ``prior_weight`` 1.0, ``n_EI_candidates`` 24, ``random_state``; plus
    ``n_startup_trials`` 10, the results gathered by random search before the model takes over.
    """

    name: ClassVar[str] = "tpe"
    settings_names: ClassVar[tuple[str, ...]] = (
        "gamma",
        "prior_weight",
        "n_EI_candidates",
        "random_state",
        "n_startup_trials",
    )
    multivariate: ClassVar[bool] = False

    def _parse(self, settings: Mapping[str, str]) -> tuple[TPEConfig, list[str]]:
        return parse_tpe_settings(settings)


class MultivariateTPE(_TPEBase):
    """Katib's ``multivariate-tpe``: one joint density of product kernels, so correlated parameters are learnt.

    Settings keep Katib's Optuna names: ``n_startup_trials`` 10, ``n_ei_candidates`` 24, ``random_state``;
    the good group is split as in ``tpe`` with gamma 0.1.
    """

    name: ClassVar[str] = "multivariate-tpe"
    settings_names: ClassVar[tuple[str, ...]] = ("n_startup_trials", "n_ei_candidates", "random_state")
    multivariate: ClassVar[bool] = True

    def _parse(self, settings: Mapping[str, str]) -> tuple[TPEConfig, list[str]]:
        return parse_multivariate_settings(settings)
