"""Seeded paired bootstrap intervals for the evaluation's comparisons (numpy only).

Percentile bootstrap: draw the n items (prompts, questions, validation texts) with replacement `resamples`
times, compute the statistic on every resample, and report the (1 - level) / 2 and (1 + level) / 2 quantiles
of those replicates around the statistic of the original sample. Paired: every series of one comparison is
indexed by the same draw, so what a prompt does to both models cancels out. The same seed draws the same
indices for the same n: a re-run, and every comparison of one evaluation, resample the same prompts.
`level`, `resamples` and `seed` come from conf/evaluate.yaml (`intervals`); nothing here has a default.

    spec = cfg.evaluate.intervals.model_dump()        # {"level": 0.95, "resamples": 2000, "seed": 1234}
    interval(rouge_candidate, **spec)                 # mean of one per-prompt series
    paired_delta(rouge_candidate, rouge_champion, **spec)   # mean of a_i - b_i
    win_rate(rouge_candidate, rouge_champion, **spec)       # share of a_i > b_i, ties half
    ratio_delta(bits_candidate, bits_base, text_bytes, **spec)  # sum(a)/sum(den) - sum(b)/sum(den)
    flat_keys("hybrid_recall_at_5", iv)   # {"hybrid_recall_at_5": est, "..._low": ., "..._high": ., "..._n": n}

Each result is an `Interval(estimate, low, high, n, level)`; `to_dict()` is its evaluation.json form.

Recall intervals (the rag_index stage): per held-out question 1.0 when its source chunk is among the top k,
else 0.0; `interval(hits, **spec)`, stored in the stage's metrics with `flat_keys(f"{mode}_recall_at_{k}", iv)`:
keys `<mode>_recall_at_<k>` (the estimate), `<mode>_recall_at_<k>_low`, `<mode>_recall_at_<k>_high` and
`<mode>_recall_at_<k>_n`. The evaluate stage reads them back with `from_flat_keys`.

Live counts (serving: thumbs up, compare wins) have no per-item series to resample, only a tally:
`wilson(successes, n)` is the share with its 95% Wilson score interval, as a dict for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Statistic = Callable[..., np.ndarray]  # each column (..., n) -> the statistic (...,), reduced over the last axis
CHUNK_CELLS = 1_000_000  # resampled index cells drawn at a time: bounded memory for thousands of texts
FLAT_SUFFIXES = ("_low", "_high", "_n")


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic of the original sample
    low: float
    high: float
    n: int  # items resampled (prompts, questions, texts)
    level: float  # e.g. 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def excludes(self, value: float) -> bool:
        return value < self.low or value > self.high


def bootstrap(columns: Sequence[Sequence[float]], statistic: Statistic, *, level: float, resamples: int,
              seed: int) -> Interval:
    """The percentile interval of `statistic` over paired columns (each of length n, item i of every column
    belongs together); `statistic(*columns)` reduces arrays of shape (..., n) over the last axis."""
    data = [np.asarray(c, dtype=np.float64) for c in columns]
    n = len(data[0]) if data else 0
    if n == 0:
        raise ValueError("bootstrap: no items to resample (n = 0)")
    if any(len(c) != n for c in data):
        raise ValueError(f"bootstrap: paired columns differ in length: {[len(c) for c in data]}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap: level {level} is not in (0, 1)")
    if resamples < 1:
        raise ValueError(f"bootstrap: resamples {resamples} is not >= 1")
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_CELLS // n)
    replicates = []
    for start in range(0, resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, resamples - start), n))  # (rows, n)
        replicates.append(statistic(*(c[idx] for c in data)))  # (rows,)
    low, high = np.quantile(np.concatenate(replicates), [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(statistic(*data)), float(low), float(high), n, level)


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _mean_delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b).mean(axis=-1)


def _wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((np.sign(a - b) + 1) / 2).mean(axis=-1)  # 1 a win, 0.5 a tie, 0 a loss


def interval(values: Sequence[float], *, level: float, resamples: int, seed: int) -> Interval:
    """The mean of one per-item series."""
    return bootstrap([values], _mean, level=level, resamples=resamples, seed=seed)


def paired_delta(a: Sequence[float], b: Sequence[float], *, level: float, resamples: int, seed: int) -> Interval:
    """The mean of a_i - b_i (a and b measured on the same items)."""
    return bootstrap([a, b], _mean_delta, level=level, resamples=resamples, seed=seed)


def win_rate(a: Sequence[float], b: Sequence[float], *, level: float, resamples: int, seed: int) -> Interval:
    """The share of items where a_i > b_i (ties count half)."""
    return bootstrap([a, b], _wins, level=level, resamples=resamples, seed=seed)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num.sum(axis=-1) / den.sum(axis=-1)


def _ratio_delta(a: np.ndarray, b: np.ndarray, den: np.ndarray) -> np.ndarray:
    total = den.sum(axis=-1)
    return a.sum(axis=-1) / total - b.sum(axis=-1) / total


def ratio(num: Sequence[float], den: Sequence[float], *, level: float, resamples: int, seed: int) -> Interval:
    """sum(num) / sum(den) over items resampled together (bits per byte: per-text bits over per-text bytes)."""
    return bootstrap([num, den], _ratio, level=level, resamples=resamples, seed=seed)


def ratio_delta(a: Sequence[float], b: Sequence[float], den: Sequence[float], *, level: float, resamples: int,
                seed: int) -> Interval:
    """sum(a) / sum(den) - sum(b) / sum(den), paired over items: two models' bits on the same texts' bytes."""
    return bootstrap([a, b, den], _ratio_delta, level=level, resamples=resamples, seed=seed)


def flat_keys(name: str, found: Interval) -> dict[str, float]:
    """An interval as flat metric keys: `name` (the estimate), `name_low`, `name_high`, `name_n`."""
    return {name: found.estimate, f"{name}_low": found.low, f"{name}_high": found.high, f"{name}_n": float(found.n)}


def from_flat_keys(metrics: dict[str, float], name: str, level: float) -> Interval | None:
    """The interval `flat_keys(name, ...)` wrote into `metrics`; None when any of its keys is missing."""
    keys = [name] + [name + s for s in FLAT_SUFFIXES]
    if any(k not in metrics for k in keys):
        return None
    return Interval(float(metrics[name]), float(metrics[keys[1]]), float(metrics[keys[2]]), int(metrics[keys[3]]),
                    level)


def wilson(successes: float, n: float, z: float = 1.96) -> dict[str, float | None]:
    """The share `successes / n` with its Wilson score interval (95% at z 1.96); None without any n."""
    if n <= 0:
        return {"estimate": None, "low": None, "high": None, "n": 0}
    p = successes / n
    center, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    low, high = max(0.0, (center - half) / scale), min(1.0, (center + half) / scale)  # rounding: 0 - 1e-17
    return {"estimate": p, "low": low, "high": high, "n": int(n)}
