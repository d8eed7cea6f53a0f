"""Streaming tokenize: memory stays flat whatever the corpus size; throughput against one tiktoken thread.

The bench writes a synthetic English-like corpus (random lines of Zipf-distributed words, in
documents of 2-20 KB) of each size into a temporary folder, runs the tokenize stage on it in
a child process, and samples the memory of that process and its workers. Figures per size:
the stage's tokens/s, peak RSS summed over the stage's processes (sampled every 0.1 s; shared
pages count once per process, so this overstates), peak PSS summed (shared pages split; every
2 s), and the high-water RSS of the stage process (VmHWM) and of its largest worker
(getrusage). The baseline, one tiktoken thread encoding a sample of the same corpus, is
measured in the same run, just before and just after each stage run (their mean is the
baseline: other users of a shared machine move both). The stage runs ``--repeats`` times per
size; the ratio reported is the median of the runs' ratios (each run against its own
baseline), with every run's ratio beside it. The ceiling, ``independent_processes_vs_one``,
is what one plain tiktoken process per core reaches together against one alone, measured
just after: the most any parallel stage could show at that time. Targets on a 2-core
machine: ``peak_rss_mb <= 1024`` at every size and ``stage_vs_single_thread >= 1.7``.

    python bench/tokenize_stream.py [--sizes 0.5,2] [--repeats 3] [--format jsonl.zst|txt|parquet] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

os.environ.setdefault("GPTLAB_QUIET", "1")

from gptlab.io import write_json
from gptlab.tokenizer import gpt2

FILE_BYTES = 256 << 20  # the corpus is cut into files of about this size (text files: 16 MiB)

STAGE = """
import json, resource, sys
from gptlab.data.tokenize import tokenize_corpus
from gptlab.params import TokenizeParams
s = tokenize_corpus(TokenizeParams(corpus_glob=sys.argv[2], workers=int(sys.argv[4])), sys.argv[1], sys.argv[3], seed=0)
# VmHWM, not RUSAGE_SELF: Linux carries ru_maxrss across exec, so it would report the bench's own peak
s["self_maxrss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
s["workers_maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(s))
"""


def line_pool(rng: np.random.Generator, n_lines: int = 50_000) -> list[str]:
    """Return ``n_lines`` English-like lines: 4-16 words drawn from a Zipf law over 20,000 pseudo-words."""
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    freq = 1 / np.arange(1, 27) ** 0.9
    words = ["".join(rng.choice(letters, size=rng.integers(1, 10), p=freq / freq.sum())) for _ in range(20_000)]
    zipf = 1 / np.arange(1, len(words) + 1)
    idx = rng.choice(len(words), size=n_lines * 16, p=zipf / zipf.sum())
    lines, k = [], 0
    for n in rng.integers(4, 17, size=n_lines):
        line = " ".join(words[i] for i in idx[k : k + n])
        lines.append(line[0].upper() + line[1:] + rng.choice([".", ",", ";", "!", "?"]) + "\n")
        k += n
    return lines


def documents(rng: np.random.Generator, lines: list[str], total_bytes: int):
    """Yield documents (2-20 KB of random pool lines) until ``total_bytes`` are written."""
    done = 0
    while done < total_bytes:
        text = "".join(lines[i] for i in rng.integers(0, len(lines), size=int(rng.integers(30, 300))))
        done += len(text)
        yield text


def write_corpus(folder: Path, fmt: str, total_bytes: int, seed: int = 0) -> int:
    """Write about ``total_bytes`` of text as ``fmt`` files into ``folder``; return the text bytes written."""
    rng = np.random.default_rng(seed)
    lines = line_pool(rng)
    folder.mkdir(parents=True)
    written, part, batch, batch_bytes = 0, 0, [], 0

    def flush() -> None:
        nonlocal part, batch, batch_bytes
        path = folder / f"part-{part:04d}.{fmt}"
        if fmt == "txt":  # each file one document of many
            path.write_text("".join(batch))
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"text": batch}), path, row_group_size=2048)
        else:
            import zstandard

            with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(raw) as out:
                for doc in batch:
                    out.write((json.dumps({"text": doc}) + "\n").encode())
        part, batch, batch_bytes = part + 1, [], 0

    for doc in documents(rng, lines, total_bytes):
        batch.append(doc)
        batch_bytes += len(doc)
        written += len(doc)
        if batch_bytes >= (FILE_BYTES // 16 if fmt == "txt" else FILE_BYTES):
            flush()
    if batch:
        flush()
    return written


def sample_texts(folder: Path, fmt: str, max_bytes: int) -> list[str]:
    """Return the first documents of the corpus, about ``max_bytes`` of text."""
    from gptlab.data.corpus import read_text
    from gptlab.data.records import iter_record_texts

    texts, size = [], 0
    for path in sorted(folder.glob(f"*.{fmt}")):
        for text in [read_text(path)] if fmt == "txt" else iter_record_texts(path, "text"):
            texts.append(text)
            size += len(text)
            if size >= max_bytes:
                return texts
    return texts


def single_thread_tokens_per_s(texts: list[str]) -> float:
    """Return one tiktoken thread's tokens/s on ``texts``: the faster of encode_ordinary and the numpy path."""
    enc = gpt2()
    tokens = sum(len(enc.encode_ordinary(t)) + 1 for t in texts)
    best = float("inf")
    for fn in (enc.encode_ordinary, lambda t: enc.encode_to_numpy(t, allowed_special=set(), disallowed_special=())):
        start = time.perf_counter()
        for t in texts:
            fn(t)
        best = min(best, time.perf_counter() - start)
    return tokens / best


def _encode_for(texts: list[str], seconds: float) -> float:
    """Encode ``texts`` round-robin for about ``seconds``; return tokens/s."""
    enc, n, i = gpt2(), 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += len(enc.encode_to_numpy(texts[i % len(texts)], allowed_special=set(), disallowed_special=()))
        i += 1
    return n / (time.perf_counter() - start)


def parallel_ceiling(texts: list[str], seconds: float = 4.0) -> float:
    """Return what ``cpu_count`` independent tiktoken processes achieve together against one:
    the most any parallel tokenizer can reach on this machine right now (other users count)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    n = os.cpu_count() or 1
    one = _encode_for(texts, seconds)
    with ProcessPoolExecutor(n, mp_context=get_context("fork")) as pool:
        together = sum(pool.map(_encode_for, [texts] * n, [seconds] * n))
    return together / ((one + _encode_for(texts, seconds)) / 2)


def run_stage(corpus: Path, fmt: str, out: Path, workers: int) -> dict:
    """Run the tokenize stage in a child process; return its summary plus memory figures (MB)."""
    cmd = [sys.executable, "-c", STAGE, str(corpus), f"*.{fmt}", str(out), str(workers)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak_rss = peak_pss = tick = 0
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            peak_rss = max(peak_rss, sum(p.memory_info().rss for p in procs))
            if tick % 20 == 0:  # PSS reads smaps: costlier, so every 2 s
                peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in procs))
        except psutil.Error:
            pass
        tick += 1
        time.sleep(0.1)  # the sampling takes CPU from the stage on a 2-core machine: keep it rare
    stdout = proc.communicate()[0]
    if proc.returncode != 0:
        raise SystemExit(f"tokenize stage failed (exit {proc.returncode})")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["wall_s"] = time.perf_counter() - start
    summary["peak_rss_mb"] = peak_rss / 2**20
    summary["peak_pss_mb"] = peak_pss / 2**20
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.5,2", help="corpus sizes in GB (text bytes), comma-separated")
    ap.add_argument("--format", default="jsonl.zst", choices=["jsonl.zst", "txt", "parquet"])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="stage runs per size (the median run's ratio is reported)")
    ap.add_argument("--baseline-mb", type=float, default=48, help="text sampled for the single-thread baseline")
    ap.add_argument("--dir", default=None, help="where to write the temporary corpus (default: the system temp dir)")
    ap.add_argument("--json", default="metrics/bench_tokenize_stream.json", help="also write the figures here ('' to skip)")
    args = ap.parse_args()

    figures: dict = {"format": args.format, "cpu_cores": os.cpu_count(), "load_average_1m_at_start": round(os.getloadavg()[0], 2), "sizes": {}}
    for gb in (float(g) for g in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="gptlab-bench-") as tmp:
            corpus = Path(tmp) / "corpus"
            start = time.perf_counter()
            text_bytes = write_corpus(corpus, args.format, int(gb * 1e9))
            print(f"{gb} GB: wrote {text_bytes:,} bytes of text as {args.format} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            sample = sample_texts(corpus, args.format, int(args.baseline_mb * 1e6))
            runs = []
            for _ in range(args.repeats):
                before = single_thread_tokens_per_s(sample)
                s = run_stage(corpus, args.format, Path(tmp) / "shards", args.workers)
                after = single_thread_tokens_per_s(sample)  # the machine is shared: measure on both sides of the stage
                runs.append((s, before, after))
                print(
                    f"{gb:g}GB run {len(runs)}: stage {sum(s['tokens'].values()) / s['seconds']:,.0f} tokens/s, single thread {before:,.0f} / {after:,.0f}",
                    file=sys.stderr,
                )
            ceiling = parallel_ceiling(sample[:200])
            del sample
        ratios = [sum(s["tokens"].values()) / s["seconds"] / ((before + after) / 2) for s, before, after in runs]
        s, before, after = runs[sorted(range(len(runs)), key=ratios.__getitem__)[len(runs) // 2]]  # the median run
        tokens = sum(s["tokens"].values())
        stage_tps = tokens / s["seconds"]
        figures["sizes"][f"{gb:g}GB"] = {
            "text_bytes": text_bytes,
            "documents": sum(s["documents"].values()),
            "tokens": tokens,
            "workers": s["workers"],
            "single_thread_tokens_per_s": round((before + after) / 2),
            "single_thread_before_after": [round(before), round(after)],
            "stage_tokens_per_s": round(stage_tps),
            "stage_vs_single_thread": round(stage_tps / ((before + after) / 2), 2),
            "stage_vs_single_thread_runs": [round(r, 2) for r in ratios],
            "independent_processes_vs_one": round(ceiling, 2),
            "stage_seconds": round(s["seconds"], 1),
            "peak_rss_mb": round(max(r[0]["peak_rss_mb"] for r in runs)),
            "peak_pss_mb": round(max(r[0]["peak_pss_mb"] for r in runs)),
            "stage_process_maxrss_mb": round(max(r[0]["self_maxrss_mb"] for r in runs)),
            "largest_worker_maxrss_mb": round(max(r[0]["workers_maxrss_mb"] for r in runs)),
        }
        for name, value in figures["sizes"][f"{gb:g}GB"].items():
            print(f"{gb:g}GB {name}: {value}")
    figures["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    figures["bench_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"load_average_1m: {figures['load_average_1m_at_start']} at start, {figures['load_average_1m_at_end']} at end")
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
