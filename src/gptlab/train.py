"""The training loop: one process or DistributedDataParallel under torchrun.

Each optimizer step draws its global batch of ``tokens_per_step / context_length`` random
windows from one data generator that every rank holds, and rank ``r`` takes its share of
each micro-step; so K processes see exactly the batch one process would (gradients are
averaged the same way), and every rank reads different windows. AdamW (weight decay on
matrices only), linear warmup then cosine decay to ``min_lr``, gradient clipping, gradient
accumulation, mixed precision and optional ``torch.compile``.

Every ``eval_interval`` steps (and at the end) rank 0 measures the mean loss over fixed val
and train windows, perplexity and bits per byte, samples a continuation, logs through DVCLive
and writes a training checkpoint (``latest/``; ``best/`` when val loss improved). A resumed
run restores weights, optimizer moments, step, data generator and RNG states and continues
bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gptlab.checkpoint import load_training_state, load_weights, read_config, save_model
from gptlab.data.shards import TokenShards
from gptlab.errors import GptlabError
from gptlab.generate import SamplingConfig, generate
from gptlab.io import atomic_dir
from gptlab.model import GPT, GPTConfig
from gptlab.params import LoopParams, PretrainParams
from gptlab.progress import progress
from gptlab.tokenizer import load_tokenizer

# Dense bf16 peak FLOP/s of common accelerators, for model FLOPs utilisation (MFU).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@dataclass
class Distributed:
    """Where this process stands: rank, world size, local rank, and whether it writes outputs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that writes checkpoints, metrics and logs (rank 0)."""
        return self.rank == 0


def setup_distributed(device_hint: str) -> Distributed:
    """Join the torchrun process group when launched by torchrun (``WORLD_SIZE`` > 1); return the layout."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_hint in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Distributed(rank, world, local)


