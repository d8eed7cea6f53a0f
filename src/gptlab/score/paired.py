"""Uncertainty and direction of the score means: per engine intervals, the paired difference.

Works on the per-record score tables of :mod:`gptlab.score.report` (one row per test record, in
the test split's order). Each engine's ``<metric>_low`` / ``<metric>_high`` and the difference
``a - b`` of two engines that answered the same records come from the same bootstrap resamples
(:mod:`gptlab.score.bootstrap`), so the difference is paired record by record.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gptlab.errors import GptlabError
from gptlab.params import BootstrapParams
from gptlab.score.bootstrap import interval, paired_difference, resample_indices
from gptlab.score.metrics import matched_length_f1, response_of

# The metrics with intervals, and their direction: True when lower is better.
LOWER_IS_BETTER = {"squad_token_f1": False, "rougeL_f1": False, "loss": True}
# The length-controlled F1 of a pair (:func:`gptlab.score.metrics.matched_length_f1`): higher is better.
MATCHED = "squad_token_f1_matched"
DIFF_METRICS = {"squad_token_f1": False, MATCHED: False, "rougeL_f1": False, "loss": True}
DIGITS = 5


def _round(x: float) -> float:
    return round(float(x), DIGITS)


def indices_for(n: int, p: BootstrapParams) -> np.ndarray:
    """Return the ``(p.samples, n)`` resampled record indices every engine of ``n`` records shares."""
    return resample_indices(n, p.samples, p.seed)


def engine_intervals(df: pd.DataFrame, p: BootstrapParams) -> dict[str, float]:
    """Return ``{<metric>_low, <metric>_high}`` for each metric of :data:`LOWER_IS_BETTER` that
    ``df`` has with a value on every record (a judge's unscored records would bias it: no
    interval then), at confidence ``p.confidence``."""
    out: dict[str, float] = {}
    idx = indices_for(len(df), p)
    for col in LOWER_IS_BETTER:
        if col in df and len(df) and df[col].notna().all():
            ci = interval(df[col].to_numpy(float), idx, p.confidence)
            out[f"{col}_low"], out[f"{col}_high"] = _round(ci.low), _round(ci.high)
    return out


def check_same_records(a: list[dict], b: list[dict], names: tuple[str, str]) -> None:
    """Return None when the two engines' response lists hold the same test records in the same
    order (instruction, input, reference output); else raise GptlabError naming the first that differs."""
    if len(a) != len(b):
        raise GptlabError(
            f"{names[0]} has {len(a)} responses and {names[1]} {len(b)}: a paired comparison needs both on the same test split; rerun `dvc repro`"
        )
    for i, (x, y) in enumerate(zip(a, b)):
        if (x.get("instruction"), x.get("input") or "", x.get("output")) != (y.get("instruction"), y.get("input") or "", y.get("output")):
            raise GptlabError(
                f"record {i} differs between {names[0]} and {names[1]} responses: a paired comparison needs the same test split; rerun `dvc repro`"
            )


def matched_f1_columns(a: list[dict], b: list[dict]) -> tuple[list[float], list[float]]:
    """Return the per-record token F1 of each engine's response at matched length
    (:func:`gptlab.score.metrics.matched_length_f1`), as two lists in record order."""
    pairs = [matched_length_f1(response_of(x, i), response_of(y, i), str(x.get("output", ""))) for i, (x, y) in enumerate(zip(a, b))]
    return [f for f, _ in pairs], [f for _, f in pairs]


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, p: BootstrapParams) -> dict[str, float | bool]:
    """Return the mean difference ``a - b`` of each metric of :data:`DIFF_METRICS` both tables
    have (same records, same order): ``<metric>`` (the difference), ``<metric>_low``,
    ``<metric>_high`` (its paired bootstrap interval) and ``<metric>_significant`` (True when the
    interval excludes 0). The sign says which engine is better: for a loss a negative difference
    favours ``a``."""
    out: dict[str, float | bool] = {}
    idx = indices_for(len(a), p)
    for col, lower in DIFF_METRICS.items():
        if col in a and col in b and len(a) and a[col].notna().all() and b[col].notna().all():
            d = paired_difference(a[col].to_numpy(float), b[col].to_numpy(float), idx, p.confidence, lower_is_better=lower)
            out[col], out[f"{col}_low"], out[f"{col}_high"] = _round(d.diff), _round(d.low), _round(d.high)
            out[f"{col}_significant"] = d.significant
    return out


def better(diff: dict, metric: str, names: tuple[str, str]) -> str | None:
    """Return the name of the engine the difference ``names[0] - names[1]`` of ``metric`` favours
    (its direction from :data:`DIFF_METRICS`), or None when its interval includes 0."""
    if not diff.get(f"{metric}_significant"):
        return None
    lower = DIFF_METRICS.get(metric, False)
    return names[0] if (diff[metric] < 0) == lower else names[1]
