"""Corpus documents: list and read the text files, split them into train and val, cut them into chunks.

Each ``.txt`` file is a document (JSONL and parquet files hold one per record: see
:mod:`gptlab.data.records`). A corpus of text files goes to train or val by a seeded choice
of documents; a corpus of one document is cut in two at a line break; a corpus with record
streams uses a seeded hash of each document's text (:func:`in_val`), so nothing is held.
:func:`chunk_bounds` and :func:`text_pieces` cut a text where the GPT-2 pre-tokenizer always
cuts (a newline between two non-space characters), so encoding the pieces one by one gives
exactly the ids of encoding the whole. The tokenize stage itself (documents -> shards) is
:mod:`gptlab.data.tokenize`.

A text file is read clean (:func:`clean_text`): a leading UTF-8 byte-order mark is dropped and
Windows (``\\r\\n``) and old Mac (lone ``\\r``) line endings become ``\\n``, so a file saved on
Windows gives the ids of the same text saved elsewhere; :func:`needs_cleaning` tells which files
that changes.
"""

from __future__ import annotations

import codecs
import hashlib
import mmap
import re
from collections.abc import Iterator, Sequence
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


def corpus_files(folder: str | Path, pattern: str = "*.txt") -> list[Path]:
    """Return the files of ``folder`` matching ``pattern``, sorted by name; GptlabError when none does."""
    folder = Path(folder)
    paths = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not paths:
        raise GptlabError(f"{folder}: no corpus files match {pattern!r}; run `dvc repro download` or fix tokenize.corpus_glob")
    return paths


BOM = b"\xef\xbb\xbf"


def clean_text(text: str) -> str:
    """Return ``text`` without a leading byte-order mark and with ``\\r\\n`` and lone ``\\r`` line endings made ``\\n``."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def needs_cleaning(path: Path) -> bool:
    """Return True when :func:`clean_text` changes the text file at ``path`` (it starts with a byte-order mark or holds a ``\\r``)."""
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m[:3] == BOM or m.find(b"\r") != -1


def _not_utf8(path: Path, bad: int, offset: int) -> GptlabError:
    return GptlabError(f"{path}: not UTF-8 (byte 0x{bad:02x} at offset {offset}); convert it (e.g. `iconv -f latin1 -t utf-8`) or remove it from the corpus")


def read_text(path: Path) -> str:
    """Return the UTF-8 text of ``path``, cleaned (:func:`clean_text`); GptlabError naming the first bad byte's offset."""
    try:
        return clean_text(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e.object[e.start], e.start) from None


def is_blank(path: Path, block: int = 1 << 16) -> bool:
    """Return True when the text file at ``path`` holds only whitespace after a byte-order mark (reads
    until the first non-space character: one block for almost every file)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    start = True
    with open(path, "rb") as f:
        while data := f.read(block):
            text = decoder.decode(data)
            if start and text:
                text, start = text.removeprefix("\ufeff"), False
            if text.strip():
                return False
    return not decoder.decode(b"", final=True).strip()


def read_corpus(folder: str | Path, pattern: str = "*.txt") -> list[Document]:
    """Return the documents of ``folder`` matching ``pattern``, sorted by name, whitespace-only ones dropped.

    Raises GptlabError when nothing matches, a file is not UTF-8 (naming the byte offset), or
    all files are empty.
    """
    folder = Path(folder)
    paths = corpus_files(folder, pattern)
    docs = []
    for path in paths:
        text = read_text(path)
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


def text_pieces(path: str | Path, chunk_chars: int, block_bytes: int = 1 << 20) -> Iterator[tuple[str, int]]:
    """Yield ``(piece, bytes read so far)``: the UTF-8 text of ``path`` in order, cleaned (:func:`clean_text`), in pieces of
    about ``chunk_chars`` characters cut only at safe line breaks (as :func:`chunk_bounds`), read
    ``block_bytes`` at a time so a file of any size streams. GptlabError names a bad byte's offset."""
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    buf, read, at_start, held_cr = "", 0, True, ""
    with open(path, "rb") as f:
        while True:
            data = f.read(block_bytes)
            try:
                text = held_cr + decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                pending = len(e.object) - len(data)  # bytes the decoder held back from the previous block
                raise _not_utf8(path, e.object[e.start], read - pending + e.start) from None
            read += len(data)
            if at_start and text:
                text, at_start = text.removeprefix("\ufeff"), False
            held_cr = "\r" if data and text.endswith("\r") else ""  # a \r\n may straddle two blocks
            buf += text[: len(text) - len(held_cr)].replace("\r\n", "\n").replace("\r", "\n")
            start = 0
            while len(buf) - start > chunk_chars:
                cut = _SAFE_CUT.search(buf, start + chunk_chars)
                if cut is None:
                    break
                yield buf[start : cut.end()], read
                start = cut.end()
            buf = buf[start:]
            if not data:
                break
    if buf:
        yield buf, read


def in_val(text: str, seed: int, val_fraction: float) -> bool:
    """Return True when the seeded hash of ``text`` (BLAKE2b of its UTF-8 bytes keyed by
    ``seed``) puts the document in val: a ``val_fraction`` share of documents, independent of
    their order and of the other documents (the same text always lands in the same split)."""
    return hash_in_val(hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed_key(seed)), val_fraction)


def seed_key(seed: int) -> bytes:
    """Return the BLAKE2b key of the split hash for ``seed``."""
    return seed.to_bytes(8, "little", signed=True)


def hash_in_val(digest: hashlib.blake2b, val_fraction: float) -> bool:
    """Return True when a split-hash digest (see :func:`in_val`) falls in the val share."""
    return int.from_bytes(digest.digest(), "little") < int(val_fraction * 2**64)
