"""Early-stopping settings validation and the medianstop and hyperband rules, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from natib.algorithms.early_stopping import (
    KNOWN_EARLY_STOPPING,
    HyperbandStop,
    MedianStop,
    early_stopping_rule,
    validate_early_stopping,
)
from natib.algorithms.space import ObjectiveType


def test_validation_messages() -> None:
    assert KNOWN_EARLY_STOPPING == ("medianstop", "hyperband")
    assert validate_early_stopping("medianstop", {}) == []
    assert validate_early_stopping("medianstop", {"min_trials_required": "1", "start_step": "1"}) == []
    assert validate_early_stopping("medianstop", {"min_trials_required": "0"}) == [
        "min_trials_required must be greater than zero (>0)"
    ]
    assert validate_early_stopping("medianstop", {"start_step": "0"}) == [
        "start_step must be greater or equal than one (>=1)"
    ]
    assert validate_early_stopping("medianstop", {"patience": "3"}) == [
        "unknown setting patience for algorithm medianstop"
    ]
    assert validate_early_stopping("medianstop", {"start_step": "two"}) == [
        "failed to validate start_step(two): invalid literal for int() with base 10: 'two'"
    ]
    assert validate_early_stopping("hyperstop", {}) == ["unknown algorithm name hyperstop"]


def test_from_settings_defaults_and_overrides() -> None:
    assert MedianStop.from_settings({}) == MedianStop(min_trials_required=3, start_step=4)
    assert MedianStop.from_settings({"start_step": "2"}) == MedianStop(min_trials_required=3, start_step=2)
    with pytest.raises(ValueError, match=r"min_trials_required must be greater than zero \(>0\)"):
        MedianStop.from_settings({"min_trials_required": "-1"})


# Peers' running averages over their first 3 reports: [1, 2, 3] -> 2; [3, 3, 3] -> 3; [5, 7] -> 6.
# Median of (2, 3, 6) is 3.
PEERS = [[1.0, 2.0, 3.0, 4.0], [3.0, 3.0, 3.0], [5.0, 7.0]]
RULE = MedianStop(min_trials_required=2, start_step=2)


def test_threshold_is_the_median_of_running_averages() -> None:
    assert RULE.threshold(3, PEERS) == 3.0
    # Over the first report only: 1, 3, 5 -> median 3; over 2 reports: 1.5, 3, 6 -> 3.
    assert RULE.threshold(1, PEERS) == 3.0
    assert RULE.threshold(2, PEERS) == 3.0
    # Four peers at step 4: 2.5, 3, 6, 10 -> median (3 + 6) / 2.
    assert RULE.threshold(4, [*PEERS, [10.0]]) == 4.5


def test_minimize_stops_only_when_strictly_worse() -> None:
    assert RULE.should_stop([4.0, 3.5, 3.2], PEERS, "minimize")
    assert not RULE.should_stop([4.0, 3.5, 3.0], PEERS, "minimize")  # equal to the median: keep going
    assert not RULE.should_stop([2.0, 3.5, 3.2], PEERS, "minimize")  # best so far counts, not the latest


def test_maximize_stops_only_when_strictly_worse() -> None:
    assert RULE.should_stop([1.0, 2.5, 2.9], PEERS, "maximize")
    assert not RULE.should_stop([1.0, 3.0, 2.0], PEERS, "maximize")


def test_no_decision_before_start_step() -> None:
    assert not RULE.should_stop([100.0], PEERS, "minimize")
    assert RULE.should_stop([100.0, 100.0], PEERS, "minimize")


def test_no_decision_with_too_few_peers() -> None:
    strict = MedianStop(min_trials_required=4, start_step=1)
    assert not strict.should_stop([100.0], PEERS, "minimize")
    assert strict.should_stop([100.0], [*PEERS, [0.0]], "minimize")
    # A peer with no reports is no peer.
    assert not RULE.should_stop([100.0, 100.0], [PEERS[0], []], "minimize")


def test_non_finite_reports_are_ignored() -> None:
    peers = [[1.0, math.nan], [3.0, math.inf], [5.0, 5.0]]
    # Averages over 2 reports, non-finite dropped: 1, 3, 5 -> median 3.
    assert RULE.threshold(2, peers) == 3.0
    assert RULE.should_stop([math.nan, 3.5], peers, "minimize")
    assert not RULE.should_stop([math.nan, math.nan], peers, "minimize")


# ---------------------------------------------------------------- hyperband (asynchronous successive halving)


def test_hyperband_validation_messages() -> None:
    assert validate_early_stopping("hyperband", {}) == []
    assert validate_early_stopping("hyperband", {"eta": "2", "min_resource": "3", "max_resource": "3"}) == []
    eta = "eta must be an integer greater than or equal to two (>=2)"
    assert validate_early_stopping("hyperband", {"eta": "1"}) == [eta]
    assert validate_early_stopping("hyperband", {"eta": "2.5"}) == [eta]
    assert validate_early_stopping("hyperband", {"min_resource": "0"}) == [
        "min_resource must be greater or equal than one (>=1)"
    ]
    assert validate_early_stopping("hyperband", {"min_resource": "4", "max_resource": "3"}) == [
        "max_resource must be greater than or equal to min_resource"
    ]
    # Against the default min_resource of 1; not repeated when min_resource itself is rejected.
    assert validate_early_stopping("hyperband", {"max_resource": "0"}) == [
        "max_resource must be greater than or equal to min_resource"
    ]
    assert validate_early_stopping("hyperband", {"min_resource": "0", "max_resource": "0"}) == [
        "min_resource must be greater or equal than one (>=1)"
    ]
    assert validate_early_stopping("hyperband", {"max_resource": "lots"}) == [
        "failed to validate max_resource(lots): invalid literal for int() with base 10: 'lots'"
    ]
    assert validate_early_stopping("hyperband", {"start_step": "2"}) == [
        "unknown setting start_step for algorithm hyperband"
    ]
    # Each algorithm validates its own settings.
    assert validate_early_stopping("medianstop", {"eta": "3"}) == ["unknown setting eta for algorithm medianstop"]


def test_hyperband_from_settings() -> None:
    assert HyperbandStop.from_settings({}) == HyperbandStop(eta=3, min_resource=1, max_resource=None)
    assert HyperbandStop.from_settings({"eta": "2", "max_resource": "16"}) == HyperbandStop(
        eta=2, min_resource=1, max_resource=16
    )
    with pytest.raises(ValueError, match=r"eta must be an integer greater than or equal to two \(>=2\)"):
        HyperbandStop.from_settings({"eta": "0"})


def test_factory_builds_the_named_rule() -> None:
    median = early_stopping_rule("medianstop", {"start_step": "2"})
    assert median == MedianStop(start_step=2)
    assert median.peers == "completed"
    asha = early_stopping_rule("hyperband", {"eta": "4"})
    assert asha == HyperbandStop(eta=4)
    assert asha.peers == "all"
    with pytest.raises(ValueError, match="unknown algorithm name hyperstop"):
        early_stopping_rule("hyperstop", {})
    with pytest.raises(ValueError, match="unknown setting start_step for algorithm hyperband"):
        early_stopping_rule("hyperband", {"start_step": "2"})


def test_rungs_are_geometric_and_below_max_resource() -> None:
    rule = HyperbandStop(eta=3, min_resource=2, max_resource=54)
    assert [n for n in range(0, 100) if rule.is_rung(n)] == [2, 6, 18]
    unbounded = HyperbandStop(eta=2)
    assert [n for n in range(0, 20) if unbounded.is_rung(n)] == [1, 2, 4, 8, 16]


ASHA = HyperbandStop(eta=3)
# At rung 3 (best of the first 3 reports): minimize -> 1.0, 3.2, 2.9; maximize -> 2.5, 4.0, 9.0.
# The last two peers have not reached rung 3 and do not count.
RUNG_PEERS = [[1.0, 2.0, 2.5, 0.1], [4.0, 3.5, 3.2], [2.9, 9.0, 9.0], [2.0, 2.0], []]


def test_hyperband_minimize_keeps_the_top_third_at_a_rung() -> None:
    # Four trials at rung 3, ceil(4 / 3) = 2 continue.
    assert ASHA.should_stop([5.0, 4.0, 3.0], RUNG_PEERS, "minimize")  # rank 3 (1.0 and 2.9 better)
    assert not ASHA.should_stop([5.0, 2.8, 4.0], RUNG_PEERS, "minimize")  # best so far 2.8: rank 2
    assert not ASHA.should_stop([5.0, 4.0, 2.9], RUNG_PEERS, "minimize")  # tie with 2.9 favours the trial
    assert ASHA.explain([5.0, 4.0, 3.0], RUNG_PEERS, "minimize") == (
        "objective ranked 3 of 4 trials at rung 3, only the best 2 continue (eta=3)"
    )


def test_hyperband_maximize_keeps_the_top_third_at_a_rung() -> None:
    assert ASHA.should_stop([1.0, 2.0, 2.95], RUNG_PEERS, "maximize")  # 4.0 and 9.0 better: rank 3
    assert not ASHA.should_stop([1.0, 5.0, 2.0], RUNG_PEERS, "maximize")  # only 9.0 better: rank 2


def test_hyperband_decides_only_at_rungs() -> None:
    worst = [100.0, 100.0, 100.0, 100.0]
    assert not ASHA.should_stop(worst[:2], RUNG_PEERS, "minimize")
    assert ASHA.should_stop(worst[:3], RUNG_PEERS, "minimize")
    assert not ASHA.should_stop(worst, RUNG_PEERS, "minimize")
    assert not ASHA.should_stop([], RUNG_PEERS, "minimize")
    # Rung 1: four peers have reported (1.0, 4.0, 2.9, 2.0) -> five trials, two continue.
    assert ASHA.should_stop([3.0], RUNG_PEERS, "minimize")
    assert not ASHA.should_stop([1.5], RUNG_PEERS, "minimize")
    # No rung at or beyond max_resource.
    assert not HyperbandStop(eta=3, max_resource=3).should_stop(worst[:3], RUNG_PEERS, "minimize")


def test_hyperband_with_fewer_than_eta_trials_at_the_rung_always_continues() -> None:
    one_peer = [[1.0, 1.0, 1.0], [0.0, 0.0]]
    assert not ASHA.should_stop([9.0, 9.0, 9.0], one_peer, "minimize")  # two trials at rung 3 < eta
    assert ASHA.should_stop([9.0, 9.0, 9.0], [*one_peer, [2.0, 2.0, 2.0]], "minimize")  # three: one continues
    assert HyperbandStop(eta=2).should_stop([9.0, 9.0], one_peer, "minimize")  # eta 2: two trials suffice


def test_hyperband_ignores_non_finite_values() -> None:
    peers = [[math.nan, math.nan, math.nan], [1.0, math.inf, 1.0], [2.0, 2.0, 2.0]]
    # The all-nan peer is no peer: three trials at rung 3, one continues.
    assert ASHA.should_stop([math.nan, 4.0, math.inf], peers, "minimize")
    assert not ASHA.should_stop([math.nan, 0.5, math.inf], peers, "minimize")
    # A trial with no finite value is not judged.
    assert not ASHA.should_stop([math.nan, math.nan, math.nan], peers, "minimize")
    # Without the nan peer only two trials have a value at the rung.
    assert not ASHA.should_stop([5.0, 5.0, 5.0], peers[:2], "minimize")


def _learning_curves(rng: np.random.Generator, n: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy decaying losses with a per-trial floor (the trial's true quality) and a per-trial learning speed."""
    floor = rng.uniform(0.0, 1.0, n)
    speed = rng.uniform(0.8, 1.25, n)
    t = np.arange(1, steps + 1)
    curves = floor[:, None] + 1.5 * np.exp(-t[None, :] / (3.0 * speed[:, None])) + rng.normal(0, 0.03, (n, steps))
    return floor, curves


