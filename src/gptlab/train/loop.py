"""The training loop: one process or DistributedDataParallel / FSDP under torchrun.

Each optimizer step draws its global batch of ``tokens_per_step / context_length`` random
windows from one data generator that every rank holds, and rank ``r`` takes its share of
each micro-step; so K processes see exactly the batch one process would (gradients are
averaged the same way), and every rank reads different windows. AdamW (weight decay on
matrices only), linear warmup then cosine decay to ``min_lr``, gradient clipping, gradient
accumulation, mixed precision and optional ``torch.compile``.

Before the first step (step 0: the untrained or base model), then every ``eval_interval``
steps and at the end, rank 0 measures the mean loss over fixed val and train windows,
perplexity and bits per byte, samples a continuation and logs through DVCLive; after each
evaluation but step 0's it writes a training checkpoint (``latest/``; ``best/`` when val loss
improved). Every ``log_interval`` steps it logs the running train loss, the learning rate and
the gradient norm (:class:`~gptlab.train.running.RunningMeans`, summed on the device and read
only then). A resumed run restores weights, optimizer moments, step, data generator, RNG states,
the curves so far and the running sums, and continues bit for bit without re-logging step 0.

The parts: :class:`~gptlab.train.state.LoopState` (what a step carries to the next, saved in
``state.json``), :meth:`Trainer.train_step`, the :class:`~gptlab.train.evaluate.Evaluator`, the
:class:`~gptlab.train.checkpointer.Checkpointer`, the :class:`~gptlab.train.logger.LiveLogger`,
and :meth:`Trainer.train` over them.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gptlab.device import Distributed, pick_precision
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, fault_point
from gptlab.model import GPT
from gptlab.params import LoopParams
from gptlab.progress import progress
from gptlab.rng import capture_rng, restore_rng
from gptlab.train.checkpointer import Checkpointer
from gptlab.train.evaluate import Evaluator, rising_evals
from gptlab.train.logger import LiveLogger
from gptlab.train.optim import lr_at, make_optimizer
from gptlab.train.parallel import Parallel
from gptlab.train.run import LoopRun, TrainResult
from gptlab.train.running import RunningMeans
from gptlab.train.runtime import StopRequest, peak_flops
from gptlab.train.state import LoopState

SYNC_EVERY = 10  # off the CPU: steps between reads of the loss (a host sync) for the finite check and the progress bar


def sync_interval(device: torch.device) -> int:
    """Steps between reads of the training loss: every step on the CPU (a read costs nothing
    there, and a non-finite loss stops the run before its update), ``SYNC_EVERY`` on an accelerator."""
    return 1 if device.type == "cpu" else SYNC_EVERY


@dataclass
class StepResult:
    """What one optimizer step computed: its mean loss over the micro-batches (nats/token; None
    when the loss was left on the device this step), the tokens it consumed on all ranks, and
    the gradient norm before clipping (None without clipping)."""

    loss: float | None
    tokens: int
    grad_norm: torch.Tensor | None


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """Whether ``compile`` (true | false | auto) compiles on ``device``: auto is on for CUDA only."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def device_batches(batches, device: torch.device):
    """``batches`` of host (x, y) tensors moved to ``device``. On CUDA each is pinned and its copy
    issued one micro-batch ahead (non-blocking), so the host never waits for a transfer; elsewhere
    a plain ``.to``."""
    if device.type != "cuda":
        for x, y in batches:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    ahead = None
    for x, y in batches:
        nxt = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        if ahead is not None:
            yield ahead
        ahead = nxt
    if ahead is not None:
        yield ahead


