"""One-prompt greedy decoding: gptlab's weights (fp32, bf16, int8) x decode step (eager, compiled).

Every variant is a model prepared by :func:`gptlab.inference.prepare` from the same weights (a
gptlab folder, e.g. the pipeline's ``models/base``; or, with ``--preset``, random weights of a
preset). Each is warmed up once (the first call's seconds are the warm-up: for a compiled step,
its compilation), then the rounds alternate the variants so a noisy machine slows them alike.
Per variant it prints the median decode tokens/s (the tokens after the first, over the time
after the first), the median time to the first token, the warm-up, the ratio of decode
tokens/s to fp32 eager of the same run, and how many greedy tokens match fp32 eager's.

    python bench/decode.py --model models/base [--threads 2] [--new-tokens 64] [--rounds 5]
    python bench/decode.py --preset smollm2-135m --variants fp32:eager,int8:eager

Writes the figures to --json (default ``metrics/bench_decode.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from gptlab.checkpoint import load_model
from gptlab.config import GPTConfig
from gptlab.inference import prepare
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, stream

PROMPT = "Give three tips for staying healthy."


def load(args: argparse.Namespace) -> tuple[GPT, list[int]]:
    """A fresh fp32 model of --model (or random weights of --preset) and the prompt's ids."""
    if args.model:
        model, tok = load_model(args.model)
        return model, tok.encode(PROMPT)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset(args.preset)).eval()
    return model, list(range(1, 12))


def decode_once(model: GPT, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """Return (seconds to the first token, decode tokens/s after it, the greedy tokens)."""
    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)
    start = time.perf_counter()
    tokens, first = [], None
    for nxt, _ in stream(model, [prompt], cfg):
        tokens.append(nxt[0])
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (len(tokens) - 1) / (end - first), tokens


def main(argv: list[str] | None = None) -> dict:
    """Run the bench; return the figures it prints."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a gptlab model folder (default: random weights of --preset)")
    ap.add_argument("--preset", default="smollm2-135m", help="the preset of random weights when --model is not given")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default="fp32:eager,bf16:eager,int8:eager,fp32:compiled,bf16:compiled,int8:compiled")
    ap.add_argument("--json", default="metrics/bench_decode.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    if names[0] != "fp32:eager":
        names.insert(0, "fp32:eager")  # the baseline
    models, warmup, prompt = {}, {}, None
    for name in names:
        weights, mode = name.split(":")
        model, prompt = load(args)
        models[name] = prepare(model, weights=weights, compile=mode == "compiled")
        t = time.perf_counter()
        decode_once(models[name], prompt, args.new_tokens)
        warmup[name] = time.perf_counter() - t
        print(f"{name}: warm-up {warmup[name]:.1f} s", flush=True)
    ttft, rate, tokens = ({n: [] for n in names} for _ in range(3))
    for r in range(args.rounds):
        for name in names:
            first, tps, toks = decode_once(models[name], prompt, args.new_tokens)
            ttft[name].append(first)
            rate[name].append(tps)
            tokens[name] = toks
        print(f"round {r + 1}: " + ", ".join(f"{n} {rate[n][-1]:.1f}" for n in names), flush=True)
    base = statistics.median(rate["fp32:eager"])
    out = {"threads": args.threads, "new_tokens": args.new_tokens, "rounds": args.rounds, "model": args.model or f"random {args.preset}", "variants": {}}
    for name in names:
        same = sum(a == b for a, b in zip(tokens[name], tokens["fp32:eager"]))
        med = statistics.median(rate[name])
        out["variants"][name] = {
            "decode_tokens_per_s": round(med, 2),
            "ratio_to_fp32_eager": round(med / base, 3),
            "ttft_s": round(statistics.median(ttft[name]), 4),
            "warmup_s": round(warmup[name], 2),
            "greedy_tokens_equal_fp32": f"{same}/{len(tokens['fp32:eager'])}",
        }
        print(
            f"{name}: decode {med:.1f} tokens/s ({med / base:.2f}x fp32 eager), first token {statistics.median(ttft[name]) * 1e3:.0f} ms, "
            f"warm-up {warmup[name]:.1f} s, greedy tokens equal to fp32 eager {same}/{len(tokens['fp32:eager'])}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