@pytest.mark.parametrize("objective", ["minimize", "maximize"])
def test_hyperband_prunes_a_population_of_curves(objective: ObjectiveType) -> None:
    """27 trials start one per tick and report one value per tick; each is judged after every report.

    Rungs at 3 and 9 reports. The seed is not a lucky one: over seeds 0-199 of this model the best curve
    survived in 196 and at least half of the worst third was stopped in all 200.
    """
    n, steps = 27, 27
    floor, curves = _learning_curves(np.random.default_rng(7), n, steps)
    if objective == "maximize":
        curves = -curves
    rule = HyperbandStop(eta=3, min_resource=3, max_resource=steps)
    reported: list[list[float]] = [[] for _ in range(n)]
    stopped: set[int] = set()
    for tick in range(n + steps):
        for i in range(n):
            step = tick - i
            if i in stopped or not 0 <= step < steps:
                continue
            reported[i].append(float(curves[i, step]))
            others = [reported[j] for j in range(n) if j != i and reported[j]]
            if rule.should_stop(reported[i], others, objective):
                stopped.add(i)
    order = np.argsort(floor)  # best first, whatever the direction (maximize negated the curves)
    worst = {int(i) for i in order[-9:]}
    assert int(order[0]) not in stopped
    assert len(worst & stopped) >= len(worst) / 2
    assert len(stopped) < n
