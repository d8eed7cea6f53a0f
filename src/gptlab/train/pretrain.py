"""The pretrain recipe: a GPT from token shards on the one training loop (see :mod:`gptlab.train.loop`)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from gptlab.config import GPTConfig
from gptlab.data.shards import TokenShards, split_paths
from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.io import read_json, sha256_file
from gptlab.model import GPT
from gptlab.params import PretrainParams
from gptlab.progress import progress
from gptlab.sampling import SamplingConfig, generate
from gptlab.tokenizer import load_tokenizer
from gptlab.train.cadence import pretrain_cadence, report_pretrain, with_interval
from gptlab.train.evaluate import split_loss
from gptlab.train.loop import train_loop
from gptlab.train.run import LoopRun, TrainResult, checkpoint_root, code_sha256, run_id
from gptlab.train.runtime import flops_per_token, pad_parameters, setup_distributed


def shards_fingerprint(shards_dir: Path, meta: dict) -> dict:
    """What the data is, for the resume key: the tokenizer and every shard file's checksum (train
    and val, by name), so other shards with the same token count start a new run.

    The CRC-32s the tokenize stage recorded in ``meta.json`` (and the reader verifies on open)
    are used as they are, so nothing is read twice; shards written without them are hashed."""
    tok = meta["tokenizer"]
    files = meta.get("files") or {p.name: {"sha256": sha256_file(p)} for split in ("train", "val") for p in split_paths(shards_dir, split)}
    checksums = {name: entry.get("crc32") or entry["sha256"] for name, entry in sorted(files.items())}
    return {"tokenizer": tok if tok == "gpt2" else sha256_file(shards_dir / tok), "shards": checksums}


def window_batches(shards: TokenShards, context: int, batch: int, windows: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """``windows`` fixed windows spread evenly over the whole of ``shards``
    (:meth:`TokenShards.spread_windows`) for :func:`split_loss`: ``(inputs, targets, rows)``,
    (batch, context) int64 each, each batch weighted by its rows."""
    for x, y in shards.spread_windows(batch, context, windows):
        yield x, y, x.size(0)


FULL_EVAL_TOKENS = 16384  # tokens per forward pass of the whole-split evaluation (at least one micro-batch)


def full_split_batches(shards: TokenShards, context: int, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """A whole split for :func:`split_loss`: every token after the first of each shard is predicted
    once, from the non-overlapping windows of ``context`` tokens that
    :meth:`TokenShards.sequential_windows` yields, then each shard's shorter last window (batch 1);
    ``(inputs, targets, target tokens)``. Shows a progress bar over the split's tokens."""
    with progress(total=shards.n_tokens, unit="tok", unit_scale=True, desc="full val", leave=False) as bar:
        for x, y in shards.sequential_windows(batch, context):
            yield x, y, y.numel()
            bar.update(y.numel())
        for i, length in enumerate(shards.lengths.tolist()):
            full = -(-(length - context) // context) if length > context else 0  # windows sequential_windows took
            tail = full * context  # where the rest starts: the last full window's target end, or 0
            if length - tail >= 2:
                rest = torch.from_numpy(np.asarray(shards.array(i)[tail:], dtype=np.int64))
                yield rest[None, :-1], rest[None, 1:], length - tail - 1
                bar.update(length - tail - 1)


def pretrain(
    config: GPTConfig,
    p: PretrainParams,
    shards_dir: str | Path,
    seed: int,
    live_dir: str | Path | None = None,
    stop_after_steps: int | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train a GPT on the shards in ``shards_dir``; return the summary and checkpoint paths.

    Checkpoints go to ``p.checkpoint_dir/<run id>/{latest,best}``; with ``p.resume`` a run with
    the same id continues from ``latest``. ``stop_after_steps`` ends early (after saving), as an
    interruption would. ``live_dir``: DVCLive folder for metrics and plots (rank 0).
    """
    ddp = setup_distributed(p.device)
    device = pick_device(p.device, ddp)

    shards_dir = Path(shards_dir)
    meta_path = shards_dir / "meta.json"
    if not meta_path.exists():
        raise GptlabError(f"{meta_path}: missing; run `dvc repro tokenize` first")
    meta = read_json(meta_path, "the shards' meta.json: run `dvc repro tokenize`")
    train_data = TokenShards.from_folder(shards_dir, "train")
    val_data = TokenShards.from_folder(shards_dir, "val")
    if train_data.vocab_size > config.vocab_size:
        raise GptlabError(f"model.vocab_size={config.vocab_size} is smaller than the shards' vocabulary ({train_data.vocab_size}); raise it")
    ctx = config.context_length
    per_micro = p.batch_size * ctx * ddp.world
    if p.tokens_per_step % per_micro:
        raise GptlabError(
            f"pretrain.tokens_per_step={p.tokens_per_step} is not a multiple of batch_size x context_length x processes "
            f"= {p.batch_size} x {ctx} x {ddp.world} = {per_micro}; pick a multiple (e.g. {per_micro * max(1, round(p.tokens_per_step / per_micro))})"
        )
    train_data.check_context(ctx)  # fail now, naming the context length, not mid-run
    val_data.check_context(ctx)
    cadence = pretrain_cadence(p, train_data.n_tokens)
    if ddp.main:
        report_pretrain(cadence, p, train_data.n_tokens)
    p = with_interval(p, cadence)  # a null eval_interval becomes the derived one (and the run id names it)

    rid = run_id("pretrain", p, code=code_sha256("gptlab.train.pretrain"), model=config.to_dict(), seed=seed, data=shards_fingerprint(shards_dir, meta))
    tokenizer_spec = meta["tokenizer"] if meta["tokenizer"] == "gpt2" else str(shards_dir / meta["tokenizer"])
    tokenizer = load_tokenizer(tokenizer_spec)

    torch.manual_seed(seed)
    random.seed(seed)
    model = GPT(config).to(device)
    source = ShardBatches(train_data, p.batch_size, ctx, p.tokens_per_step // ctx, seed)
    split = meta["splits"]["val"]

    def evaluate(m: GPT, autocast) -> dict:
        val = split_loss(m, window_batches(val_data, ctx, p.batch_size, p.eval_windows), device, autocast)
        train = split_loss(m, window_batches(train_data, ctx, p.batch_size, p.eval_windows), device, autocast)
        return {
            "train_loss": round(train, 5),
            "val_loss": round(val, 5),
            "val_perplexity": round(math.exp(min(val, 50)), 3),
            "val_bits_per_byte": round(val * split["tokens"] / split["bytes"] / math.log(2), 5),
        }

    def evaluate_full(m: GPT, autocast) -> dict:
        val = split_loss(m, full_split_batches(val_data, ctx, max(p.batch_size, FULL_EVAL_TOKENS // ctx)), device, autocast)
        return {"full_val_bits_per_byte": round(val * split["tokens"] / split["bytes"] / math.log(2), 5)}

    prompt_ids = tokenizer.encode(p.sample_prompt, allowed_special="all") if p.sample_prompt else []

    def sample(m: GPT) -> str:
        out = generate(m, [prompt_ids], SamplingConfig(p.sample_tokens, temperature=0.8, top_k=50, seed=seed), [tokenizer.eot_token])
        return p.sample_prompt + tokenizer.decode(out[0])

    run = LoopRun(
        name="pretrain",
        run_id=rid,
        run_dir=checkpoint_root(p.checkpoint_dir) / rid,
        tokenizer_spec=tokenizer_spec,
        source=source,
        evaluate=evaluate,
        accum=p.tokens_per_step // per_micro,
        sample=sample if prompt_ids and p.sample_tokens else None,
        flops_per_token=flops_per_token(config, model.num_parameters() - pad_parameters(config)),
        final_evaluate=evaluate_full,
        summary={"train_passes": round(cadence.passes, 3), "eval_interval": cadence.eval_interval},
    )
    return train_loop(model, p, run, ddp, device, live_dir, stop_after_steps, on_eval)


class ShardBatches:
    """Random windows of token shards: each step's global batch of ``windows_per_step`` windows
    comes from one numpy generator every rank holds; rank ``r`` gathers its micro-batches."""

    def __init__(self, shards: TokenShards, batch_size: int, context: int, windows_per_step: int, seed: int):
        self.shards, self.batch_size, self.context, self.windows_per_step = shards, batch_size, context, windows_per_step
        self.rng = np.random.default_rng(seed)

    def step_batches(self, accum: int, rank: int, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's ``accum`` micro-batches of the next step: (batch_size, context) int64 each."""
        shard_idx, offsets = self.shards.draw(self.windows_per_step, self.context, self.rng)
        for micro in range(accum):
            first = (micro * world + rank) * self.batch_size
            yield self.shards.gather(shard_idx[first : first + self.batch_size], offsets[first : first + self.batch_size], self.context)

    def state(self) -> dict:
        """The numpy generator's state (JSON-able)."""
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        """Continue the window sequence from ``state``."""
        self.rng.bit_generator.state = state
