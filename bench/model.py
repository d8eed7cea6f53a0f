"""gptlab's GPT against transformers' GPT2LMHeadModel: same weights, same dtype, same run.

For each shape (``124M``: the gpt2-124M preset at batch 4 x seq 256; ``small``: the
gpt-mini preset, the default pretraining config, at batch 8 x seq 256) it measures, alternating the two implementations
and taking the best time of each (this machine is a shared VM; the minimum is the least noisy
estimate of what the code costs):

- ``train_step``: forward + backward + AdamW step, tokens/s, gptlab over transformers;
- ``generate_cached``: greedy generation of --new-tokens tokens (at most what the context
  holds after a 16-token prompt) with the KV cache, gptlab
  over transformers ``generate(do_sample=False)`` with its cache;
- ``generate_cache_speedup`` (124M): gptlab with its cache over gptlab without;
- with --bf16 (where the CPU or GPU supports it): training under bf16 autocast and generation
  with bf16 weights, for both, reported separately as ``*_bf16``;
- with --compile: the training step of both models under ``torch.compile`` (``*_compiled``).

Prints ``name: ratio`` lines (>1 means gptlab is faster) and writes them to --json.

    python bench/model.py [--shapes 124M,small] [--steps 3] [--new-tokens 256] [--bf16] [--compile] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import transformers

from gptlab.config import GPTConfig
from gptlab.convert.hf import gpt_from_hf
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, generate

PROMPT_TOKENS = 16
SHAPES = {"124M": ("gpt2-124M", 4, 256), "small": ("gpt-mini", 8, 256)}  # small: the default pretraining config


def build_pair(preset: str, device: str) -> tuple[GPT, torch.nn.Module]:
    """Return (gptlab model, transformers model) holding the same random weights."""
    c = GPTConfig.preset(preset)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.context_length,
            n_embd=c.emb_dim,
            n_layer=c.n_layers,
            n_head=c.n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=50256,
            eos_token_id=50256,
        )  # fmt: skip
    )
    ours = gpt_from_hf(hf.state_dict(), hf.config.to_dict())
    return ours.to(device), hf.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(device: str, bf16: bool):
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_seconds(model: torch.nn.Module, is_hf: bool, batch: int, seq: int, steps: int, device: str, bf16: bool) -> list[float]:
    """Return the wall time of each of ``steps`` training steps (after one warm-up step)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):
        idx = torch.randint(0, 50257, (batch, seq + 1), generator=g).to(device)
        sync(device)
        start = time.perf_counter()
        with autocast(device, bf16):
            if is_hf:
                loss = model(idx[:, :-1], labels=idx[:, :-1]).loss
            else:
                _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return times


def generate_seconds(model: torch.nn.Module, is_hf: bool, new_tokens: int, device: str, use_cache: bool = True) -> float:
    """Return the wall time of greedy generation of ``new_tokens`` tokens after a 16-token prompt."""
    model.eval()
    prompt = list(range(100, 100 + PROMPT_TOKENS))
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        if is_hf:
            ids = torch.tensor([prompt], device=device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, use_cache=use_cache, pad_token_id=50256, eos_token_id=None)  # fmt: skip
            assert out.shape[1] == len(prompt) + new_tokens
        else:
            out = generate(model, [prompt], SamplingConfig(max_new_tokens=new_tokens, temperature=0), use_cache=use_cache)
            assert len(out[0]) == new_tokens
    sync(device)
    return time.perf_counter() - start


def bench_shape(name: str, args: argparse.Namespace, bf16: bool) -> dict[str, float]:
    preset, batch, seq = SHAPES[name]
    ours, hf = build_pair(preset, args.device)
    suffix = f"_{name}" + ("_bf16" if bf16 else "") + ("_compiled" if args.compile else "")
    tokens = batch * seq
    out: dict[str, float] = {}

    train_ours, train_hf = (torch.compile(ours), torch.compile(hf)) if args.compile else (ours, hf)
    ours_t, hf_t = [], []
    for _ in range(args.rounds):  # alternate so drift in machine speed hits both alike
        ours_t += train_seconds(train_ours, False, batch, seq, args.steps, args.device, bf16)
        hf_t += train_seconds(train_hf, True, batch, seq, args.steps, args.device, bf16)
    out[f"train_tokens_per_s_gptlab{suffix}"] = round(tokens / min(ours_t), 1)
    out[f"train_tokens_per_s_transformers{suffix}"] = round(tokens / min(hf_t), 1)
    out[f"train_step{suffix}"] = round(min(hf_t) / min(ours_t), 3)

    if args.compile:
        return out
    if bf16:  # inference keeps its weights in bf16 (autocast would re-cast the head every token)
        ours, hf = ours.to(torch.bfloat16), hf.to(torch.bfloat16)
    # transformers cannot generate past the context; keep both inside it
    new_tokens = min(args.new_tokens, ours.config.context_length - PROMPT_TOKENS)
    ours_g, hf_g = [], []
    for _ in range(args.rounds):
        ours_g.append(generate_seconds(ours, False, new_tokens, args.device))
        hf_g.append(generate_seconds(hf, True, new_tokens, args.device))
    out[f"generate_tokens_per_s_gptlab{suffix}"] = round(new_tokens / min(ours_g), 1)
    out[f"generate_tokens_per_s_transformers{suffix}"] = round(new_tokens / min(hf_g), 1)
    out[f"generate_cached{suffix}"] = round(min(hf_g) / min(ours_g), 3)
    if name == "124M" and not bf16:
        uncached = generate_seconds(ours, False, new_tokens, args.device, use_cache=False)
        out[f"generate_tokens_per_s_gptlab_nocache{suffix}"] = round(new_tokens / uncached, 1)
        out[f"generate_cache_speedup{suffix}"] = round(uncached / min(ours_g), 3)
    return out


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="124M,small")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of gptlab and transformers")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--bf16", action="store_true", help="also measure bf16 autocast where supported")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models; training step only")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default="metrics/bench_model.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}, threads {torch.get_num_threads()}", file=sys.stderr)

    results: dict[str, float] = {}
    for name in args.shapes.split(","):
        for bf16 in (False, True) if args.bf16 and bf16_supported(args.device) else (False,):
            figures = bench_shape(name, args, bf16)
            for key, value in figures.items():
                print(f"{key}: {value}", flush=True)
            results.update(figures)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GPTLAB_QUIET", "1")
    sys.exit(main())