class Trainer:
    """One training run of ``model`` (see :func:`train_loop`): built ready to step (model
    prepared for its parallel mode, optimizer, state resumed from ``latest/`` when there is one)."""

    def __init__(self, model: GPT, p: LoopParams, run: LoopRun, ddp: Distributed, device: torch.device, live_dir=None, on_eval=None):
        self.model, self.p, self.run, self.ddp, self.device, self.on_eval = model, p, run, ddp, device, on_eval
        self.amp_dtype = pick_precision(p.precision, device)
        self.autocast = torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.n_params, self.n_trainable = model.num_parameters(), model.num_parameters(trainable_only=True)
        self.par = Parallel(p, ddp, device, self.amp_dtype)
        self.par.prepare(model)
        self.optimizer = make_optimizer(model, p, device)
        self.checkpointer = Checkpointer(run, p, self.par, ddp, model, self.optimizer)
        self.checkpointer.prepare()
        if ddp.main and p.warmup_note():
            print(f"{run.name}: {p.warmup_note()}")
        if ddp.world > 1:
            dist.barrier()
        self.state = self.checkpointer.resume() or LoopState()
        self.compiled = compile_enabled(p.compile, device)
        self.train_model = self.par.wrap(torch.compile(model) if self.compiled else model)
        self.sync_every = sync_interval(device)
        self.pending_losses: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) not read yet
        self.running = RunningMeans(device)
        self.running.restore(self.state.running)
        self.compile_seconds, self.warmup_tokens = None, 0
        self.evaluator = Evaluator(run, p, ddp.world, self.autocast, peak_flops(device), self.checkpointer.save_best)
        self.logger = LiveLogger(live_dir, self.state.history, self.state.train_log) if ddp.main and live_dir else None
        self.bar = None
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def train_step(self) -> StepResult:
        """One optimizer step at ``state.step``: the learning rate of the schedule, ``run.accum``
        micro-batches forward and backward (gradients reduced across ranks on the last), unscaling,
        clipping and the AdamW update. A non-finite loss stops the run (GptlabError; see
        :meth:`read_losses`: on the CPU before this step's update, elsewhere within ``sync_every``
        steps and always before an evaluation or a save)."""
        p, ddp, optimizer, scaler, accum = self.p, self.ddp, self.optimizer, self.scaler, self.run.accum
        lr = lr_at(self.state.step, p)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        for micro, (x, y) in enumerate(device_batches(self.run.source.step_batches(accum, ddp.rank, ddp.world), self.device)):
            tokens += x.numel() * ddp.world
            sync = ddp.world == 1 or micro == accum - 1
            with self.par.sync(self.model, self.train_model, sync), self.autocast:
                _, loss = self.train_model(x, y)
                scaled = loss / accum
            (scaler.scale(scaled) if scaler else scaled).backward()
            loss_sum += loss.detach()
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = None
        if p.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_([q for q in self.model.parameters() if q.requires_grad], p.grad_clip)
        step_loss_t = loss_sum / accum
        self.pending_losses.append((self.state.step, step_loss_t))
        self.running.add(step_loss_t, grad_norm)
        step_loss = None
        next_step = self.state.step + 1
        if len(self.pending_losses) >= self.sync_every or self.evaluator.due(next_step) or next_step >= p.max_steps:
            step_loss = self.read_losses()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        fault_point("mid_step")
        return StepResult(step_loss, tokens, grad_norm)

    def read_losses(self) -> float | None:
        """Read the losses left on the device (one host sync); return the last (None if none
        pending). GptlabError naming the first step whose loss is not finite."""
        if not self.pending_losses:
            return None
        steps, losses = zip(*self.pending_losses)
        self.pending_losses = []
        values = torch.stack(losses).tolist() if len(losses) > 1 else [losses[0].item()]
        for step, value in zip(steps, values):
            if not math.isfinite(value):
                latest = self.checkpointer.latest
                raise GptlabError(
                    f"step {step}: training loss is {value}; stopped. The last good checkpoint is {latest if latest.exists() else 'none yet'}; "
                    f"lower {self.run.name}.lr or use precision: fp32"
                )
        return values[-1]

    def save(self) -> None:
        """Write ``latest/`` at the current step (its evaluation marked pending if not done yet,
        the running sums since the last log point with it)."""
        s = self.state
        s.running = self.running.state()
        self.checkpointer.save(s, pending=self.evaluator.due(s.step) and not s.evaluated(s.step))

    def log_point(self) -> None:
        """Log the running means since the last log point with the last step's learning rate (one host
        read; with several processes every rank joins the loss's all-reduce)."""
        s = self.state
        row = {"step": s.step, **self.running.take(self.ddp.world), "lr": float(f"{lr_at(s.step - 1, self.p):.6g}")}
        s.train_log.append(row)
        if self.logger:
            self.logger.log_train(row)

    def full_model(self) -> GPT:
        """The full model rank 0 evaluates and saves (FSDP: the replica, gathered just before)."""
        return self.par.replica if self.par.sharded else self.model

    def eval_and_checkpoint(self, tokens_per_s: float | None) -> None:
        """Evaluate, log and save the current step; ``latest/`` written last is the commit point.
        ``tokens_per_s`` None: the evaluation of step 0, before any update (no throughput, no
        ``best/``, no checkpoint: a run cut short before its first save starts again from step 0).
        An evaluation cut short (KeyboardInterrupt) leaves no trace: history, best and RNG are rolled back."""
        s = self.state
        initial = tokens_per_s is None
        s.pending_tokens_per_s = tokens_per_s or 0.0
        if self.par.sharded:
            self.par.view(self.model)  # every rank joins the gather; rank 0 evaluates the full replica
        if self.ddp.main:
            before = (len(s.history), s.best_val_loss, capture_rng())
            try:
                row = self.evaluator.evaluate(self.full_model(), s, tokens_per_s)
                s.history.append(row)
                if self.logger:
                    self.logger.log(row)
                if self.on_eval:
                    self.on_eval(row)
                for line in self.evaluator.report(s):
                    self.bar.write(line)
                if not self.par.sharded and not initial:
                    self.save()
            except KeyboardInterrupt:  # forget the unfinished evaluation: it is redone on resume
                del s.history[before[0] :]
                s.best_val_loss = before[1]
                restore_rng(*before[2])
                raise
        if self.par.sharded and not initial:
            self.save()  # a collective: every rank writes its shards
        if self.ddp.world > 1:
            dist.barrier()

    def timed_warmup_step(self) -> StepResult:
        """The first compiled step of this process, timed apart (``compile_seconds``): the timing
        window restarts after it, so tokens/s and MFU are the compiled model's steady state."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.compile_seconds = time.perf_counter() - start
        self.warmup_tokens = out.tokens
        self.window_start, self.window_tokens = time.perf_counter(), -out.tokens  # the caller adds them back
        return out

    def end_window(self) -> float:
        """Close the current timing window: add its seconds to the state; return its tokens/s."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        tokens_per_s = self.window_tokens / max(time.perf_counter() - self.window_start, 1e-9)
        self.state.train_seconds += time.perf_counter() - self.window_start
        self.window_start, self.window_tokens = time.perf_counter(), 0
        return tokens_per_s

    def interrupted(self, in_step: bool) -> None:
        """After SIGINT/SIGTERM: save the last completed step unless ``latest/`` has it, and say where it is."""
        s, saved = self.state, self.checkpointer
        s.train_seconds += time.perf_counter() - self.window_start
        if not in_step and saved.saved_step != s.step:
            self.read_losses()  # a non-finite loss is never saved
            self.save()
        if self.ddp.main:
            where = (
                f"saved step {s.step} to {saved.latest}" if saved.saved_step == s.step else f"stopped mid-step; the last checkpoint is step {saved.saved_step}"
            )
            self.bar.write(f"{self.run.name}: interrupted; {where}; run again to resume")

    def train(self, stop_after_steps: int | None = None) -> TrainResult:
        """Step to ``max_steps`` (or ``stop_after_steps`` more), evaluating and saving as due; return the result.

        The DVCLive folder is replaced only when the run ends normally: a run that fails leaves the previous one intact."""
        try:
            return self._train(stop_after_steps)
        finally:
            if self.logger:
                self.logger.close()

    def _train(self, stop_after_steps: int | None) -> TrainResult:
        s, p, ddp = self.state, self.p, self.ddp
        self.model.train()
        start_step = s.step
        self.bar = progress(total=p.max_steps, initial=s.step, desc=self.run.name, unit="step", **({} if ddp.main else {"disable": True}))
        self.window_start, self.window_tokens = time.perf_counter(), 0
        in_step = False
        with StopRequest() as stop:
            try:
                if s.step == 0 and not s.history:  # the curves start at the untrained (or base) model
                    self.eval_and_checkpoint(None)
                    self.window_start = time.perf_counter()
                if self.evaluator.due(s.step) and not s.evaluated(s.step):  # interrupted during this step's evaluation
                    self.eval_and_checkpoint(s.pending_tokens_per_s)
                while s.step < p.max_steps:
                    if stop.requested(ddp, self.device):
                        raise KeyboardInterrupt
                    if stop_after_steps is not None and s.step - start_step >= stop_after_steps:
                        break
                    in_step = True
                    out = self.timed_warmup_step() if self.compiled and self.compile_seconds is None else self.train_step()
                    s.step += 1
                    s.tokens_seen += out.tokens
                    self.window_tokens += out.tokens
                    in_step = False
                    fault_point("step_end")
                    self.bar.update(1)
                    if out.loss is not None:  # read at a sync point: every step on the CPU
                        now = time.perf_counter()
                        self.bar.set_postfix(loss=f"{out.loss:.3f}", tok_s=f"{self.window_tokens / max(now - self.window_start, 1e-9):,.0f}")
                    if s.step % p.log_interval == 0 or s.step == p.max_steps:
                        self.log_point()
                    if self.evaluator.due(s.step):
                        self.eval_and_checkpoint(self.end_window())
                        self.window_start = time.perf_counter()
            except KeyboardInterrupt:
                self.interrupted(in_step)
                raise
            finally:
                self.bar.close()
        if self.checkpointer.saved_step != s.step:  # stopped between evaluations
            self.read_losses()
            s.train_seconds += time.perf_counter() - self.window_start
            self.save()
        final = self.final_evaluate()
        summary = self.summary(final)
        if self.logger:
            self.logger.finish(summary, s.history, self.run.name, s.train_log)
        best = self.checkpointer.best
        return TrainResult(summary, self.checkpointer.latest, best if best.exists() else None, ddp)

    def final_evaluate(self) -> dict:
        """Rank 0's figures on the final weights (``run.final_evaluate``); every rank joins the gather and the barrier."""
        final: dict = {}
        if self.run.final_evaluate:
            if self.par.sharded:
                self.par.view(self.model)
            if self.ddp.main:
                final = self.evaluator.final(self.full_model())
        if self.ddp.world > 1:
            dist.barrier()
        return final

    def summary(self, final: dict) -> dict:
        """The run's summary: size, the last evaluation's figures, best val loss, throughput, where it ran, and ``final``."""
        s = self.state
        last = s.history[-1] if s.history else {}
        summary = {"run_id": self.run.run_id, "steps": s.step, "tokens_seen": s.tokens_seen, "parameters": self.n_params}
        if self.n_trainable != self.n_params:
            summary["trainable_parameters"] = self.n_trainable
        summary.update({k: v for k, v in last.items() if k not in ("step", "tokens", "lr", "tokens_per_s", "mfu", "sample")})
        if self.run.initial_val_name and s.history and s.history[0]["step"] == 0:
            summary[self.run.initial_val_name] = s.history[0]["val_loss"]
            summary["val_loss_gain"] = round(s.history[0]["val_loss"] - last["val_loss"], 5)
        summary.update(
            {
                "best_val_loss": None if s.best_val_loss == float("inf") else round(s.best_val_loss, 5),
                "val_loss_rising_evals": rising_evals(s.history),
                "tokens_per_s": round((s.tokens_seen - self.warmup_tokens) / s.train_seconds, 1) if s.train_seconds else None,
                "train_seconds": round(s.train_seconds, 2),
                "device": str(self.device),
                "precision": str(self.amp_dtype or torch.float32).removeprefix("torch."),
                "processes": self.ddp.world,
                **({"compile_seconds": round(self.compile_seconds, 2)} if self.compile_seconds is not None else {}),
                **({"parallel": "fsdp"} if self.par.sharded else {}),
                **self.run.summary,
                **final,
            }
        )
        return summary


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
    parameters, warmup + cosine, clipping, accumulation, AMP, optional compile and DDP/FSDP;
    evaluation, DVCLive logs (``live_dir``, rank 0) and a resumable checkpoint every
    ``p.eval_interval`` steps; ``best/`` on a new lowest val loss. Returns the summary and the
    checkpoint paths.

    SIGINT/SIGTERM (main thread) stop the run at the next step boundary: the checkpoint of the
    last completed step is saved, then KeyboardInterrupt is raised; a second signal stops at
    once. An evaluation cut short is redone when the run resumes, so ``latest/state.json``, the
    DVCLive history and ``best/`` always agree.
    """
    return Trainer(model, p, run, ddp, device, live_dir, on_eval).train(stop_after_steps)


def publish(result: TrainResult, out: str | Path) -> bool:
    """Copy the final model to ``out`` and the best to ``out/best`` (weights and config, no
    training state), replacing ``out`` once complete. Only rank 0 writes; returns True there."""
    if not result.ddp.main:
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
