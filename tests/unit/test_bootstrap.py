"""The seeded paired bootstrap: known answers on synthetic data (the mean of N(0.3, 1) samples, a win rate,
bits per byte as a ratio of sums), the same seed giving the same interval, pairing removing shared noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lifecycle.evaluate.bootstrap import (
    Interval,
    flat_keys,
    from_flat_keys,
    interval,
    paired_delta,
    ratio,
    ratio_delta,
    win_rate,
    wilson,
)

SPEC = {"level": 0.95, "resamples": 2000, "seed": 1234}


def test_the_mean_of_normal_samples_has_the_textbook_interval() -> None:
    n = 2000
    values = np.random.default_rng(7).normal(0.3, 1.0, n)
    found = interval(values, **SPEC)
    assert found.n == n and found.level == 0.95 and found.estimate == pytest.approx(values.mean())
    assert found.low < 0.3 < found.high
    assert found.high - found.low == pytest.approx(2 * 1.96 / math.sqrt(n), rel=0.1)
    assert found.low < found.estimate < found.high


def test_the_same_seed_gives_the_same_interval_and_another_seed_another() -> None:
    values = np.random.default_rng(3).normal(0.0, 1.0, 48)
    assert interval(values, **SPEC) == interval(values, **SPEC)
    assert interval(values, **SPEC | {"seed": 99}) != interval(values, **SPEC)


def test_a_paired_delta_of_identical_series_is_exactly_zero_and_pairing_cancels_shared_noise() -> None:
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 1, 48)
    assert paired_delta(a, a, **SPEC) == Interval(0.0, 0.0, 0.0, 48, 0.95)
    hard = rng.normal(0, 1.0, 200)  # how hard each prompt is: shared by both models
    better, worse = hard + 0.1 + rng.normal(0, 0.05, 200), hard + rng.normal(0, 0.05, 200)
    found = paired_delta(better, worse, **SPEC)
    assert found.estimate == pytest.approx(0.1, abs=0.02) and found.low > 0  # unpaired, the noise would swamp it
    assert found.high - found.low < 0.05


def test_win_rate_counts_ties_half_and_an_even_contest_includes_one_half() -> None:
    found = win_rate([1, 2, 3, 4], [0, 2, 5, 4], **SPEC)
    assert found.estimate == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    rng = np.random.default_rng(11)
    even = win_rate(rng.normal(size=48), rng.normal(size=48), **SPEC)
    assert even.low < 0.5 < even.high
    assert win_rate(np.ones(48), np.zeros(48), **SPEC) == Interval(1.0, 1.0, 1.0, 48, 0.95)


def test_bits_per_byte_is_a_ratio_of_sums_resampled_over_texts() -> None:
    rng = np.random.default_rng(2)
    n_bytes = rng.integers(100, 2000, 300).astype(float)
    bits_a = n_bytes * rng.normal(2.0, 0.2, 300)
    bits_b = n_bytes * rng.normal(2.3, 0.2, 300)
    bpb = ratio(bits_a, n_bytes, **SPEC)
    assert bpb.estimate == pytest.approx(bits_a.sum() / n_bytes.sum()) and bpb.low < 2.0 < bpb.high
    delta = ratio_delta(bits_a, bits_b, n_bytes, **SPEC)
    assert delta.estimate == pytest.approx(bits_a.sum() / n_bytes.sum() - bits_b.sum() / n_bytes.sum())
    assert delta.low < -0.3 < delta.high and delta.high < 0


def test_flat_keys_round_trip_and_bad_input_is_named() -> None:
    found = interval([0.0, 1.0, 1.0, 1.0], **SPEC)
    keys = flat_keys("hybrid_recall_at_5", found)
    assert set(keys) == {"hybrid_recall_at_5", "hybrid_recall_at_5_low", "hybrid_recall_at_5_high",
                         "hybrid_recall_at_5_n"}
    assert from_flat_keys(keys, "hybrid_recall_at_5", 0.95) == found
    assert from_flat_keys({"hybrid_recall_at_5": 0.9}, "hybrid_recall_at_5", 0.95) is None
    with pytest.raises(ValueError, match="n = 0"):
        interval([], **SPEC)
    with pytest.raises(ValueError, match=r"\[3, 2\]"):
        paired_delta([1, 2, 3], [1, 2], **SPEC)


def test_wilson_interval_of_a_tally_matches_the_known_answer() -> None:
    found = wilson(8, 10)  # the textbook case: 8 successes in 10, 95%
    assert found["estimate"] == 0.8 and found["n"] == 10
    assert round(found["low"], 4) == 0.4902 and round(found["high"], 4) == 0.9433
    assert wilson(0, 0) == {"estimate": None, "low": None, "high": None, "n": 0}
    none, all_ = wilson(0, 20), wilson(20, 20)
    assert none["low"] == 0 and 0 < none["high"] < 0.2  # clipped to [0, 1]: no -1e-17 from rounding
    assert all_["high"] == pytest.approx(1) and 0.8 < all_["low"] < 1
