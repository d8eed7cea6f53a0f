"""The tokenize stage: corpus documents -> train/val token shards, ``meta.json`` and metrics.

Documents stream from text, JSONL and parquet files (:mod:`gptlab.data.stream`: read in
bounded pieces, split train/val, cut at safe line breaks); each is encoded followed by
``<|endoftext|>``. Encoding runs in worker processes over the pieces, so the ids are exactly
those of encoding each document whole, and shards roll over every ``shard_tokens`` tokens.
:func:`encode_documents` is the in-memory form for documents already read.

Outputs are split by kind: ``meta.json`` beside the shards holds the provenance (tokenizer,
document names per split, shard files with their token counts and CRC-32), the metrics file
only comparable figures (documents, tokens and UTF-8 bytes per split, tokens/s).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from gptlab.data.corpus import Document, chunk_bounds
from gptlab.data.shards import MAX_VOCAB, ShardWriter, read_header
from gptlab.data.stream import SPLITS, TRAIN, encode_units, plan_corpus, seed_key, unit_texts
from gptlab.data.vocab import byte_tokenizer, train_bpe
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, write_json
from gptlab.params import TokenizeParams
from gptlab.progress import progress
from gptlab.tokenizer import SimpleTokenizer, Tokenizer, gpt2

# Set before the worker processes fork, so they read the text and tokenizer from inherited
# memory and only (doc, start, end) triples and the resulting ids cross process boundaries.
_WORKER_STATE: tuple[Tokenizer, list[str]] | None = None


def _check_fits(tokenizer: Tokenizer) -> None:
    """Raise GptlabError when ``tokenizer``'s ids do not fit uint16 shards."""
    if tokenizer.n_vocab > MAX_VOCAB:
        raise GptlabError(f"tokenizer {tokenizer.name} has {tokenizer.n_vocab} ids; uint16 shards hold at most {MAX_VOCAB}")


def _encode_group(spans: list[tuple[int, int, int]]) -> list[np.ndarray]:
    tokenizer, texts = _WORKER_STATE
    return [tokenizer.encode_array(texts[doc][start:end]).astype(np.uint16) for doc, start, end in spans]


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
    _check_fits(tokenizer)
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


TRAINED = ("bpe", "simple")  # tokenizers learnt from the train split


