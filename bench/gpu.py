"""The GPU bench (issue 25): in one run, on one GPU, in under 5 minutes,

- the ceilings: a bf16 matmul (8192^3) and a device-to-device copy;
- the bare training step (forward, backward, fused AdamW; bf16 autocast; B=16 x T=1024) of
  gptlab's GPT-2 124M (``vocab_pad`` 64) and of transformers' ``GPT2LMHeadModel``
  (``attn_implementation="sdpa"``, the baseline), eager and under ``torch.compile``;
- the pretrain stage's library code (:func:`gptlab.train.pretrain.pretrain`, no DVCLive) on
  synthetic shards this script writes with gptlab's shard writer, eager and ``compile: true``:
  its steady-state tokens/s and MFU (the last evaluation window's, the compile warm-up apart);
- the peak GPU memory of each.

MFU is against the GPU's bf16 dense peak (989 TFLOP/s for an H100/H200), FLOPs per token
``6 N + 12 L d T`` with N the true-vocabulary parameter count (both models alike). Ratios > 1:
gptlab is faster. Figures go to ``metrics/bench_gpu.json`` (GPU name included).

It needs only torch, numpy, safetensors, tiktoken, tokenizers, transformers and pyyaml (no dvc,
dvclive, fastapi), from a plain checkout::

    PYTHONPATH=src python3 bench/gpu.py              # on a GPU
    PYTHONPATH=src python3 bench/gpu.py --smoke      # anywhere: tiny shapes, a few steps, correctness only
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GPTLAB_QUIET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gptlab.config import GPTConfig  # noqa: E402
from gptlab.data.shards import ShardWriter  # noqa: E402
from gptlab.io import write_json  # noqa: E402
from gptlab.model import GPT  # noqa: E402
from gptlab.params import PretrainParams  # noqa: E402
from gptlab.tokenizer import ENDOFTEXT, UNK, SimpleTokenizer  # noqa: E402
from gptlab.train.optim import make_optimizer  # noqa: E402
from gptlab.train.pretrain import pretrain  # noqa: E402
from gptlab.train.runtime import flops_per_token, peak_flops  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    """What one run measures: model, batch, steps and ceiling sizes."""

    config: GPTConfig
    batch: int
    warmup: int  # untimed steps before the timed ones (compile, autotuning)
    steps: int
    stage_steps: int  # steps of each pretrain-stage run (two evaluation windows)
    accum: int  # micro-batches per stage step
    matmul_n: int
    copy_bytes: int
    backend: str  # torch.compile backend: inductor on a GPU; eager (dynamo only) for the smoke run


FULL = Shape(GPTConfig.preset("gpt2-124M", vocab_pad=64), 16, 3, 20, 60, 2, 8192, 1 << 30, "inductor")
SMOKE = Shape(GPTConfig(vocab_size=1000, context_length=32, emb_dim=32, n_heads=4, n_layers=2, vocab_pad=64), 2, 1, 2, 4, 2, 128, 1 << 20, "eager")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: torch.device) -> float | None:
    """Peak GPU memory allocated since :func:`reset_peak`, GB (None off CUDA)."""
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None


def best_seconds(fn, device: torch.device, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (after one warm-up call)."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def ceilings(shape: Shape, device: torch.device) -> dict:
    """The bf16 matmul's TFLOP/s and a copy's TB/s (read + write) on ``device``."""
    n = shape.matmul_n
    a, b = torch.randn(n, n, device=device, dtype=torch.bfloat16), torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = best_seconds(lambda: a @ b, device, 5)
    src = torch.empty(shape.copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    cp = best_seconds(lambda: dst.copy_(src), device, 5)
    return {"matmul_bf16_tflops": round(2 * n**3 / mm / 1e12, 2), "copy_tb_per_s": round(2 * shape.copy_bytes / cp / 1e12, 3)}


def true_parameters(config: GPTConfig) -> int:
    """Parameters of ``config``'s model with the true vocabulary (the pad rows not counted)."""
    with torch.device("meta"):
        return GPT(dataclasses.replace(config, vocab_pad=1)).num_parameters()


