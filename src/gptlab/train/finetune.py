"""Instruction fine-tuning: LoRA adapters (default) or all weights, on Alpaca-format splits.

It is the pretraining loop (:func:`gptlab.train.loop.train_loop`) with another batch source:
shuffled, padded instruction batches (:class:`gptlab.data.instructions.InstructionBatches`),
so optimizer, schedule, clipping, AMP, checkpoints, exact resume and DVCLive logs are shared.
The loop's evaluation of step 0 is the base model's val loss on the same split (LoRA's zero
``B`` leaves the base's outputs unchanged), so the curves start there and the gain is a number.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from gptlab.checkpoint import load_weights, read_config, save_model
from gptlab.convert.load_any import load_any
from gptlab.convert.model_card import CARD_KEY, finetuned_card
from gptlab.convert.peft import peft_files
from gptlab.data.instructions import InstructionBatches, encode_records, eval_batches, load_records
from gptlab.data.prompts import PROMPT_STYLE_KEY, encode_prompt, format_prompt
from gptlab.device import pick_device
from gptlab.io import atomic_dir
from gptlab.lora import inject_lora, lora_parameter_counts, lora_state, mark_only_lora_trainable, merge_lora, model_hash, save_adapter
from gptlab.model import GPT
from gptlab.params import FinetuneParams, LoraParams
from gptlab.sampling import SamplingConfig, generate
from gptlab.train.cadence import finetune_cadence, report_finetune, with_interval
from gptlab.train.evaluate import split_loss
from gptlab.train.loop import train_loop
from gptlab.train.run import LoopRun, TrainResult, checkpoint_root, code_sha256, json_sha256, run_id
from gptlab.train.runtime import setup_distributed


@dataclasses.dataclass
class FinetuneResult:
    """A finished fine-tuning run: the loop's result, the tuned model (LoRA still unmerged), its
    tokenizer spec, the LoRA config (None for full fine-tuning), the base weights' sha256 and the
    prompt style it was trained with (recorded in the published model)."""

    train: TrainResult
    model: GPT
    tokenizer_spec: str
    lora: object | None
    base_sha256: str
    prompt_style: str = "alpaca"
    card: dict = dataclasses.field(default_factory=dict)  # the base's model card (name, license), carried to the published model


class InstructionSource:
    """Training batches for :func:`gptlab.train.loop.train_loop`: each micro-step every rank draws
    ``world`` batches from the same shuffled sequence and keeps its own."""

    def __init__(self, batches: InstructionBatches):
        self.batches = batches

    def step_batches(self, accum: int, rank: int, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's ``accum`` micro-batches ``(inputs, targets)``, (batch, T) int64."""
        for _ in range(accum):
            for r in range(world):
                batch = next(self.batches)
                if r == rank:
                    yield batch

    def state(self) -> dict:
        """Epoch, position and generator state (JSON-able)."""
        return self.batches.state_dict()

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state`."""
        self.batches.load_state_dict(state)


NO_TARGETS = "no target tokens to score: every example was masked or truncated away; raise finetune.allowed_max_length"


def scored_batches(examples: list, batch_size: int, max_batches: int | None = None, **collate_kwargs) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """``examples`` in order for :func:`split_loss` (the first ``max_batches`` batches when given):
    ``(inputs, targets, target tokens)``, (batch, T) int64, each batch weighted by its unmasked targets."""
    for x, y in itertools.islice(eval_batches(examples, batch_size, **collate_kwargs), max_batches):
        yield x, y, int((y != -100).sum())


def base_tokenizer_spec(base_dir: Path) -> str:
    """Return the tokenizer spec to save beside a model derived from ``base_dir``."""
    spec = read_config(base_dir).get("tokenizer", "gpt2")
    return spec if spec == "gpt2" else str(base_dir / spec)


def finetune(
    base_dir: str | Path,
    train_path: str | Path,
    val_path: str | Path,
    p: FinetuneParams,
    seed: int,
    live_dir: str | Path | None = None,
    stop_after_steps: int | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Fine-tune the gptlab model in ``base_dir`` on the records of ``train_path`` (JSON), measuring on ``val_path``.

    Returns the result with the summary (train/val loss, the base model's val loss on the same
    split (step 0's) and the gain, trainable and total parameters) and the tuned model in memory.
    """
    base_dir = Path(base_dir)
    ddp = setup_distributed(p.device)
    device = pick_device(p.device, ddp)
    model, tokenizer = load_any(base_dir, device)
    tokenizer_spec = base_tokenizer_spec(base_dir)
    train_records = load_records(train_path)
    val_records = load_records(val_path)
    ctx = model.config.context_length
    max_len = min(p.allowed_max_length or ctx, ctx)
    collate_kwargs = {"pad_id": tokenizer.eot_token, "allowed_max_length": max_len, "mask_prompt": p.mask_prompt}
    train_examples = encode_records(train_records, tokenizer, p.prompt_style)
    val_examples = encode_records(val_records, tokenizer, p.prompt_style) if val_records else train_examples[: p.batch_size]

    cadence = finetune_cadence(p, len(train_examples), ddp.world)
    if ddp.main:
        report_finetune(cadence, p, len(train_examples))
    p = with_interval(p, cadence)  # a null eval_interval becomes the derived one (and the run id names it)

    base_sha = model_hash(base_dir)
    torch.manual_seed(seed)
    random.seed(seed)
    lora_cfg = None
    if p.method == "lora":
        lora_cfg = p.lora
        inject_lora(model, lora_cfg)
        mark_only_lora_trainable(model)
        model.to(device)
    trainable, total = lora_parameter_counts(model)
    if ddp.main:
        print(f"finetune: {p.method}, {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")

    batches = InstructionBatches(train_examples, p.batch_size, seed=seed, **collate_kwargs)

    def evaluate(m: GPT, autocast) -> dict:
        val = split_loss(m, scored_batches(val_examples, p.batch_size, p.eval_batches, **collate_kwargs), device, autocast, NO_TARGETS)
        train_batches = scored_batches(train_examples, p.batch_size, p.eval_batches or len(val_examples) // p.batch_size + 1, **collate_kwargs)
        train = split_loss(m, train_batches, device, autocast, NO_TARGETS)
        return {"train_loss": round(train, 5), "val_loss": round(val, 5), "val_perplexity": round(math.exp(min(val, 50)), 3)}

    sample = _sampler(tokenizer, val_records[0] if val_records else train_records[0], p.prompt_style, ctx)
    data = {"base": base_sha, "seed": seed, "data": json_sha256(train_records), **({"val": json_sha256(val_records)} if val_records else {})}
    rid = run_id("finetune", p, code=code_sha256("gptlab.train.finetune"), **data)
    run = LoopRun(
        name="finetune",
        run_id=rid,
        run_dir=checkpoint_root(p.checkpoint_dir) / rid,
        tokenizer_spec=tokenizer_spec,
        source=InstructionSource(batches),
        evaluate=evaluate,
        accum=p.grad_accum,
        sample=sample,
        extra={"method": p.method, "base_sha256": base_sha},
        summary={
            "method": p.method,
            "train_examples": len(train_examples),
            "val_examples": len(val_examples),
            "train_epochs": round(cadence.passes, 3),
            "eval_interval": cadence.eval_interval,
        },
        initial_val_name="base_val_loss",
    )
    result = train_loop(model, p, run, ddp, device, live_dir, stop_after_steps, on_eval)
    if p.parallel == "fsdp" and ddp.world > 1:  # the trained model is sharded: take the full one from latest/
        model = _trained_model(base_dir, lora_cfg, result.latest, device)
    card = read_config(base_dir).get(CARD_KEY) or {}
    return FinetuneResult(result, model, tokenizer_spec, lora_cfg, base_sha, p.prompt_style, card)


def _sampler(tokenizer, record: dict, prompt_style: str, ctx: int) -> Callable[[GPT], str]:
    """Return ``sample(model)``: the instruction of ``record`` and the model's greedy 32-token answer to its prompt."""
    template = tokenizer.chat_template
    ids = encode_prompt(tokenizer, format_prompt(record["instruction"], record.get("input") or "", prompt_style, template), prompt_style)

    def sample(m: GPT) -> str:
        out = generate(m, [ids[-(ctx - 32) :]], SamplingConfig(32, temperature=0.0), [tokenizer.eot_token], pad_token=tokenizer.eot_token)
        return record["instruction"] + "\n-> " + tokenizer.decode(out[0])

    return sample


def _trained_model(base_dir: Path, lora_cfg, latest: Path, device: torch.device) -> GPT:
    """The base model (with LoRA layers for ``lora_cfg``) carrying the trained weights of ``latest/``, on ``device``."""
    model, _ = load_any(base_dir, device)
    if lora_cfg is not None:
        inject_lora(model, lora_cfg)
    load_weights(model, latest)
    return model.to(device)


def publish_finetuned(result: FinetuneResult, out: str | Path) -> Path:
    """Write ``out/``: the merged model (``model.safetensors`` + ``config.json``, a plain gptlab
    checkpoint any stage can load, recording the prompt style under ``prompt_style`` and the base's
    model card, name and license, as a fine-tune's, :func:`gptlab.convert.model_card.finetuned_card`) and, for
    LoRA, ``out/adapter/`` (adapter weights + JSON).
    Replaces ``out`` once complete; returns it."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        model = result.model
        if result.lora is not None:
            save_adapter_and_peft(model, result.lora, tmp / "adapter", result.base_sha256)
            model = merge_lora(model)
        summary = {k: result.train.summary.get(k) for k in ("method", "steps", "val_loss")}
        extra = {"finetune": summary, PROMPT_STYLE_KEY: result.prompt_style, CARD_KEY: finetuned_card(result.card, "full" if result.lora is None else "lora")}
        staged = save_model(tmp / "merged", model, result.tokenizer_spec, extra)
        for f in staged.iterdir():
            shutil.move(str(f), tmp / f.name)
        staged.rmdir()
    return out


def save_adapter_and_peft(model: GPT, cfg: LoraParams, folder: str | Path, base_hash: str) -> Path:
    """Write the LoRA adapter of ``model`` to ``folder`` (:func:`gptlab.lora.save_adapter`) with its
    PEFT form beside it (``adapter_config.json`` + ``adapter_model.safetensors`` for the Hugging
    Face model ``export_hf`` makes of the base, :func:`gptlab.convert.peft.peft_files`; where that
    has no form, ``adapter.json``'s ``peft`` says why); return the folder."""
    extra, files = peft_files(model, cfg, lora_state(model))
    return save_adapter(model, cfg, folder, base_hash, extra, files)
