"""Bootstrap intervals of per-record scores: one engine's mean, and the paired difference of two.

The test split is a sample (99 records by default), so a mean F1 or loss is an estimate; a
percentile bootstrap says how far it could move. :func:`resample_indices` draws ``samples``
resamples of the record indices (with replacement, seeded). Every engine's interval and the
paired difference use the *same* index draws: engines that answered the same records are
compared record by record, which removes the spread of record difficulty the two share (the
paired interval of a difference is much narrower than the two engines' intervals suggest).

A difference is ``significant`` when its interval excludes 0. Which engine is ``better`` depends
on the metric's direction: higher is better for F1 and ROUGE-L, lower for a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gptlab.errors import GptlabError


@dataclass(frozen=True)
class Interval:
    """A mean over records and its bootstrap interval (same unit as the values)."""

    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """The paired difference ``a - b`` of two engines' means, its bootstrap interval,
    ``significant`` (the interval excludes 0) and ``a_better`` (True when ``a`` is better in the
    metric's direction; meaningful only when significant)."""

    diff: float
    low: float
    high: float
    significant: bool
    a_better: bool


def resample_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """Return ``(samples, n)`` int64 record indices drawn uniformly with replacement from
    ``range(n)`` by numpy's PCG64 generator seeded with ``seed``: row k is resample k."""
    if n < 1:
        raise GptlabError("bootstrap needs at least one record; the responses file is empty: run `dvc repro generate`")
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _values(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise GptlabError(f"bootstrap needs one finite number per record; got shape {arr.shape} with {int((~np.isfinite(arr)).sum())} missing or infinite")
    return arr


def _bounds(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def interval(values, indices: np.ndarray, confidence: float = 0.95) -> Interval:
    """Return the mean of ``values`` (one per record, length n) and its percentile bootstrap
    interval at ``confidence`` (0..1) over the resamples ``indices`` ((samples, n), from
    :func:`resample_indices`)."""
    arr = _values(values)
    _check(indices, len(arr))
    low, high = _bounds(arr[indices].mean(axis=1), confidence)
    return Interval(float(arr.mean()), low, high)


def paired_difference(a, b, indices: np.ndarray, confidence: float = 0.95, lower_is_better: bool = False) -> Difference:
    """Return the mean of ``a - b`` (two engines' scores of the same n records, in the same
    order) with its percentile bootstrap interval: each resample takes the same record indices
    for both engines. ``lower_is_better``: the metric's direction (True for a loss)."""
    x, y = _values(a), _values(b)
    if len(x) != len(y):
        raise GptlabError(f"a paired bootstrap needs the same records for both engines; got {len(x)} and {len(y)} scores: regenerate both response files")
    _check(indices, len(x))
    d = x - y
    low, high = _bounds(d[indices].mean(axis=1), confidence)
    diff = float(d.mean())
    return Difference(diff, low, high, significant=bool(low > 0 or high < 0), a_better=(diff < 0) if lower_is_better else (diff > 0))


def _check(indices: np.ndarray, n: int) -> None:
    if indices.ndim != 2 or indices.shape[1] != n:
        raise GptlabError(f"bootstrap indices of shape {indices.shape} do not resample {n} records; draw them with resample_indices({n}, ...)")
