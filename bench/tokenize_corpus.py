"""Tokenize throughput: the tokenize stage's parallel encoder against single-thread tiktoken.

Both run in this process on the same text (default: the corpus the download stage fetched),
best of --repeat runs each. Prints `name: value` lines; the target is
`parallel_vs_single_thread >= 1.7` on a 2-core machine.

    python bench/tokenize_corpus.py [--corpus data/raw/corpus] [--glob '*.txt'] [--workers 0] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GPTLAB_QUIET", "1")

from gptlab.data.corpus import read_corpus
from gptlab.data.tokenize import encode_documents, tokenize_corpus
from gptlab.io import write_json
from gptlab.params import TokenizeParams
from gptlab.tokenizer import gpt2


def best_of(repeat: int, fn) -> float:
    """Return the fastest wall time of ``repeat`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/raw/corpus")
    ap.add_argument("--glob", default="*.txt")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default="metrics/bench_tokenize.json", help="also write the figures here ('' to skip)")
    args = ap.parse_args()
    if not Path(args.corpus).is_dir():
        print(f"{args.corpus}: missing; run `dvc repro download` first (or pass --corpus DIR)", file=sys.stderr)
        return 2

    docs = read_corpus(args.corpus, args.glob)
    enc = gpt2()
    tokens = sum(len(enc.encode_ordinary(d.text)) + 1 for d in docs)
    single = best_of(args.repeat, lambda: [enc.encode_ordinary(d.text) for d in docs])
    parallel = best_of(args.repeat, lambda: list(encode_documents(docs, enc, args.workers)))
    with tempfile.TemporaryDirectory() as tmp:
        params = TokenizeParams(corpus_glob=args.glob, workers=args.workers)
        stage = best_of(args.repeat, lambda: tokenize_corpus(params, args.corpus, Path(tmp) / "shards", seed=0))

    figures = {
        "documents": len(docs),
        "tokens": tokens,
        "cpu_cores": os.cpu_count(),
        "single_thread_tokens_per_s": round(tokens / single),
        "parallel_tokens_per_s": round(tokens / parallel),
        "stage_tokens_per_s": round(tokens / stage),
        "parallel_vs_single_thread": round(single / parallel, 2),
        "stage_vs_single_thread": round(single / stage, 2),
    }
    for name, value in figures.items():
        print(f"{name}: {value}")
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
