"""The training loop's own overhead: tokens/s of `gptlab.train.pretrain` against the bare
model step (forward, backward, AdamW on the same batches' shapes) in the same run.

Uses the `model` and `pretrain` sections of params.yaml and the shards of the tokenize stage;
evaluation, sampling and checkpointing are excluded from the loop's timing (they happen
every `eval_interval` steps, outside the step). Target: overhead under 5%. On CUDA it also
prints model FLOPs utilisation.

    python bench/train.py [--steps 30] [--shards data/shards] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GPTLAB_QUIET", "1")

import torch  # noqa: E402

from gptlab.data.shards import shards_vocab_size  # noqa: E402
from gptlab.device import Distributed, pick_device, pick_precision  # noqa: E402
from gptlab.model import GPT  # noqa: E402
from gptlab.params import load_params  # noqa: E402
from gptlab.train.optim import make_optimizer  # noqa: E402
from gptlab.train.pretrain import pretrain  # noqa: E402
from gptlab.train.runtime import flops_per_token, peak_flops  # noqa: E402


def bare_tokens_per_s(config, p, steps: int, device: torch.device) -> float:
    """tokens/s of forward + backward + AdamW on random batches of the loop's shapes."""
    torch.manual_seed(0)
    model = GPT(config).to(device).train()
    opt = make_optimizer(model, p, device)
    amp = pick_precision(p.precision, device)
    accum = p.tokens_per_step // (p.batch_size * config.context_length)
    data = torch.randint(0, config.vocab_size, (steps + 1, accum, p.batch_size, config.context_length + 1))
    times = []
    for s in range(steps + 1):
        start = time.perf_counter()
        for m in range(accum):
            batch = data[s, m].to(device)
            with torch.autocast(device.type, dtype=amp) if amp else torch.autocast(device.type, enabled=False):
                _, loss = model(batch[:, :-1], batch[:, 1:])
            (loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if s:  # the first step warms up
            times.append(time.perf_counter() - start)
    return p.tokens_per_step * len(times) / sum(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--shards", default="data/shards")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json", default="metrics/bench_train.json")
    args = ap.parse_args()
    if not (Path(args.shards) / "meta.json").exists():
        print(f"{args.shards}: no shards; run `dvc repro tokenize` first", file=sys.stderr)
        return 2
    params = load_params(args.params)
    config = params.model.to_config(tokenizer_vocab=shards_vocab_size(args.shards))
    device = pick_device(params.pretrain.device, Distributed())
    with tempfile.TemporaryDirectory() as tmp:
        p = dataclasses.replace(params.pretrain, max_steps=args.steps + 1, warmup_steps=1, eval_interval=args.steps + 1,
                                eval_windows=1, sample_tokens=0, checkpoint_dir=tmp, resume=False)  # fmt: skip
        bare = bare_tokens_per_s(config, p, args.steps, device)
        loop = pretrain(config, p, args.shards, params.seed).summary["tokens_per_s"]
        bare = max(bare, bare_tokens_per_s(config, p, args.steps, device))  # best of two, around the loop
    figures = {
        "bare_step_tokens_per_s": round(bare, 1),
        "loop_tokens_per_s": round(loop, 1),
        "loop_vs_bare": round(loop / bare, 3),
        "loop_overhead_pct": round(100 * (1 - loop / bare), 2),
    }
    peak = peak_flops(device)
    if peak:
        figures["mfu"] = round(flops_per_token(config, GPT(config).num_parameters()) * loop / peak, 4)
    for name, value in figures.items():
        print(f"{name}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
