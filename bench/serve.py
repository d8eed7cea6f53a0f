"""`gptlab serve` under concurrent clients: aggregate tokens/s of N clients at once against one at a time.

Starts the real server (``python -m gptlab.cli serve --max-batch M --threads T``) on 127.0.0.1 and
sends greedy ``/v1/completions`` requests (``--max-tokens`` each, distinct prompts):

- ``sequential``: the N requests one after another (each client waits for the previous one): the baseline;
- ``concurrent``: the N requests at once from N threads (the server batches them);
- ``steady`` (with ``--steady K``): N threads each sending K requests back to back, of lengths
  varying from ``max_tokens / 2`` to ``max_tokens``, so requests end and arrive while others
  run (rows join running batches), against the same N x K requests one at a time.

Aggregate tokens/s = completion tokens (from ``usage``) / wall time of the whole set. The two
sides alternate for ``--rounds`` rounds on the same server; the medians and their ratio
(concurrent / sequential, > 1: batching pays) are printed as ``name: value`` lines and written to
--json. Without --model a tiny random GPT-2-shaped model (4 layers x 128, GPT-2's vocabulary) is
written to a temporary folder.

    python bench/serve.py [--model models/finetuned] [--clients 8] [--max-tokens 64] [--rounds 3] [--threads 2] [--steady 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["a lighthouse", "the sea", "a red fox", "winter", "a market", "the moon", "an old clock", "a river", "a library", "the wind"]


def tiny_model(folder: Path) -> Path:
    """Write a tiny random GPT-2-shaped checkpoint (GPT-2's tokenizer) to ``folder``; return it."""
    import torch

    from gptlab.checkpoint import save_model
    from gptlab.config import GPTConfig
    from gptlab.model import GPT

    torch.manual_seed(0)
    return save_model(folder / "tiny", GPT(GPTConfig(vocab_size=50257, context_length=256, emb_dim=128, n_heads=4, n_layers=4)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_batch: int, threads: int) -> subprocess.Popen:
    """Start `gptlab serve` on 127.0.0.1:``port``; return the process once it answers."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "gptlab.cli", "serve", "--model", str(model), "--port", str(port)]
    cmd += ["--threads", str(threads), "--max-batch", str(max_batch), "--name", "bench"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gptlab serve exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("gptlab serve did not start within 120 s")


def steady(base: str, clients: int, per_client: int, max_tokens: int) -> tuple[float, float]:
    """Return the aggregate tokens/s of ``clients`` threads sending ``per_client`` requests each back to back
    (lengths from ``max_tokens // 2`` to ``max_tokens``), and of the same requests one at a time."""
    lengths = [max_tokens // 2 + (7 * k) % (max_tokens - max_tokens // 2 + 1) for k in range(clients * per_client)]
    counts = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def one(c: int) -> None:
        with httpx.Client() as client:
            barrier.wait()
            counts[c] = sum(complete(client, base, c * per_client + k, lengths[c * per_client + k]) for k in range(per_client))

    threads = [threading.Thread(target=one, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    together = sum(counts) / (time.perf_counter() - start)
    with httpx.Client() as client:
        start = time.perf_counter()
        tokens = sum(complete(client, base, k, n) for k, n in enumerate(lengths))
        alone = tokens / (time.perf_counter() - start)
    return together, alone


def complete(client: httpx.Client, base: str, i: int, max_tokens: int) -> int:
    """Send request ``i`` (greedy, ``max_tokens``); return its completion tokens."""
    body = {"model": "bench", "prompt": f"Request {i}: a short story about {TOPICS[i % len(TOPICS)]}.", "max_tokens": max_tokens, "temperature": 0}
    r = client.post(f"{base}/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def sequential(base: str, clients: int, max_tokens: int) -> float:
    """Return the aggregate tokens/s of ``clients`` requests sent one after another."""
    with httpx.Client() as client:
        start = time.perf_counter()
        tokens = sum(complete(client, base, i, max_tokens) for i in range(clients))
        return tokens / (time.perf_counter() - start)


def concurrent(base: str, clients: int, max_tokens: int) -> float:
    """Return the aggregate tokens/s of ``clients`` requests sent at once, one thread each."""
    counts = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def one(i: int) -> None:
        with httpx.Client() as client:
            barrier.wait()
            counts[i] = complete(client, base, i, max_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a model folder (default: a tiny random GPT-2-shaped model)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    ap.add_argument("--steady", type=int, default=0, metavar="K", help="also the steady-load figure: each client sends K requests back to back")
    ap.add_argument("--json", default=None, help="write the figures here (e.g. metrics/bench_serve.json)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else tiny_model(Path(tmp))
        port = free_port()
        proc = start_server(model, port, args.max_batch, args.threads)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client() as client:  # warm-up: first-call costs out of the figures
                complete(client, base, 0, 4)
            seq, conc = [], []
            for r in range(args.rounds):
                seq.append(sequential(base, args.clients, args.max_tokens))
                conc.append(concurrent(base, args.clients, args.max_tokens))
                print(f"round {r + 1}: sequential {seq[-1]:.1f} tokens/s, {args.clients} concurrent {conc[-1]:.1f} tokens/s, ratio {conc[-1] / seq[-1]:.2f}x")
            if args.steady:
                together, alone = steady(base, args.clients, args.steady, args.max_tokens)
                print(
                    f"steady: {args.clients} clients x {args.steady} requests {together:.1f} tokens/s, one at a time {alone:.1f}, ratio {together / alone:.2f}x"
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    figures = {
        "model": args.model or "tiny random (4 x 128, GPT-2 vocab)",
        "clients": args.clients,
        "max_batch": args.max_batch,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "sequential_tokens_per_s": round(statistics.median(seq), 1),
        "concurrent_tokens_per_s": round(statistics.median(conc), 1),
        "concurrent_over_sequential": round(statistics.median(conc) / statistics.median(seq), 2),
        "ratios_per_round": [round(c / s, 2) for c, s in zip(conc, seq)],
    }
    if args.steady:
        figures.update(steady_requests_per_client=args.steady, steady_tokens_per_s=round(together, 1), steady_over_sequential=round(together / alone, 2))
    for k, v in figures.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
