"""The tokenize stage: corpus text files to train/val token shards.

Each file is a document, followed by ``<|endoftext|>``. Documents go to train or val by a
seeded choice. Encoding runs in worker processes over chunks of the text cut where the
GPT-2 pre-tokenizer always cuts (a newline between two non-space characters), so the ids are
exactly those of encoding each document whole.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken

from gptlab.data.shards import MAX_VOCAB, ShardWriter
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, write_json
from gptlab.params import TokenizeParams
from gptlab.progress import progress
from gptlab.tokenizer import SimpleTokenizer, Tokenizer, gpt2

# A newline with non-space on both sides ends one pre-token and starts another for the GPT-2
# pattern (and SimpleTokenizer's): no token spans it, so cutting just after it is exact.
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


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

    A corpus of one document is cut in two at a line break near ``1 - val_fraction`` of its text.
    Both lists keep corpus order.
    """
    if len(docs) == 1:
        text = docs[0].text
        target = int(len(text) * (1 - val_fraction))
        cuts = [m.end() for m in _SAFE_CUT.finditer(text)]
        if not cuts:
            raise GptlabError(f"{docs[0].name}: one document with no line break to split train from val; add documents")
        cut = min(cuts, key=lambda c: abs(c - target))
        return [Document(docs[0].name, text[:cut])], [Document(docs[0].name + "#val", text[cut:])]
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    chosen = set(np.random.default_rng(seed).permutation(len(docs))[:n_val].tolist())
    return [d for i, d in enumerate(docs) if i not in chosen], [d for i, d in enumerate(docs) if i in chosen]


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


# Set before the worker processes fork, so they read the text and tokenizer from inherited
# memory and only (doc, start, end) triples and the resulting ids cross process boundaries.
_WORKER_STATE: tuple[Tokenizer, list[str]] | None = None


