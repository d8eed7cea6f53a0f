"""Corpus documents: read the text files, split them into train and val, cut them into chunks.

Each file is a document. Documents go to train or val by a seeded choice; a corpus of one
document is cut in two at a line break. :func:`chunk_bounds` cuts a text where the GPT-2
pre-tokenizer always cuts (a newline between two non-space characters), so encoding the
chunks one by one gives exactly the ids of encoding the whole. The tokenize stage itself
(documents -> shards) is :mod:`gptlab.data.tokenize`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab.errors import GptlabError

# A newline with non-space on both sides ends one pre-token and starts another for the GPT-2
# pattern (and SimpleTokenizer's): no token spans it, so cutting just after it is exact.
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")
# A blank line (only spaces between two line breaks): the end of one is the start of a paragraph.
_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t\r]*\n)+")


@dataclass
class Document:
    """One corpus file: its name and text."""

    name: str
    text: str


def read_corpus(folder: str | Path, pattern: str = "*.txt") -> list[Document]:
    """Return the documents of ``folder`` matching ``pattern``, sorted by name, whitespace-only ones dropped.

    Raises GptlabError when nothing matches, a file is not UTF-8 (naming the byte offset), or
    all files are empty.
    """
    folder = Path(folder)
    paths = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not paths:
        raise GptlabError(f"{folder}: no corpus files match {pattern!r}; run `dvc repro download` or fix tokenize.corpus_glob")
    docs = []
    for path in paths:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise GptlabError(
                f"{path}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                "convert it (e.g. `iconv -f latin1 -t utf-8`) or remove it from the corpus"
            ) from None
        if text.strip():
            docs.append(Document(path.name, text))
    if not docs:
        raise GptlabError(f"{folder}: the corpus is empty ({len(paths)} files, all blank); add text files")
    return docs


def split_documents(docs: Sequence[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Return (train, val): a seeded choice of ``round(n * val_fraction)`` (at least 1) val documents.

    A corpus of one document is cut in two at a line break near ``1 - val_fraction`` of its
    text, preferring the end of a blank line (a paragraph break) within 5% of the text of that
    point; both halves keep some non-space text. Both lists keep corpus order.
    """
    if len(docs) == 1:
        return _split_one(docs[0], val_fraction)
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    chosen = set(np.random.default_rng(seed).permutation(len(docs))[:n_val].tolist())
    return [d for i, d in enumerate(docs) if i not in chosen], [d for i, d in enumerate(docs) if i in chosen]


def _split_one(doc: Document, val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Cut one document at a line break (train, val): the halves are encoded separately, so
    any line break will do; a paragraph break near the target is preferred."""
    text = doc.text
    target = int(len(text) * (1 - val_fraction))
    first, last = re.search(r"\S", text).start(), len(text.rstrip())  # a cut must leave text on both sides
    cuts = [m.end() for m in re.finditer(r"\n", text) if first < m.end() <= last]
    if not cuts:
        raise GptlabError(f"{doc.name}: one document with no line break inside its text to split train from val; add documents or line breaks")
    paragraphs = [m.end() for m in _PARAGRAPH_BREAK.finditer(text) if first < m.end() <= last]
    near = [c for c in paragraphs if abs(c - target) <= 0.05 * len(text)]
    cut = min(near or cuts, key=lambda c: abs(c - target))
    return [Document(doc.name, text[:cut])], [Document(doc.name + "#val", text[cut:])]


def chunk_bounds(text: str, chunk_chars: int) -> list[tuple[int, int]]:
    """Return (start, end) character spans covering ``text`` in order, each about
    ``chunk_chars`` long, cut only at safe line breaks: encoding the spans one by one gives
    exactly the ids of encoding ``text``."""
    spans, start = [], 0
    while len(text) - start > chunk_chars:
        cut = _SAFE_CUT.search(text, start + chunk_chars)
        if cut is None:
            break
        spans.append((start, cut.end()))
        start = cut.end()
    spans.append((start, len(text)))
    return spans
