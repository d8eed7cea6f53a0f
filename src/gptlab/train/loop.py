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
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gptlab.checkpoint import load_training_state, load_weights, read_config, save_model
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir
from gptlab.model import GPT, GPTConfig
from gptlab.params import LoopParams
from gptlab.progress import progress
from gptlab.train.runtime import Distributed, peak_flops, pick_precision


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


def config_differences(a: GPTConfig, b: GPTConfig) -> list[str]:
    """Return ``field: a -> b`` for each differing field."""
    return [f"{f}: {getattr(a, f)} -> {getattr(b, f)}" for f in a.to_dict() if getattr(a, f) != getattr(b, f)]


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
