"""medianstop settings validation and the median stopping rule, on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from natib.algorithms.early_stopping import KNOWN_EARLY_STOPPING, MedianStop, validate_early_stopping


def test_validation_messages() -> None:
    assert KNOWN_EARLY_STOPPING == ("medianstop",)
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
