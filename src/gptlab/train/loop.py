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
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from gptlab.checkpoint import read_config, save_model
from gptlab.config import GPTConfig
from gptlab.device import pick_precision
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, fault_point, recover_dir, write_json
from gptlab.model import GPT
from gptlab.params import LoopParams
from gptlab.progress import progress
from gptlab.train.parallel import Parallel
from gptlab.train.retention import clean_checkpoints, mark_used
from gptlab.train.runtime import Distributed, StopRequest, is_main_process, peak_flops


def lr_at(step: int, p: LoopParams) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup over
    ``p.effective_warmup`` steps (``warmup_steps``, at most ``max_steps // 10``), then cosine
    decay from ``lr`` to ``min_lr`` at ``max_steps``."""
    warmup = p.effective_warmup
    if step < warmup:
        return p.lr * (step + 1) / warmup
    progress_ = min(1.0, (step - warmup) / max(1, p.max_steps - warmup))
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
    ``config.json`` (under ``name``); ``summary`` is merged into the run summary (and DVCLive metrics);
    ``final_evaluate(model, autocast)``, run once on the final weights, adds its figures to it.
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
    final_evaluate: Callable[[GPT, Any], dict] | None = None


RISING_EVALS_WARNING = 3  # consecutive evaluations with a higher val loss before a warning


def rising_evals(history: list[dict]) -> int:
    """Return how many evaluations in a row, up to the last, had a higher val loss than the one before."""
    n = 0
    while n + 1 < len(history) and history[-1 - n]["val_loss"] > history[-2 - n]["val_loss"]:
        n += 1
    return n


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
    lowest val loss. Returns the summary and the checkpoint paths.

    SIGINT/SIGTERM (main thread) stop the run at the next step boundary: the checkpoint of the
    last completed step is saved, then KeyboardInterrupt is raised; a second signal stops at
    once. An evaluation cut short is redone when the run resumes, so ``latest/state.json``, the
    DVCLive history and ``best/`` always agree.
    """
    amp_dtype = pick_precision(p.precision, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    latest_dir, best_dir = run.run_dir / "latest", run.run_dir / "best"
    config = model.config
    n_params, n_trainable = model.num_parameters(), model.num_parameters(trainable_only=True)
    par = Parallel(p, ddp, device, amp_dtype)
    par.prepare(model)
    optimizer = make_optimizer(model, p, device)
    step, tokens_seen, best_val, history, elapsed, pending_tps = 0, 0, float("inf"), [], 0.0, 0.0

    if ddp.main:
        recover_dir(latest_dir)
        recover_dir(best_dir)
        mark_used(run.run_dir)
        removed = clean_checkpoints(run.run_dir.parent, p.keep_runs, run.run_dir)
        if removed:
            print(
                f"{run.name}: removed {len(removed)} old run folder(s) from {run.run_dir.parent} (keep_runs={p.keep_runs}): {', '.join(r.name for r in removed)}"
            )
        if p.warmup_note():
            print(f"{run.name}: {p.warmup_note()}")
    if ddp.world > 1:
        dist.barrier()
    if p.resume and (latest_dir / "state.json").exists():
        saved_cfg = GPTConfig.from_dict(read_config(latest_dir)["model"])
        if saved_cfg != config:
            raise GptlabError(
                f"{latest_dir}: the checkpoint's model differs from params.yaml ({'; '.join(config_differences(saved_cfg, config))}); remove it or restore the params"
            )
        state = par.load(latest_dir, model, optimizer)
        step, tokens_seen, best_val, history = state["step"], state["tokens_seen"], state["best_val_loss"], state["history"]
        elapsed, pending_tps = state.get("train_seconds", 0.0), state.get("pending_tokens_per_s", 0.0)
        run.source.restore(state["data_rng"])
        if ddp.main:
            print(f"{run.name}: resuming run {run.run_id} at step {step}/{p.max_steps} from {latest_dir}")

    train_model = par.wrap(torch.compile(model) if p.compile else model)
    peak = peak_flops(device)
    live = _open_live(live_dir, history) if ddp.main and live_dir else None
    accum = run.accum
    saved_step = step if (latest_dir / "state.json").exists() and p.resume else None

    def checkpoint() -> None:
        nonlocal saved_step
        state = {"step": step, "tokens_seen": tokens_seen, "best_val_loss": best_val, "history": history,
                 "data_rng": run.source.state(), "run_id": run.run_id, "train_seconds": elapsed}  # fmt: skip
        if eval_due(step) and not evaluated(step):
            state["pending_tokens_per_s"] = pending_tps  # the evaluation of this step is redone on resume
        par.save(latest_dir, model, optimizer, run.tokenizer_spec, {run.name: {"step": step, **run.extra}}, state)
        saved_step = step
        fault_point("after_save_latest")

    def eval_due(s: int) -> bool:
        return s > 0 and (s % p.eval_interval == 0 or s == p.max_steps)

    def evaluated(s: int) -> bool:
        return bool(history) and history[-1]["step"] == s

    def evaluate(step_tokens_per_s: float) -> dict:
        nonlocal best_val
        full = par.replica if par.sharded else model  # FSDP: rank 0's full copy, gathered just before
        full.eval()
        with torch.no_grad():
            metrics = run.evaluate(full, autocast)
        row = {"step": step, "tokens": tokens_seen, **metrics, "lr": lr_at(max(step - 1, 0), p), "tokens_per_s": round(step_tokens_per_s, 1)}
        if peak and run.flops_per_token:
            row["mfu"] = round(run.flops_per_token * step_tokens_per_s * ddp.world / peak, 4)
        if run.sample:
            row["sample"] = run.sample(full)
        full.train()
        fault_point("eval")
        val = metrics["val_loss"]
        if val < best_val:
            best_val = val
            save_model(best_dir, full, run.tokenizer_spec, {run.name: {"step": step, "val_loss": val, **run.extra}})
        return row

    def eval_and_checkpoint(tps: float) -> None:
        """Evaluate, log and save step ``step``; ``latest/`` written last is the commit point."""
        nonlocal best_val, pending_tps
        pending_tps = tps
        if par.sharded:
            par.view(model)  # every rank joins the gather; rank 0 evaluates the full replica
        if ddp.main:
            before = (len(history), best_val, _rng_states())
            try:
                row = evaluate(tps)
                history.append(row)
                if live:
                    _log_row(live, row)
                if on_eval:
                    on_eval(row)
                extra = f" bpb {row['val_bits_per_byte']:.4f}" if "val_bits_per_byte" in row else ""
                bar.write(f"step {step}: train {row['train_loss']:.4f} val {row['val_loss']:.4f}{extra} {tps:,.0f} tok/s")
                rising = rising_evals(history)
                if rising == RISING_EVALS_WARNING:
                    first = history[-1 - rising]
                    bar.write(
                        f"{run.name}: warning: val loss rose {rising} evaluations in a row ({first['val_loss']:.4f} at step {first['step']} -> "
                        f"{row['val_loss']:.4f} at step {step}): overfitting? best/ keeps the lowest ({best_val:.4f})"
                    )
                if not par.sharded:
                    checkpoint()
            except KeyboardInterrupt:  # forget the unfinished evaluation: it is redone on resume
                del history[before[0] :]
                best_val = before[1]
                _set_rng_states(before[2])
                raise
        if par.sharded:
            checkpoint()  # a collective: every rank writes its shards
        if ddp.world > 1:
            dist.barrier()

    model.train()
    start_step = step
    bar = progress(total=p.max_steps, initial=step, desc=run.name, unit="step", **({} if ddp.main else {"disable": True}))
    window_start, window_tokens = time.perf_counter(), 0
    in_step = False
    with StopRequest() as stop:
        try:
            if eval_due(step) and not evaluated(step):  # interrupted during this step's evaluation
                eval_and_checkpoint(pending_tps)
            while True:
                if step >= p.max_steps:
                    break
                if stop.requested(ddp, device):
                    raise KeyboardInterrupt
                if stop_after_steps is not None and step - start_step >= stop_after_steps:
                    break
                in_step = True
                lr = lr_at(step, p)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                step_tokens = 0
                for micro, (x, y) in enumerate(run.source.step_batches(accum, ddp.rank, ddp.world)):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    step_tokens += x.numel() * ddp.world
                    sync = ddp.world == 1 or micro == accum - 1
                    with par.sync(model, train_model, sync), autocast:
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
                fault_point("mid_step")
                step += 1
                tokens_seen += step_tokens
                window_tokens += step_tokens
                in_step = False
                fault_point("step_end")
                bar.update(1)
                now = time.perf_counter()
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{window_tokens / max(now - window_start, 1e-9):,.0f}")
                if eval_due(step):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    tps = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    elapsed += time.perf_counter() - window_start
                    window_start, window_tokens = time.perf_counter(), 0
                    eval_and_checkpoint(tps)
                    window_start = time.perf_counter()
        except KeyboardInterrupt:
            elapsed += time.perf_counter() - window_start
            if not in_step and saved_step != step:
                checkpoint()
            if ddp.main:
                where = f"saved step {step} to {latest_dir}" if saved_step == step else f"stopped mid-step; the last checkpoint is step {saved_step}"
                bar.write(f"{run.name}: interrupted; {where}; run again to resume")
            raise
        finally:
            bar.close()
    if saved_step != step:  # stopped between evaluations
        elapsed += time.perf_counter() - window_start
        checkpoint()
    final: dict = {}
    if run.final_evaluate:
        if par.sharded:
            par.view(model)
        if ddp.main:
            full = par.replica if par.sharded else model
            full.eval()
            final = run.final_evaluate(full, autocast)
            full.train()
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
            "val_loss_rising_evals": rising_evals(history),
            "tokens_per_s": round(tokens_seen / elapsed, 1) if elapsed else None,
            "train_seconds": round(elapsed, 2),
            "device": str(device),
            "precision": str(amp_dtype or torch.float32).removeprefix("torch."),
            "processes": ddp.world,
            **({"parallel": "fsdp"} if par.sharded else {}),
            **run.summary,
            **final,
        }
    )
    if live:
        # metrics.json holds only figures worth comparing across experiments; the rest of the
        # summary (run id, parameters, seconds, device...) is provenance, in summary.json beside it
        for key, value in summary.items():
            if key in COMPARABLE_METRICS and isinstance(value, (int, float)):
                live.summary[key] = value
        for key in [k for k in live.summary if k not in COMPARABLE_METRICS and k != "step"]:
            del live.summary[key]
        if history:
            from gptlab.plots import loss_figure  # matplotlib (slow to import): only when a run ends with history

            live.log_image("loss.png", loss_figure(history, run.name))
        live.make_summary()
        live.end()
        write_json(Path(live_dir) / "summary.json", summary)
    return TrainResult(summary, latest_dir, best_dir if best_dir.exists() else None)


# The figures of a training run that `dvc metrics show` / `dvc exp show` compare (the fixed
# windows' val_bits_per_byte stays in the plots: the whole val split's figure supersedes it).
COMPARABLE_METRICS = (
    "train_loss",
    "val_loss",
    "full_val_bits_per_byte",
    "best_val_loss",
    "base_val_loss",
    "val_loss_gain",
    "tokens_per_s",
    "mfu",
)


def _rng_states() -> tuple:
    """The torch (CPU and CUDA) and python RNG states, to undo what an evaluation drew."""
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, random.getstate()


def _set_rng_states(states: tuple) -> None:
    cpu, cuda, py = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(py)


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
    if not is_main_process():
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