def encode_ordinary_array(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Return ``tokenizer.encode_ordinary(text)`` as a uint16 array of shape (tokens,).

    For tiktoken it takes the numpy fast path (no Python list of ints); special-token text
    stays ordinary text either way.
    """
    if isinstance(tokenizer, tiktoken.Encoding):
        ids = tokenizer.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        return ids.astype(np.uint16)
    return np.asarray(tokenizer.encode_ordinary(text), dtype=np.uint16)


def _encode_group(spans: list[tuple[int, int, int]]) -> list[np.ndarray]:
    tokenizer, texts = _WORKER_STATE
    return [encode_ordinary_array(tokenizer, texts[doc][start:end]) for doc, start, end in spans]


def _balanced_groups(spans: list[tuple[int, int, int]], n: int) -> list[list[tuple[int, int, int]]]:
    """Cut ``spans`` into ``n`` contiguous groups of about equal characters (some may be empty)."""
    total = sum(end - start for _, start, end in spans)
    groups: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    done = 0
    for span in spans:
        groups[min(n - 1, done * n // max(total, 1))].append(span)
        done += span[2] - span[1]
    return groups


def encode_documents(docs: Sequence[Document], tokenizer: Tokenizer, workers: int = 0, chunk_chars: int = 1 << 16) -> Iterator[np.ndarray]:
    """Yield, for each document in order, its token ids followed by ``<|endoftext|>`` (uint16 arrays).

    The text is cut into spans of about ``chunk_chars`` characters at safe line breaks; the
    spans are dealt into ``workers`` contiguous groups of equal size (0: one per CPU core).
    ``workers - 1`` forked processes encode one group each (reading the inherited text) while
    this process encodes the last, so no core waits on a dispatcher.
    """
    global _WORKER_STATE
    if tokenizer.n_vocab > MAX_VOCAB:
        raise GptlabError(f"tokenizer {getattr(tokenizer, 'name', '?')} has {tokenizer.n_vocab} ids; uint16 shards hold at most {MAX_VOCAB}")
    workers = workers or os.cpu_count() or 1
    spans = [(i, a, b) for i, d in enumerate(docs) for a, b in chunk_bounds(d.text, chunk_chars)]
    groups = _balanced_groups(spans, workers)
    eot = np.array([tokenizer.eot_token], dtype=np.uint16)
    _WORKER_STATE = (tokenizer, [d.text for d in docs])
    pool = ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("fork")) if workers > 1 else None
    try:
        futures = [pool.submit(_encode_group, g) for g in groups[:-1]] if pool else []
        with progress(total=len(groups), unit="part", desc="tokenize", leave=False) as bar:
            own = _encode_group(groups[-1])
            bar.update(1)
            results = []
            for future in futures:
                results.extend(future.result())
                bar.update(1)
            results.extend(own)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        _WORKER_STATE = None
    current, parts = 0, []
    for (doc, _, _), ids in zip(spans, results):
        if doc != current:
            yield np.concatenate(parts + [eot])
            current, parts = doc, []
        parts.append(ids)
    yield np.concatenate(parts + [eot])


def build_tokenizer(kind: str, train_docs: Sequence[Document]) -> Tokenizer:
    """Return the tokenizer ``kind`` names: GPT-2 BPE, or a SimpleTokenizer built from ``train_docs``."""
    if kind == "gpt2":
        return gpt2()
    return SimpleTokenizer.train((d.text for d in train_docs), max_size=MAX_VOCAB)


def tokenize_corpus(params: TokenizeParams, corpus_dir: str | Path, out_dir: str | Path, seed: int, metrics_path: str | Path | None = None) -> dict:
    """Encode the corpus into ``out_dir/{train,val}-NNNNN.bin`` plus ``meta.json``; return the summary.

    The summary (also written to ``metrics_path``) holds documents, tokens and UTF-8 bytes per
    split, vocab size, workers, seconds and tokens/s. ``out_dir`` is replaced only on success.
    """
    start = time.perf_counter()
    docs = read_corpus(corpus_dir, params.corpus_glob)
    train, val = split_documents(docs, params.val_fraction, seed)
    tokenizer = build_tokenizer(params.tokenizer, train)
    workers = params.workers or os.cpu_count() or 1
    meta: dict = {"format_version": 1, "dtype": "uint16", "tokenizer": "gpt2" if params.tokenizer == "gpt2" else "tokenizer.json",
                  "vocab_size": tokenizer.n_vocab, "eot_token": tokenizer.eot_token, "splits": {}}  # fmt: skip
    with atomic_dir(out_dir) as tmp:
        if isinstance(tokenizer, SimpleTokenizer):
            tokenizer.save(tmp / "tokenizer.json")
        for split, split_docs in (("train", train), ("val", val)):
            writer = ShardWriter(tmp, split, params.shard_tokens, tokenizer.n_vocab, tokenizer.eot_token)
            for ids in encode_documents(split_docs, tokenizer, workers, params.chunk_chars):
                writer.write(ids)
            paths = writer.close()
            meta["splits"][split] = {
                "documents": [d.name for d in split_docs],
                "tokens": writer.tokens,
                "bytes": sum(len(d.text.encode("utf-8")) for d in split_docs),
                "shards": [p.name for p in paths],
            }
        write_json(tmp / "meta.json", meta)
    seconds = time.perf_counter() - start
    splits = meta["splits"]
    total = sum(s["tokens"] for s in splits.values())
    summary = {
        "tokenizer": params.tokenizer,
        "vocab_size": tokenizer.n_vocab,
        "documents": {k: len(v["documents"]) for k, v in splits.items()},
        "tokens": {k: v["tokens"] for k, v in splits.items()},
        "bytes": {k: v["bytes"] for k, v in splits.items()},
        "shards": {k: len(v["shards"]) for k, v in splits.items()},
        "workers": workers,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(total / seconds, 1),
    }
    if metrics_path is not None:
        write_json(metrics_path, summary)
    return summary
