"""Pretraining quality per CPU second: nanoGPT's char-level CPU recipe against gptlab's default,
trained by gptlab in one run, on the same machine and the same held-out documents.

Both recipes tokenize the downloaded corpus (data/raw/corpus) with the seed and val split of
params.yaml, so they hold out the same documents, then pretrain with the one training loop:

- ``char``: nanoGPT's `shakespeare_char` CPU recipe: bytes (tokenize.tokenizer: char), 4 layers x
  128, 4 heads, block 64, batch 12, 2,000 iterations, lr 1e-3 -> 1e-4 over 2,000 steps after
  100 warmup steps, beta2 0.99, weight decay 0.1, clipping 1.0, no dropout;
- ``default``: the tokenize, model and pretrain sections of params.yaml as they are.

Each recipe's wall time is that of its two stages (tokenize, then pretrain with its final
whole-val evaluation), as `dvc repro` would spend them; bits per byte is
``full_val_bits_per_byte`` (every token of the val split). Prints both and the ratios
(``bpb_ratio`` < 1: the default predicts the held-out text better; ``time_ratio``: its wall
time over char's), and writes them to --json.

    python bench/pretrain_recipes.py [--params params.yaml] [--corpus data/raw/corpus] [--char-steps 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GPTLAB_QUIET", "1")

from gptlab.data.shards import shards_vocab_size  # noqa: E402
from gptlab.data.tokenize import tokenize_corpus  # noqa: E402
from gptlab.io import write_json  # noqa: E402
from gptlab.params import ModelParams, Params, load_params  # noqa: E402
from gptlab.train.pretrain import pretrain  # noqa: E402

# nanoGPT's config/train_shakespeare_char.py with its README's CPU overrides
# (--device=cpu --compile=False --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
#  --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0)
CHAR_MODEL = {"preset": None, "context_length": 64, "emb_dim": 128, "n_heads": 4, "n_layers": 4, "drop_rate": 0.0}
CHAR_PRETRAIN = {"batch_size": 12, "tokens_per_step": 12 * 64, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100, "beta2": 0.99,
                 "weight_decay": 0.1, "grad_clip": 1.0, "eval_interval": 500, "eval_windows": 20}  # fmt: skip


def char_recipe(params: Params, steps: int) -> Params:
    """Return ``params`` with the char-level recipe's tokenize, model and pretrain sections."""
    tokenize = dataclasses.replace(params.tokenize, tokenizer="char")
    pretrain_ = dataclasses.replace(params.pretrain, max_steps=steps, **CHAR_PRETRAIN)
    return dataclasses.replace(params, tokenize=tokenize, model=ModelParams(**CHAR_MODEL), pretrain=pretrain_)


def run_recipe(name: str, params: Params, corpus: Path, workdir: Path) -> dict:
    """Tokenize and pretrain one recipe in ``workdir``; return its figures (seconds, bits/byte...)."""
    start = time.perf_counter()
    shards = workdir / name / "shards"
    tokenize_corpus(params.tokenize, corpus, shards, params.seed)
    tokenized = time.perf_counter()
    config = params.model.to_config(tokenizer_vocab=shards_vocab_size(shards))
    p = dataclasses.replace(params.pretrain, checkpoint_dir=str(workdir / name / "checkpoints"), resume=False)
    summary = pretrain(config, p, shards, params.seed).summary
    seconds = time.perf_counter() - start
    out = {
        "full_val_bits_per_byte": summary["full_val_bits_per_byte"],
        "wall_seconds": round(seconds, 1),
        "tokenize_seconds": round(tokenized - start, 1),
        "train_seconds": summary["train_seconds"],
        "tokens_per_s": summary["tokens_per_s"],
        "steps": summary["steps"],
        "parameters": summary["parameters"],
        "vocab_size": config.vocab_size,
    }
    print(f"{name}: {out['full_val_bits_per_byte']:.4f} bits/byte in {out['wall_seconds']:.0f} s "
          f"({out['steps']} steps, {out['parameters'] / 1e6:.2f} M parameters, vocab {out['vocab_size']}, {out['tokens_per_s']:,.0f} tokens/s)", flush=True)  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--corpus", default="data/raw/corpus")
    ap.add_argument("--char-steps", type=int, default=2000, help="iterations of the char recipe (nanoGPT's: 2000)")
    ap.add_argument("--json", default="metrics/bench_pretrain_recipes.json")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    if not corpus.is_dir():
        print(f"{corpus}: no corpus; run `dvc repro download` first", file=sys.stderr)
        return 2
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        char = run_recipe("char", char_recipe(params, args.char_steps), corpus, Path(tmp))
        default = run_recipe("default", params, corpus, Path(tmp))
    figures = {
        "char": char,
        "default": default,
        "bpb_ratio": round(default["full_val_bits_per_byte"] / char["full_val_bits_per_byte"], 4),
        "time_ratio": round(default["wall_seconds"] / char["wall_seconds"], 3),
    }
    print(f"bpb_ratio: {figures['bpb_ratio']} (default over char; < 1: the default is better)")
    print(f"time_ratio: {figures['time_ratio']} (default's wall time over char's)")
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