def gptlab_step(config: GPTConfig, device: torch.device):
    """gptlab's model and its training step: ``step(x, y) -> loss`` (bf16 autocast, fused AdamW on CUDA)."""
    torch.manual_seed(0)
    model = GPT(config).to(device).train()
    opt = make_optimizer(model, PretrainParams(), device)

    def step(run, x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            _, loss = run(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def hf_step(config: GPTConfig, device: torch.device):
    """transformers' GPT2LMHeadModel of the same shape (sdpa attention) and its training step."""
    from transformers import GPT2Config, GPT2LMHeadModel  # transformers: the baseline, not a gptlab dependency

    torch.manual_seed(0)
    hf_config = GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.emb_dim, n_layer=config.n_layers, n_head=config.n_heads
    )
    model = GPT2LMHeadModel._from_config(hf_config, attn_implementation="sdpa").to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, **({"fused": True} if device.type == "cuda" else {}))

    def step(run, x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = run(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def bare_step(build, shape: Shape, device: torch.device, compiled: bool) -> dict:
    """Tokens/s, MFU and peak memory of one model's training step on random batches."""
    reset_peak(device)
    model, step = build(shape.config, device)
    run = torch.compile(model, backend=shape.backend) if compiled else model
    c = shape.config
    data = torch.randint(0, c.vocab_size, (shape.batch, c.context_length + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]
    losses = [step(run, x, y) for _ in range(shape.warmup)]
    sync(device)
    start = time.perf_counter()
    losses += [step(run, x, y) for _ in range(shape.steps)]
    sync(device)
    seconds = time.perf_counter() - start
    first = losses[0].item()
    if not all(math.isfinite(v.item()) for v in losses) or abs(first - math.log(c.vocab_size)) > 1.0:
        raise SystemExit(f"bare step: losses {[round(v.item(), 3) for v in losses]} are not a fresh model's (first ~ ln V = {math.log(c.vocab_size):.2f})")
    tokens_per_s = shape.steps * x.numel() / seconds
    return {"tokens_per_s": round(tokens_per_s, 1), "mfu": mfu(c, tokens_per_s, device), "peak_memory_gb": peak_gb(device), "first_loss": round(first, 4)}


def mfu(config: GPTConfig, tokens_per_s: float, device: torch.device) -> float | None:
    """Model FLOPs utilisation against the GPU's bf16 peak (None where the peak is unknown)."""
    peak = peak_flops(device)
    return round(flops_per_token(config, true_parameters(config)) * tokens_per_s / peak, 4) if peak else None


def synthetic_shards(folder: Path, config: GPTConfig, train_tokens: int, val_tokens: int) -> Path:
    """Random-token shards with a word-level tokenizer of ``config.vocab_size`` ids and the
    meta.json the pretrain stage reads, written with gptlab's :class:`ShardWriter`; return the folder."""
    folder.mkdir(parents=True)
    vocab = config.vocab_size
    tokenizer = SimpleTokenizer([f" w{i}" for i in range(vocab - 2)] + [ENDOFTEXT, UNK])
    tokenizer.save(folder / "tokenizer.json")
    rng = np.random.default_rng(0)
    splits, files = {}, {}
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        writer = ShardWriter(folder, split, n, vocab, tokenizer.eot_token)
        writer.write(rng.integers(0, vocab, n, dtype=np.int64).astype(np.uint16))
        paths = writer.close()
        splits[split] = {"documents": [], "tokens": n, "bytes": 4 * n, "shards": [p.name for p in paths]}
        files.update({p.name: {"split": split, "tokens": n, "crc32": crc} for p, crc in zip(paths, writer.checksums)})
    meta = {"format_version": 1, "dtype": "uint16", "tokenizer": "tokenizer.json", "vocab_size": vocab, "eot_token": tokenizer.eot_token}
    write_json(folder / "meta.json", {**meta, "splits": splits, "files": files})
    return folder


def stage_run(shape: Shape, shards: Path, device: torch.device, compiled: bool, tmp: Path) -> dict:
    """The pretrain stage (library code, no DVCLive): steady-state tokens/s and MFU of its last
    evaluation window, its compile warm-up, peak memory."""
    c = shape.config
    p = PretrainParams(
        max_steps=shape.stage_steps, batch_size=shape.batch, tokens_per_step=shape.batch * c.context_length * shape.accum, lr=6e-4, min_lr=6e-5,
        warmup_steps=0, eval_interval=shape.stage_steps // 2, eval_windows=1, sample_tokens=0, sample_prompt="", device=str(device),
        compile=compiled, checkpoint_dir=str(tmp / f"ckpt-{compiled}"), resume=False, keep_runs=1,
    )  # fmt: skip
    rows: list[dict] = []
    reset_peak(device)
    with compile_backend(shape.backend):
        result = pretrain(c, p, shards, seed=0, live_dir=None, on_eval=rows.append)
    last, s = rows[-1], result.summary
    if not all(math.isfinite(r["train_loss"]) for r in rows):
        raise SystemExit(f"pretrain stage: non-finite losses {rows}")
    return {
        "tokens_per_s": last["tokens_per_s"],
        "mfu": last.get("mfu"),
        "compile_seconds": s.get("compile_seconds"),
        "peak_memory_gb": peak_gb(device),
        "val_loss": s["val_loss"],
        "steps": s["steps"],
    }


@contextlib.contextmanager
def compile_backend(backend: str):
    """While active, ``torch.compile`` (as the stage calls it) uses ``backend``: the smoke run
    traces with dynamo (``eager``) instead of waiting minutes for inductor's C++ on a CPU."""
    original = torch.compile
    if backend != "inductor":
        torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


def measure(shape: Shape, device: torch.device) -> dict:
    """Every figure of the bench, as one dict."""
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__}
    out["config"] = {"preset": "gpt2-124M" if shape is FULL else "smoke", "batch": shape.batch, "context": shape.config.context_length, "vocab_pad": 64}
    out["ceilings"] = ceilings(shape, device)
    for mode in ("eager", "compiled"):
        out[f"gptlab_step_{mode}"] = bare_step(gptlab_step, shape, device, mode == "compiled")
        out[f"hf_step_{mode}"] = bare_step(hf_step, shape, device, mode == "compiled")
        out[f"gptlab_vs_hf_{mode}"] = round(out[f"gptlab_step_{mode}"]["tokens_per_s"] / out[f"hf_step_{mode}"]["tokens_per_s"], 3)
    with tempfile.TemporaryDirectory() as tmp:
        tokens = shape.stage_steps * shape.batch * shape.config.context_length * shape.accum
        shards = synthetic_shards(Path(tmp) / "shards", shape.config, tokens + shape.config.context_length + 1, 4 * shape.config.context_length)
        for mode in ("eager", "compiled"):
            out[f"stage_{mode}"] = stage_run(shape, shards, device, mode == "compiled", Path(tmp))
            out[f"stage_vs_bare_{mode}"] = round(out[f"stage_{mode}"]["tokens_per_s"] / out[f"gptlab_step_{mode}"]["tokens_per_s"], 3)
    return out


def report(out: dict) -> None:
    """Print the figures, one ``name: value`` line each."""
    for key, value in out.items():
        if isinstance(value, dict):
            print(f"{key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        else:
            print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps, correctness only (any device)")
    ap.add_argument("--json", default="metrics/bench_gpu.json")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("bench/gpu.py: no CUDA device; run it on a GPU, or with --smoke for a correctness run", file=sys.stderr)
        return 2
    start = time.perf_counter()
    out = measure(SMOKE if args.smoke else FULL, device)
    out["bench_seconds"] = round(time.perf_counter() - start, 1)
    out["smoke"] = args.smoke
    report(out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
