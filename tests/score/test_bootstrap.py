"""The bootstrap intervals: seeded, paired, right by hand and against scipy.stats.bootstrap."""

import numpy as np
import pandas as pd
import pytest

from gptlab.errors import GptlabError
from gptlab.params import BootstrapParams
from gptlab.score.bootstrap import interval, paired_difference, resample_indices
from gptlab.score.paired import better, engine_intervals, paired_differences

RNG = np.random.default_rng(0)
N = 99
BASE = RNG.beta(2, 5, N)  # F1-like scores of 99 records
TUNED = np.clip(BASE + RNG.normal(0.04, 0.12, N), 0, 1)  # better by ~0.04 on average, noisy per record


def test_resamples_are_seeded_and_the_interval_holds_the_mean():
    idx = resample_indices(N, 2000, seed=7)
    assert idx.shape == (2000, N) and idx.min() >= 0 and idx.max() < N
    assert (resample_indices(N, 2000, seed=7) == idx).all() and not (resample_indices(N, 2000, seed=8) == idx).all()
    ci = interval(BASE, idx, 0.95)
    assert ci.low < ci.mean < ci.high and ci.mean == pytest.approx(BASE.mean())
    # the textbook estimate: mean +- 1.96 standard errors
    se = BASE.std(ddof=1) / np.sqrt(N)
    assert ci.low == pytest.approx(BASE.mean() - 1.96 * se, abs=0.25 * se) and ci.high == pytest.approx(BASE.mean() + 1.96 * se, abs=0.25 * se)
    assert interval(BASE, idx, 0.5).high - interval(BASE, idx, 0.5).low < ci.high - ci.low


def test_the_paired_interval_is_the_loop_a_reader_would_write():
    idx = resample_indices(N, 500, seed=3)
    by_hand = sorted(float(np.mean([TUNED[i] - BASE[i] for i in row])) for row in idx)
    d = paired_difference(TUNED, BASE, idx, 0.95)
    assert d.low == pytest.approx(np.percentile(by_hand, 2.5)) and d.high == pytest.approx(np.percentile(by_hand, 97.5))
    assert d.diff == pytest.approx((TUNED - BASE).mean()) and d.significant and d.a_better


def test_pairing_narrows_the_interval_of_a_difference():
    idx = resample_indices(N, 2000, seed=1)
    paired = paired_difference(TUNED, BASE, idx)
    unpaired = paired_difference(TUNED, BASE[np.random.default_rng(1).permutation(N)], idx)  # records shuffled: pairing broken
    assert paired.high - paired.low < 0.7 * (unpaired.high - unpaired.low)


def test_intervals_agree_with_scipy_stats_bootstrap():
    stats = pytest.importorskip("scipy.stats")
    idx = resample_indices(N, 20000, seed=11)  # Monte Carlo error of a bound ~0.02 standard errors
    ours = interval(BASE, idx, 0.95)
    theirs = stats.bootstrap((BASE,), np.mean, n_resamples=20000, method="percentile", random_state=11).confidence_interval
    se = BASE.std(ddof=1) / np.sqrt(N)
    assert ours.low == pytest.approx(theirs.low, abs=0.1 * se) and ours.high == pytest.approx(theirs.high, abs=0.1 * se)
    d = paired_difference(TUNED, BASE, idx, 0.95)
    theirs = stats.bootstrap(
        (TUNED, BASE), lambda a, b, axis=-1: a.mean(axis=axis) - b.mean(axis=axis), paired=True, n_resamples=20000, method="percentile", random_state=11
    )
    se = (TUNED - BASE).std(ddof=1) / np.sqrt(N)
    assert d.low == pytest.approx(theirs.confidence_interval.low, abs=0.1 * se) and d.high == pytest.approx(theirs.confidence_interval.high, abs=0.1 * se)


def test_direction_significance_and_which_engine_is_better():
    p = BootstrapParams(samples=1000, seed=0)
    a = pd.DataFrame({"squad_token_f1": TUNED, "rougeL_f1": BASE, "loss": 1.5 - TUNED})
    b = pd.DataFrame({"squad_token_f1": BASE, "rougeL_f1": BASE + RNG.normal(0, 0.05, N), "loss": 1.5 - BASE})
    d = paired_differences(a, b, p)
    assert d["squad_token_f1"] > 0 and d["squad_token_f1_significant"] is True and better(d, "squad_token_f1", ("ft", "base")) == "ft"
    assert d["loss"] < 0 and d["loss_significant"] is True and better(d, "loss", ("ft", "base")) == "ft"  # lower loss is better
    assert d["rougeL_f1_low"] < 0 < d["rougeL_f1_high"] and d["rougeL_f1_significant"] is False and better(d, "rougeL_f1", ("ft", "base")) is None
    assert better(paired_differences(b, a, p), "loss", ("base", "ft")) == "ft"
    e = engine_intervals(a, p)
    assert set(e) == {"squad_token_f1_low", "squad_token_f1_high", "rougeL_f1_low", "rougeL_f1_high", "loss_low", "loss_high"}
    assert engine_intervals(pd.DataFrame({"squad_token_f1": [0.5, None]}), p) == {}  # a missing score: no interval


def test_bad_input_is_one_line():
    with pytest.raises(GptlabError, match="same records for both engines; got 3 and 2"):
        paired_difference([1, 2, 3], [1, 2], resample_indices(3, 100, 0))
    with pytest.raises(GptlabError, match="at least one record"):
        resample_indices(0, 100, 0)
    with pytest.raises(GptlabError, match="missing or infinite"):
        interval([1.0, float("nan")], resample_indices(2, 100, 0))