def build_tokenizer(kind: str, train_texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Return the tokenizer ``kind`` names: ``gpt2`` (tiktoken), ``char`` (bytes), ``bpe`` (a
    byte-level BPE of ``vocab_size`` ids) or ``simple`` (word-level), the last two learnt from
    ``train_texts`` (read only for those)."""
    if kind == "gpt2":
        return gpt2()
    if kind == "char":
        return byte_tokenizer()
    if kind == "bpe":
        return train_bpe(train_texts, vocab_size)
    return SimpleTokenizer.train(train_texts, max_size=MAX_VOCAB)


def short_vocab_warning(asked: int, got: int) -> str:
    """The one stderr line for a BPE that learnt fewer ids (``got``) than ``tokenize.vocab_size`` (``asked``): why, and the fix."""
    return (
        f"tokenize: warning: tokenize.vocab_size={asked} but the BPE learnt {got:,} ids: it ran out of merges (every word of the train split "
        f"is already one token); the shards and the model use {got:,}. Set tokenize.vocab_size: {got} to say so, or use a larger corpus"
    )


def _train_texts(params: TokenizeParams, corpus_dir: str | Path, seed: int) -> Iterator[str]:
    """Yield the train split's text, piece by piece, streamed from the corpus (for a trained vocabulary)."""
    plan = plan_corpus(corpus_dir, params.corpus_glob, params.text_field, params.val_fraction, seed, params.chunk_chars)
    key = seed_key(seed)
    for unit, _ in plan.units:
        yield from (text for split, text, *_ in unit_texts(unit, params.text_field, key, params.val_fraction) if split == TRAIN)


def tokenize_corpus(params: TokenizeParams, corpus_dir: str | Path, out_dir: str | Path, seed: int, metrics_path: str | Path | None = None) -> dict:
    """Encode the corpus into ``out_dir/{train,val}-NNNNN.bin`` plus ``meta.json``; return the summary.

    The corpus streams through (see :mod:`gptlab.data.stream`): memory stays flat whatever
    its size. The summary holds, per split, ``tokens`` (count) and ``vocab_size`` (the ids the tokenizer
    really has: a BPE that runs out of merges stops short of ``params.vocab_size``, which one
    stderr line says): exactly what goes to
    ``metrics_path`` (comparable figures only); it adds ``tokens_per_s`` (the machine's, not the
    params': printed, never compared), per split ``documents`` and
    ``bytes`` (UTF-8 bytes of the text) and, for the caller's messages, ``tokenizer``, ``shards`` (files per split), ``workers``, ``split_rule`` and ``seconds``.
    ``meta.json`` holds the provenance: tokenizer, vocab size, end-of-text id, per split the
    document names (a count under the ``hash`` split rule of record streams), tokens, bytes
    and shard names, and ``files``: per shard file its split, tokens and ``crc32`` (verified
    when the shards are opened). ``out_dir`` is replaced only on success.
    """
    start = time.perf_counter()
    plan = plan_corpus(corpus_dir, params.corpus_glob, params.text_field, params.val_fraction, seed, params.chunk_chars)
    if plan.cleaned:
        print(
            f"tokenize: normalised {len(plan.cleaned)} of {len(plan.files)} files (a leading byte-order mark dropped, \\r\\n and \\r line endings "
            f"made \\n; e.g. {plan.cleaned[0]})",
            file=sys.stderr,
        )
    train_texts = _train_texts(params, corpus_dir, seed) if params.tokenizer in TRAINED else ()
    tokenizer = build_tokenizer(params.tokenizer, train_texts, params.vocab_size)
    _check_fits(tokenizer)
    if params.tokenizer == "bpe" and tokenizer.n_vocab < params.vocab_size:
        print(short_vocab_warning(params.vocab_size, tokenizer.n_vocab), file=sys.stderr)
    workers = params.workers or os.cpu_count() or 1
    meta: dict = {"format_version": 1, "dtype": "uint16", "tokenizer": "gpt2" if params.tokenizer == "gpt2" else "tokenizer.json",
                  "vocab_size": tokenizer.n_vocab, "eot_token": tokenizer.eot_token, "splits": {}, "files": {}}  # fmt: skip
    docs, nbytes = [0, 0], [0, 0]
    with atomic_dir(out_dir) as tmp:
        if params.tokenizer != "gpt2":
            tokenizer.save(tmp / "tokenizer.json")
        writers = [ShardWriter(tmp, split, params.shard_tokens, tokenizer.n_vocab, tokenizer.eot_token) for split in SPLITS]
        results = encode_units(plan.units, tokenizer, params.text_field, seed, params.val_fraction, workers, plan.unit_chars)
        with progress(total=plan.total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenize", leave=False) as bar:
            for (*ids, unit_docs, unit_bytes), advanced in results:
                for i, writer in enumerate(writers):
                    if len(ids[i]):
                        writer.write(ids[i])
                    docs[i] += unit_docs[i]
                    nbytes[i] += unit_bytes[i]
                bar.update(advanced)
        for i, (split, writer) in enumerate(zip(SPLITS, writers)):
            if not writer.tokens:
                raise GptlabError(
                    f"{corpus_dir}: the {split} split is empty ({docs[1 - i]} documents all went to the other); add documents or change tokenize.val_fraction"
                )
            paths = writer.close()
            meta["splits"][split] = {
                "documents": plan.names[i] if plan.names else docs[i],
                "tokens": writer.tokens,
                "bytes": nbytes[i],
                "shards": [p.name for p in paths],
            }
            for path, crc in zip(paths, writer.checksums):
                meta["files"][path.name] = {"split": split, "tokens": read_header(path)["n_tokens"], "crc32": crc}
        if plan.rule == "hash":
            meta["split_rule"] = {"rule": "hash", "seed": seed, "val_fraction": params.val_fraction, "sources": [p.name for p in plan.files]}
        write_json(tmp / "meta.json", meta)
    seconds = time.perf_counter() - start
    splits = meta["splits"]
    total = sum(s["tokens"] for s in splits.values())
    metrics = {  # the figures worth comparing (documents are the data's, in meta.json)
        "tokens": {k: v["tokens"] for k, v in splits.items()},
        "vocab_size": tokenizer.n_vocab,
    }
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return {
        **metrics,
        "tokens_per_s": round(total / seconds, 1),
        "documents": dict(zip(SPLITS, docs)),
        "bytes": {k: v["bytes"] for k, v in splits.items()},
        "tokenizer": params.tokenizer,
        "shards": {k: len(v["shards"]) for k, v in splits.items()},
        "workers": workers,
        "split_rule": plan.rule,
        "seconds": round(seconds, 3),
    }
