"""Streaming tokenization: the corpus as a sequence of small work units, encoded by a pool.

The parent only lists files and reads them in bounded pieces (:func:`plan_corpus`); each
piece becomes a *unit* that a worker process turns into token ids (:func:`encode_unit`).
:func:`encode_units` keeps at most ``2 * workers`` units in flight and hands results back in
corpus order, so the parent's memory stays flat whatever the corpus size and the shards are
the same for any number of workers.

Train/val assignment:

- ``choice`` (every matched file is a text file): today's rule, a seeded choice of
  ``round(n * val_fraction)`` documents (one document: a cut at a line break), made from the
  file listing alone;
- ``hash`` (the corpus has JSONL or parquet record streams): a seeded hash of each
  document's text (:func:`gptlab.data.corpus.in_val`), decided where the document is read.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptlab.data.corpus import (
    Document,
    _split_one,
    chunk_bounds,
    corpus_files,
    hash_in_val,
    is_blank,
    needs_cleaning,
    read_text,
    seed_key,
    text_pieces,
)
from gptlab.data.records import PARQUET_SUFFIXES, arrow_texts, is_record_file, jsonl_blobs, jsonl_texts, parquet_batches
from gptlab.errors import GptlabError
from gptlab.tokenizer import Tokenizer

TRAIN, VAL = 0, 1
SPLITS = ("train", "val")
# A unit is one of
#   ("text", [(split, piece, ends_document), ...])  pieces of text files, split decided by the parent
#   ("jsonl", file name, first line number, blob)    whole JSONL lines
#   ("arrow", file name, first row, string array)    a slice of a parquet text column
Unit = tuple
# A large corpus goes to the workers in units of about this many characters (one under 32 MiB
# in 32 units, but none under 4 * chunk_chars): few enough units that the parent's per-unit
# work stays small, small enough that the units in flight take little memory.
UNIT_CHARS = 1 << 20


@dataclass
class CorpusPlan:
    """The corpus as the parent sees it: its files, the split rule, and the work units.

    ``units`` yields ``(unit, disk_bytes)`` pairs (``disk_bytes``: how far the unit advanced
    through the files on disk, for a progress bar); ``names`` holds the document names per
    split for the ``choice`` rule (None for ``hash``); ``total_bytes`` the files' size on disk;
    ``unit_chars`` the size of a unit (characters of text, bytes of JSONL); ``cleaned`` the names
    of the text files whose byte-order mark or ``\\r`` line endings are dropped as they are read.
    """

    files: list[Path]
    rule: str
    units: Iterator[tuple[Unit, int]]
    names: tuple[list[str], list[str]] | None = None
    total_bytes: int = field(default=0)
    unit_chars: int = field(default=UNIT_CHARS)
    cleaned: list[str] = field(default_factory=list)


def plan_corpus(folder: str | Path, pattern: str, text_field: str, val_fraction: float, seed: int, chunk_chars: int) -> CorpusPlan:
    """Return the :class:`CorpusPlan` of the files of ``folder`` matching ``pattern``.

    Nothing is read yet beyond the listing and, for the ``choice`` rule, each text file's
    first non-space character (to drop blank files, as :func:`gptlab.data.corpus.read_corpus`).
    A corpus of one text document is read whole (to find the line break that cuts off val);
    every other file streams in bounded pieces (a parquet file one row group at a time).
    Raises GptlabError when nothing matches or every text file is blank.
    """
    folder = Path(folder)
    files = corpus_files(folder, pattern)
    total = sum(p.stat().st_size for p in files)
    unit_chars = max(4 * chunk_chars, min(UNIT_CHARS, total // 32))
    cleaned = [p.name for p in files if not is_record_file(p) and needs_cleaning(p)]
    if any(is_record_file(p) for p in files):
        return CorpusPlan(files, "hash", _hash_units(files, text_field, val_fraction, seed, chunk_chars, unit_chars), None, total, unit_chars, cleaned)
    docs = [p for p in files if not is_blank(p)]
    if not docs:
        raise GptlabError(f"{folder}: the corpus is empty ({len(files)} files, all blank); add text files")
    if len(docs) == 1:
        train, val = _split_one(Document(docs[0].name, read_text(docs[0])), val_fraction)
        halves = [(TRAIN, train[0].text), (VAL, val[0].text)]
        units = _batch(((s, t[a:b], b == len(t)) for s, t in halves for a, b in chunk_bounds(t, chunk_chars)), unit_chars, total)
        return CorpusPlan(files, "choice", units, ([train[0].name], [val[0].name]), total, unit_chars, cleaned)
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    chosen = set(np.random.default_rng(seed).permutation(len(docs))[:n_val].tolist())
    splits = [VAL if i in chosen else TRAIN for i in range(len(docs))]
    names = ([p.name for p, s in zip(docs, splits) if s == TRAIN], [p.name for p, s in zip(docs, splits) if s == VAL])
    return CorpusPlan(files, "choice", _text_units(list(zip(docs, splits)), chunk_chars, unit_chars), names, total, unit_chars, cleaned)


def _batch(pieces: Iterator[tuple[int, str, bool]], unit_chars: int, disk_bytes: int) -> Iterator[tuple[Unit, int]]:
    """Group in-memory pieces into text units of about ``unit_chars``; the last carries ``disk_bytes``."""
    unit, size = [], 0
    for piece in pieces:
        unit.append(piece)
        size += len(piece[1])
        if size >= unit_chars:
            yield ("text", unit), 0
            unit, size = [], 0
    yield ("text", unit), disk_bytes


def _text_units(docs: list[tuple[Path, int]], chunk_chars: int, unit_chars: int) -> Iterator[tuple[Unit, int]]:
    """Stream text files (each one document, its split given) as text units of about ``unit_chars``."""
    unit, size, advanced = [], 0, 0
    for path, split in docs:
        last = 0
        pieces = text_pieces(path, chunk_chars)
        piece, read = next(pieces, ("", 0))
        while True:
            following = next(pieces, None)
            unit.append((split, piece, following is None))
            size, advanced, last = size + len(piece), advanced + read - last, read
            if size >= unit_chars:
                yield ("text", unit), advanced
                unit, size, advanced = [], 0, 0
            if following is None:
                break
            piece, read = following
    if unit:
        yield ("text", unit), advanced


def _file_hash_split(path: Path, seed: int, val_fraction: float) -> int:
    """Return the split of a text file under the hash rule (the hash of its cleaned text: of its bytes when cleaning changes nothing)."""
    digest = hashlib.blake2b(digest_size=8, key=seed_key(seed))
    if needs_cleaning(path):
        digest.update(read_text(path).encode("utf-8"))
        return VAL if hash_in_val(digest, val_fraction) else TRAIN
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return VAL if hash_in_val(digest, val_fraction) else TRAIN


def _hash_units(files: list[Path], text_field: str, val_fraction: float, seed: int, chunk_chars: int, unit_chars: int) -> Iterator[tuple[Unit, int]]:
    for path in files:
        if str(path).endswith(PARQUET_SUFFIXES):
            size, done = path.stat().st_size, 0
            for first, array, fraction in parquet_batches(path, text_field, unit_chars):
                yield ("arrow", path.name, first, array), int(fraction * size) - done
                done = int(fraction * size)
        elif is_record_file(path):
            done = 0
            for first, blob, read in jsonl_blobs(path, unit_chars):
                yield ("jsonl", path.name, first, blob), read - done
                done = read
        elif not is_blank(path):
            yield from _text_units([(path, _file_hash_split(path, seed, val_fraction))], chunk_chars, unit_chars)


class _Slots:
    """Buffers shared with the forked workers: per unit in flight, an input region (a JSONL
    blob, ``in_bytes``) and an output region (its token ids, ``out_tokens`` uint16).

    One anonymous shared mapping made before the workers fork, so blobs and ids cross between
    processes as one memcpy each instead of a pickle through a pipe; a unit that does not fit
    falls back to the pipe.
    """

    def __init__(self, count: int, in_bytes: int, out_tokens: int):
        self.in_bytes, self.out_tokens = in_bytes, out_tokens
        self.size = in_bytes + 2 * out_tokens
        self.memory = mmap.mmap(-1, count * self.size)

    def input(self, slot: int) -> memoryview:
        return memoryview(self.memory)[slot * self.size : slot * self.size + self.in_bytes]

    def output(self, slot: int) -> np.ndarray:
        return np.frombuffer(self.memory, dtype=np.uint16, count=self.out_tokens, offset=slot * self.size + self.in_bytes)


# Set in each worker (and in the parent when it encodes alone): tokenizer, text field, seed
# key, val fraction, and the shared slots (None in the parent alone).
_STATE: tuple[Tokenizer, str, bytes, float, _Slots | None] | None = None


def _init_worker(tokenizer: Tokenizer, text_field: str, seed: int, val_fraction: float, slots: _Slots | None = None) -> None:
    global _STATE
    _STATE = (tokenizer, text_field, seed_key(seed), val_fraction, slots)


def unit_texts(unit: Unit, text_field: str, key: bytes, val_fraction: float) -> Iterator[tuple[int, str, bool, int]]:
    """Yield ``(split, text, ends_document, utf8_bytes)`` for the text of one unit, in order
    (records get their split from the seeded hash keyed by ``key``)."""
    if unit[0] == "text":
        for split, text, ends in unit[1]:
            yield split, text, ends, len(text.encode("utf-8"))
        return
    texts = jsonl_texts(unit[1], unit[2], unit[3], text_field) if unit[0] == "jsonl" else arrow_texts(unit[3])
    for text in texts:
        raw = text.encode("utf-8")
        yield (VAL if hash_in_val(hashlib.blake2b(raw, digest_size=8, key=key), val_fraction) else TRAIN), text, True, len(raw)


def encode_unit(unit: Unit, slot: int | None = None) -> tuple[np.ndarray | int, np.ndarray | int, list[int], list[int]]:
    """Encode one unit in this process; return ``(train ids, val ids, documents, utf8 bytes)``.

    The ids are uint16 arrays (each document's ids followed by ``<|endoftext|>``, in unit
    order); ``documents`` and ``bytes`` are ``[train, val]`` counts of the documents ending in
    this unit and of the text's UTF-8 bytes. With a shared ``slot`` (a worker), a JSONL unit
    whose blob is replaced by its length reads the blob from the slot's input, and ids that fit
    go to the slot's output, train then val, and come back as their counts instead of arrays.
    """
    tokenizer, text_field, key, val_fraction, slots = _STATE
    if slot is not None and unit[0] == "jsonl" and isinstance(unit[3], int):
        unit = (*unit[:3], bytes(slots.input(slot)[: unit[3]]))
    eot = np.array([tokenizer.eot_token], dtype=np.uint16)
    parts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    docs, nbytes, sizes = [0, 0], [0, 0], [0, 0]
    for split, text, ends, size in unit_texts(unit, text_field, key, val_fraction):
        ids = tokenizer.encode_array(text)
        parts[split].append(ids)
        sizes[split] += len(ids)
        nbytes[split] += size
        if ends:
            parts[split].append(eot)
            sizes[split] += 1
            docs[split] += 1
    if slot is not None and sum(sizes) <= slots.out_tokens:
        out = slots.output(slot)
        for split, start in ((TRAIN, 0), (VAL, sizes[TRAIN])):
            if parts[split]:
                np.concatenate(parts[split], out=out[start : start + sizes[split]], casting="unsafe")
        return sizes[TRAIN], sizes[VAL], docs, nbytes
    ids = [np.concatenate(p, dtype=np.uint16, casting="unsafe") if p else np.zeros(0, dtype=np.uint16) for p in parts]
    return ids[TRAIN], ids[VAL], docs, nbytes


def encode_units(
    units: Iterator[tuple[Unit, int]], tokenizer: Tokenizer, text_field: str, seed: int, val_fraction: float, workers: int, unit_bytes: int = UNIT_CHARS
) -> Iterator[tuple[tuple[np.ndarray, np.ndarray, list[int], list[int]], int]]:
    """Yield ``(encode_unit result, disk_bytes)`` for every unit, in order, ids as uint16 arrays.

    ``workers`` forked processes encode (1: this process alone); at most ``2 * workers``
    units are read ahead, so memory stays bounded by a few units. With workers, JSONL blobs
    of up to ``2 * unit_bytes`` and ids of up to ``2 * unit_bytes`` tokens travel through
    shared memory, and the arrays yielded may view it: they are valid until the next item is
    asked for (copy them to keep them).
    """
    if workers <= 1:
        _init_worker(tokenizer, text_field, seed, val_fraction)
        for unit, advanced in units:
            yield encode_unit(unit), advanced
        return
    depth = 2 * workers
    slots = _Slots(depth, 2 * unit_bytes, 2 * unit_bytes)
    ctx = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(tokenizer, text_field, seed, val_fraction, slots))
    pending: deque = deque()
    free = list(range(depth))

    def oldest() -> Iterator[tuple[tuple[np.ndarray, np.ndarray, list[int], list[int]], int]]:
        """Yield the oldest pending unit's result (ids in its slot viewed as arrays), then free the slot."""
        future, advanced, slot = pending.popleft()
        train, val, docs, nbytes = future.result()
        if isinstance(train, int):
            out = slots.output(slot)
            train, val = out[:train], out[train : train + val]
        yield (train, val, docs, nbytes), advanced
        free.append(slot)

    try:
        for unit, advanced in units:
            slot = free.pop()
            if unit[0] == "jsonl" and len(unit[3]) <= slots.in_bytes:
                slots.input(slot)[: len(unit[3])] = unit[3]
                unit = (*unit[:3], len(unit[3]))
            pending.append((pool.submit(encode_unit, unit, slot), advanced, slot))
            if len(pending) >= depth:
                yield from oldest()
        while pending:
            yield from oldest()
    finally:
        pool.shutdown(cancel_futures=True)
