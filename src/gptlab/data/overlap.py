"""Near-duplicate instructions across splits: val/test records that ask what a train record asks.

Exact duplicates go before the split (:func:`gptlab.data.instructions.drop_duplicates`); these
are records that differ only by case, whitespace or punctuation of their instruction and input
(their answers may differ). Left in val or test, they score the model on what it was trained
on. :func:`overlap_key` is the normalised form; :func:`dedupe_splits` counts them and, with
``drop``, removes them from val and test.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence

_NOT_WORD = re.compile(r"[\W_]+")  # punctuation, symbols and whitespace runs: one space

OVERLAP_SPLITS = ("val", "test")  # the splits checked against train


def normalise(text: str) -> str:
    """Return ``text`` case-folded (NFKC), with every run of whitespace, punctuation and symbols
    made one space, stripped: ``"Name a  primary colour!"`` -> ``"name a primary colour"``."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def overlap_key(record: Mapping) -> tuple[str, str]:
    """Return the normalised ``(instruction, input)`` of ``record`` (a missing input is ``""``):
    two records with the same key ask the same thing."""
    return normalise(record["instruction"]), normalise(record.get("input") or "")


def near_duplicates(train: Sequence[Mapping], other: Sequence[Mapping]) -> list[int]:
    """Return the indices of the records of ``other`` whose :func:`overlap_key` is a train record's."""
    seen = {overlap_key(r) for r in train}
    return [i for i, r in enumerate(other) if overlap_key(r) in seen]


def dedupe_splits(splits: Mapping[str, list[dict]], mode: str = "drop") -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Return ``(splits, counts)``: the splits with, for ``mode`` ``drop``, the val and test records
    that near-duplicate a train record removed (``report``: unchanged), and ``counts``
    ``{"near_duplicates_val": n, "near_duplicates_test": m}``, the records found either way."""
    out = dict(splits)
    counts = {}
    for name in OVERLAP_SPLITS:
        found = set(near_duplicates(splits["train"], splits[name]))
        counts[f"near_duplicates_{name}"] = len(found)
        if mode == "drop" and found:
            out[name] = [r for i, r in enumerate(splits[name]) if i not in found]
    return out, counts