def pick_device(hint: str, ddp: Distributed) -> torch.device:
    """Return the device: ``auto`` takes CUDA (this rank's GPU) when present, else the CPU."""
    if hint == "auto":
        return torch.device(f"cuda:{ddp.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if hint == "cuda" and ddp.world > 1:
        return torch.device(f"cuda:{ddp.local_rank}")
    if hint.startswith("cuda") and not torch.cuda.is_available():
        raise GptlabError(f"pretrain.device={hint!r} but no CUDA device is visible; use device: auto or cpu")
    return torch.device(hint)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype (None = fp32). ``auto``: bf16 on CUDA with bf16 support and on
    CPUs with native bf16, else fp32. ``fp16`` is CUDA-only (it needs a grad scaler)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise GptlabError("pretrain.precision=fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None


def lr_at(step: int, p: LoopParams) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup over ``warmup_steps``,
    then cosine decay from ``lr`` to ``min_lr`` at ``max_steps``."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    progress_ = min(1.0, (step - p.warmup_steps) / max(1, p.max_steps - p.warmup_steps))
    return p.min_lr + 0.5 * (p.lr - p.min_lr) * (1 + math.cos(math.pi * progress_))


def make_optimizer(model: GPT, p: LoopParams, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2: linear weights, embeddings) only; fused on CUDA."""
    params = {id(q): q for q in model.parameters() if q.requires_grad}.values()
    decay = [q for q in params if q.dim() >= 2]
    no_decay = [q for q in params if q.dim() < 2]
    groups = [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=p.lr, betas=(p.beta1, p.beta2), **extra)


def flops_per_token(config: GPTConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 N for the weights plus 12 L d T for attention (PaLM appendix B)."""
    return 6 * n_params + 12 * config.n_layers * config.emb_dim * config.context_length


def peak_flops(device: torch.device) -> float | None:
    """The bf16 peak of this GPU if known, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def run_id(config: GPTConfig, p: PretrainParams, seed: int, data_meta: dict) -> str:
    """A short hash of everything that determines the training trajectory (resume key)."""
    keep = {k: v for k, v in dataclasses.asdict(p).items() if k not in ("checkpoint_dir", "resume", "device", "sample_prompt", "sample_tokens")}
    blob = json.dumps({"model": config.to_dict(), "pretrain": keep, "seed": seed, "data": data_meta}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def config_differences(a: GPTConfig, b: GPTConfig) -> list[str]:
    """Return ``field: a -> b`` for each differing field."""
    return [f"{f}: {getattr(a, f)} -> {getattr(b, f)}" for f in a.to_dict() if getattr(a, f) != getattr(b, f)]


@torch.no_grad()
def mean_loss(model: GPT, shards: TokenShards, context: int, batch: int, windows: int, device: torch.device, autocast) -> float:
    """Mean next-token loss (nats/token) over the first ``windows`` sequential windows of ``shards``."""
    total, count = 0.0, 0
    for x, y in shards.sequential_windows(batch, context, max_windows=windows):
        with autocast:
            _, loss = model(x.to(device), y.to(device))
        total += loss.item() * x.size(0)
        count += x.size(0)
    return total / count


@dataclass
class TrainResult:
    """What a training run ends with: summary figures and where the checkpoints are."""

    summary: dict
    latest: Path
    best: Path | None


class BatchSource(Protocol):
    """Where a training loop's batches come from; its position is part of a resumable checkpoint."""

    def step_batches(self, accum: int, rank: int, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's ``accum`` micro-batches ``(inputs, targets)``, (batch, seq) int64 each,
        of the next optimizer step (every rank draws the same global batch and takes its share)."""
        ...

    def state(self) -> Any:
        """Return the JSON-able position of the source (RNG state, epoch...)."""
        ...

    def restore(self, state: Any) -> None:
        """Continue from a position returned by :meth:`state`."""
        ...


@dataclass
class LoopRun:
    """One training run for :func:`train_loop`: the data, the evaluation and where checkpoints go.

    ``evaluate(model, autocast)`` returns the evaluation metrics (must include ``val_loss``,
    nats/token); ``sample(model)`` an optional text sample. ``extra`` is merged into the saved
    ``config.json`` (under ``name``); ``summary`` is merged into the run summary (and DVCLive metrics).
    """

    name: str
    run_id: str
    run_dir: Path
    tokenizer_spec: str
    source: BatchSource
    evaluate: Callable[[GPT, Any], dict]
    accum: int = 1
    sample: Callable[[GPT], str] | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    flops_per_token: float | None = None
    summary: dict = dataclasses.field(default_factory=dict)


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
    meta = json.loads(meta_path.read_text())
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

    rid = run_id(config, p, seed, {"tokenizer": meta["tokenizer"], "train_tokens": meta["splits"]["train"]["tokens"]})
    tokenizer_spec = meta["tokenizer"] if meta["tokenizer"] == "gpt2" else str(shards_dir / meta["tokenizer"])
    tokenizer = load_tokenizer(tokenizer_spec)

    torch.manual_seed(seed)
    random.seed(seed)
    model = GPT(config).to(device)
    source = ShardBatches(train_data, p.batch_size, ctx, p.tokens_per_step // ctx, seed)
    split = meta["splits"]["val"]

    def evaluate(m: GPT, autocast) -> dict:
        val = mean_loss(m, val_data, ctx, p.batch_size, p.eval_windows, device, autocast)
        train = mean_loss(m, train_data, ctx, p.batch_size, p.eval_windows, device, autocast)
        return {
            "train_loss": round(train, 5),
            "val_loss": round(val, 5),
            "val_perplexity": round(math.exp(min(val, 50)), 3),
            "val_bits_per_byte": round(val * split["tokens"] / split["bytes"] / math.log(2), 5),
        }

    prompt_ids = tokenizer.encode(p.sample_prompt, allowed_special="all") if p.sample_prompt else []

    def sample(m: GPT) -> str:
        out = generate(m, [prompt_ids], SamplingConfig(p.sample_tokens, temperature=0.8, top_k=50, seed=seed), [tokenizer.eot_token])
        return p.sample_prompt + tokenizer.decode(out[0])

    run = LoopRun(
        name="pretrain",
        run_id=rid,
        run_dir=Path(p.checkpoint_dir) / rid,
        tokenizer_spec=tokenizer_spec,
        source=source,
        evaluate=evaluate,
        accum=p.tokens_per_step // per_micro,
        sample=sample if prompt_ids and p.sample_tokens else None,
        flops_per_token=flops_per_token(config, model.num_parameters()),
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


def train_loop(
    model: GPT,
    p: LoopParams,
    run: LoopRun,
    ddp: Distributed,
    device: torch.device,
    live_dir: str | Path | None = None,
    stop_after_steps: int | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> TrainResult:
    """The one training loop (pretraining and fine-tuning): AdamW on the model's trainable
    parameters, warmup + cosine, clipping, accumulation, AMP, optional compile and DDP; evaluation,
    DVCLive logs and a resumable checkpoint every ``p.eval_interval`` steps; ``best/`` on a new
    lowest val loss. Returns the summary and the checkpoint paths."""
    amp_dtype = pick_precision(p.precision, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    latest_dir, best_dir = run.run_dir / "latest", run.run_dir / "best"
    config = model.config
    optimizer = make_optimizer(model, p, device)
    step, tokens_seen, best_val, history, elapsed = 0, 0, float("inf"), [], 0.0

    if p.resume and (latest_dir / "state.json").exists():
        saved_cfg = GPTConfig.from_dict(read_config(latest_dir)["model"])
        if saved_cfg != config:
            raise GptlabError(
                f"{latest_dir}: the checkpoint's model differs from params.yaml ({'; '.join(config_differences(saved_cfg, config))}); remove it or restore the params"
            )
        load_weights(model, latest_dir)
        state = load_training_state(latest_dir, optimizer)
        step, tokens_seen, best_val, history = state["step"], state["tokens_seen"], state["best_val_loss"], state["history"]
        elapsed = state.get("train_seconds", 0.0)
        run.source.restore(state["data_rng"])
        if ddp.main:
            print(f"{run.name}: resuming run {run.run_id} at step {step}/{p.max_steps} from {latest_dir}")

    n_params, n_trainable = model.num_parameters(), model.num_parameters(trainable_only=True)
    train_model: torch.nn.Module = torch.compile(model) if p.compile else model
    if ddp.world > 1:
        train_model = DistributedDataParallel(train_model, device_ids=[ddp.local_rank] if device.type == "cuda" else None)
    peak = peak_flops(device)
    live = _open_live(live_dir, history) if ddp.main and live_dir else None
    accum = run.accum

    def checkpoint() -> None:
        if not ddp.main:
            return
        state = {"step": step, "tokens_seen": tokens_seen, "best_val_loss": best_val, "history": history,
                 "data_rng": run.source.state(), "run_id": run.run_id, "train_seconds": elapsed}  # fmt: skip
        save_model(latest_dir, model, run.tokenizer_spec, {run.name: {"step": step, **run.extra}}, optimizer, state)

    def evaluate(step_tokens_per_s: float) -> dict:
        nonlocal best_val
        model.eval()
        with torch.no_grad():
            metrics = run.evaluate(model, autocast)
        row = {"step": step, "tokens": tokens_seen, **metrics, "lr": lr_at(max(step - 1, 0), p), "tokens_per_s": round(step_tokens_per_s, 1)}
        if peak and run.flops_per_token:
            row["mfu"] = round(run.flops_per_token * step_tokens_per_s * ddp.world / peak, 4)
        if run.sample:
            row["sample"] = run.sample(model)
        model.train()
        val = metrics["val_loss"]
        if val < best_val:
            best_val = val
            save_model(best_dir, model, run.tokenizer_spec, {run.name: {"step": step, "val_loss": val, **run.extra}})
        return row

    model.train()
    start_step = step
    bar = progress(total=p.max_steps, initial=step, desc=run.name, unit="step", **({} if ddp.main else {"disable": True}))
    window_start, window_tokens = time.perf_counter(), 0
    try:
        while step < p.max_steps:
            if stop_after_steps is not None and step - start_step >= stop_after_steps:
                break
            lr = lr_at(step, p)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            step_tokens = 0
            for micro, (x, y) in enumerate(run.source.step_batches(accum, ddp.rank, ddp.world)):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                step_tokens += x.numel() * ddp.world
                sync = ddp.world == 1 or micro == accum - 1
                with nullcontext() if sync else train_model.no_sync(), autocast:
                    _, loss = train_model(x, y)
                    scaled = loss / accum
                (scaler.scale(scaled) if scaler else scaled).backward()
                loss_sum += loss.detach()
            if scaler:
                scaler.unscale_(optimizer)
            if p.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], p.grad_clip)
            step_loss = (loss_sum / accum).item()
            if not math.isfinite(step_loss):
                raise GptlabError(
                    f"step {step}: training loss is {step_loss}; stopped. The last good checkpoint is {latest_dir if latest_dir.exists() else 'none yet'}; "
                    f"lower {run.name}.lr or use precision: fp32"
                )
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += step_tokens
            window_tokens += step_tokens
            bar.update(1)
            now = time.perf_counter()
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{window_tokens / max(now - window_start, 1e-9):,.0f}")
            if step % p.eval_interval == 0 or step == p.max_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                tps = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                elapsed += time.perf_counter() - window_start
                if ddp.main:
                    row = evaluate(tps)
                    history.append(row)
                    if live:
                        _log_row(live, row)
                    if on_eval:
                        on_eval(row)
                    extra = f" bpb {row['val_bits_per_byte']:.4f}" if "val_bits_per_byte" in row else ""
                    bar.write(f"step {step}: train {row['train_loss']:.4f} val {row['val_loss']:.4f}{extra} {tps:,.0f} tok/s")
                    checkpoint()
                if ddp.world > 1:
                    dist.barrier()
                window_start, window_tokens = time.perf_counter(), 0
    except KeyboardInterrupt:
        elapsed += time.perf_counter() - window_start
        checkpoint()
        if ddp.main:
            bar.write(f"{run.name}: interrupted; saved step {step} to {latest_dir}; run again to resume")
        raise
    finally:
        bar.close()
    if step - start_step and (not history or history[-1]["step"] != step):  # stopped between evals
        elapsed += time.perf_counter() - window_start
        checkpoint()
    if ddp.world > 1:
        dist.barrier()

    last = history[-1] if history else {}
    summary = {"run_id": run.run_id, "steps": step, "tokens_seen": tokens_seen, "parameters": n_params}
    if n_trainable != n_params:
        summary["trainable_parameters"] = n_trainable
    summary.update({k: v for k, v in last.items() if k not in ("step", "tokens", "lr", "tokens_per_s", "mfu", "sample")})
    summary.update(
        {
            "best_val_loss": None if best_val == float("inf") else round(best_val, 5),
            "tokens_per_s": round(tokens_seen / elapsed, 1) if elapsed else None,
            "train_seconds": round(elapsed, 2),
            "device": str(device),
            "precision": str(amp_dtype or torch.float32).removeprefix("torch."),
            "processes": ddp.world,
            **run.summary,
        }
    )
    if live:
        for key, value in summary.items():
            if isinstance(value, (int, float)) and key != "steps":
                live.summary[key] = value
        if history:
            from gptlab.plots import loss_figure

            live.log_image("loss.png", loss_figure(history))
        live.make_summary()
        live.end()
    return TrainResult(summary, latest_dir, best_dir if best_dir.exists() else None)


def _open_live(live_dir: str | Path, history: list[dict]):
    """Open a fresh DVCLive log in ``live_dir`` and replay ``history`` (after a resume)."""
    from dvclive import Live

    shutil.rmtree(live_dir, ignore_errors=True)
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    for row in history:
        _log_row(live, row)
    return live


def _log_row(live, row: dict) -> None:
    """Log one evaluation: numbers as DVCLive metrics, the sample text to ``samples.txt`` beside them."""
    live.step = row["step"]
    for key in ("train_loss", "val_loss", "val_perplexity", "val_bits_per_byte", "lr", "tokens", "tokens_per_s", "mfu"):
        if key in row:
            live.log_metric(key, row[key])
    if "sample" in row:
        with open(Path(live.dir) / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"--- step {row['step']} (val loss {row['val_loss']:.4f})\n{row['sample']}\n\n")


def publish(result: TrainResult, out: str | Path) -> bool:
    """Copy the final model to ``out`` and the best to ``out/best`` (weights and config, no
    training state), replacing ``out`` once complete. Only rank 0 writes; returns True there."""
    if int(os.environ.get("RANK", "0")) != 0:
        return False
    with atomic_dir(out) as tmp:
        _copy_model_files(result.latest, tmp)
        if result.best is not None:
            _copy_model_files(result.best, tmp / "best")
    return True


def _copy_model_files(src: Path, dst: Path) -> None:
    """Copy a checkpoint's weights, config and tokenizer (not its training state) into ``dst``."""
    dst.mkdir(exist_ok=True)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
