"""The litgpt track: drive litgpt (fine-tune with LoRA, generate) on our instruction data.

litgpt's ``finetune_lora`` runs as a subprocess (its CLI is its stable interface); generation
uses litgpt's Python API (``litgpt.LLM``). Everything runs offline: ``HF_HUB_OFFLINE=1`` and
absolute checkpoint paths, since litgpt treats a relative unknown name as a hub repository.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.io import write_json
from gptlab.params.litgpt import LitgptParams
from gptlab.progress import progress, quiet


@dataclass
class LitgptFinetuneResult:
    """What a fine-tune run left: ``final_dir`` (merged model + ``lit_model.pth.lora``, litgpt
    checkpoint layout), ``metrics_csv`` (litgpt's CSV log: loss per iteration, or None),
    ``log_path`` (the run's full output) and wall-clock ``seconds``."""

    final_dir: Path
    metrics_csv: Path | None
    log_path: Path
    seconds: float


def to_litgpt_record(record: dict) -> dict:
    """Return one Alpaca record in litgpt's JSON data format: ``instruction``, ``input``, ``output`` (all str)."""
    try:
        return {"instruction": str(record["instruction"]), "input": str(record.get("input") or ""), "output": str(record["output"])}
    except KeyError as e:
        raise GptlabError(f"instruction record {json.dumps(record)[:120]} lacks the {e.args[0]!r} key; every record needs instruction and output") from e


def write_litgpt_json(records: Iterable[dict], path: str | Path) -> Path:
    """Write ``records`` (Alpaca dicts) to ``path`` as litgpt's JSON data (a list of
    instruction/input/output dicts), atomically; return ``path``."""
    path = Path(path)
    write_json(path, [to_litgpt_record(r) for r in records])
    return path


def litgpt_command() -> list[str]:
    """Return the argv prefix that runs the litgpt CLI of this Python environment."""
    return [sys.executable, "-m", "litgpt"]


def offline_env() -> dict[str, str]:
    """Return ``os.environ`` plus the settings that keep litgpt and the HF hub offline and quiet."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def check_checkpoint_dir(checkpoint_dir: str | Path) -> Path:
    """Return ``checkpoint_dir`` as an absolute path after checking it holds a litgpt checkpoint."""
    path = Path(checkpoint_dir).expanduser().resolve()
    needed = ["lit_model.pth", "model_config.yaml", "tokenizer_config.json"]
    missing = [n for n in needed if not (path / n).is_file()]
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
        missing.append("tokenizer.json")
    if missing:
        raise GptlabError(f"{path}: not a litgpt checkpoint directory (missing {', '.join(missing)}); run the convert stage first")
    return path


def finetune_args(checkpoint_dir: Path, data_path: Path, out_dir: Path, p: LitgptParams, split_file: bool) -> list[str]:
    """Return the ``litgpt finetune_lora`` arguments for one run (checked against litgpt 0.5.13's CLI)."""

    def b(x: bool) -> str:
        return "true" if x else "false"

    optimizer = {"class_path": "torch.optim.AdamW", "init_args": {"lr": p.lr, "weight_decay": p.weight_decay}}
    args = [
        "finetune_lora", str(checkpoint_dir),
        "--out_dir", str(out_dir),
        "--precision", p.precision,
        "--devices", "1",
        "--seed", str(p.seed),
        "--logger_name", "csv",
        "--data", "JSON",
        "--data.json_path", str(data_path),
        "--data.num_workers", "0",
        "--data.seed", str(p.seed),
        "--data.prompt_style", "alpaca",
        "--lora_r", str(p.lora_r),
        "--lora_alpha", str(p.lora_alpha),
        "--lora_dropout", str(p.lora_dropout),
        "--lora_query", b(p.lora_query),
        "--lora_key", b(p.lora_key),
        "--lora_value", b(p.lora_value),
        "--lora_projection", b(p.lora_projection),
        "--lora_mlp", b(p.lora_mlp),
        "--lora_head", b(p.lora_head),
        "--train.max_steps", str(p.max_steps),
        "--train.epochs", str(p.epochs),
        "--train.micro_batch_size", str(p.micro_batch_size),
        "--train.global_batch_size", str(p.global_batch_size),
        "--train.lr_warmup_steps", str(p.warmup),
        "--train.max_seq_length", str(p.max_seq_length),
        "--train.save_interval", "null",
        "--train.log_interval", "1",
        "--eval.interval", str(p.eval_interval or p.max_steps + 1),
        "--eval.max_iters", str(p.eval_max_iters),
        "--eval.max_new_tokens", str(p.eval_max_new_tokens),
        "--eval.initial_validation", "false",
        "--eval.final_validation", "true",
        "--optimizer", json.dumps(optimizer),
    ]  # fmt: skip
    if split_file:
        args += ["--data.val_split_fraction", str(p.val_split_fraction)]
    return args


def finetune_lora(
    checkpoint_dir: str | Path, train_json: str | Path, val_json: str | Path | None, out_dir: str | Path, params: LitgptParams
) -> LitgptFinetuneResult:
    """Fine-tune ``checkpoint_dir`` with ``litgpt finetune_lora`` on litgpt JSON data; return where it wrote.

    ``train_json``/``val_json`` are files written by :func:`write_litgpt_json`; with
    ``val_json`` None litgpt splits ``params.val_split_fraction`` off ``train_json``. The
    merged model lands in ``out_dir/final`` (prompt style alpaca, as our records), the data
    litgpt read in ``out_dir/data``, litgpt's output in ``out_dir/finetune.log``. Raises
    GptlabError with the tail of litgpt's output when it fails.
    """
    ckpt = check_checkpoint_dir(checkpoint_dir)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("data", "final", "logs"):  # a rerun must not mix with an earlier run's outputs
        shutil.rmtree(out / stale, ignore_errors=True)
    data_dir = out / "data"
    data_dir.mkdir()
    for src, name in ((train_json, "train.json"), (val_json, "val.json")):
        if src is None:
            continue
        if not Path(src).is_file():
            raise GptlabError(f"{src}: no such litgpt JSON file; write it with write_litgpt_json first")
        shutil.copyfile(src, data_dir / name)
    split_file = val_json is None
    data_path = data_dir / "train.json" if split_file else data_dir
    argv = litgpt_command() + finetune_args(ckpt, data_path, out, params, split_file)
    log_path = out / "finetune.log"
    t0 = time.perf_counter()
    rc, tail = _run_logged(argv, log_path, params.timeout_s, cwd=out)
    seconds = time.perf_counter() - t0
    if rc != 0:
        why = "timed out" if rc is None else f"exited with status {rc}"
        raise GptlabError(f"litgpt finetune_lora {why} (full log: {log_path}):\n" + "\n".join(tail))
    final = out / "final"
    if not (final / "lit_model.pth").is_file():
        raise GptlabError(f"litgpt finetune_lora left no merged model in {final} (log: {log_path})")
    csvs = sorted((out / "logs" / "csv").glob("**/metrics.csv"))
    return LitgptFinetuneResult(final_dir=final, metrics_csv=csvs[-1] if csvs else None, log_path=log_path, seconds=seconds)


def read_litgpt_losses(metrics_csv: str | Path) -> list[dict]:
    """Return the training-loss rows of litgpt's CSV log, in order: dicts of ``iter`` (micro-batch
    count, int), ``epoch`` (int), ``loss`` (running mean over one optimizer step's micro-batches)
    and ``learning_rate`` (float). (The CSV's ``step`` column is the iteration, Lightning's log step.)"""

    rows = []
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("loss"):
                rows.append({"iter": int(row["iter"]), "epoch": int(row["epoch"]), "loss": float(row["loss"]), "learning_rate": float(row["learning_rate"])})
    return rows


def _run_logged(argv: list[str], log_path: Path, timeout_s: float | None, cwd: Path) -> tuple[int | None, list[str]]:
    """Run ``argv``, copying its output to ``log_path`` (and to stderr unless quiet); return (status or None on timeout, last 30 lines)."""
    tail: deque[str] = deque(maxlen=30)
    echo = not quiet()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=offline_env(), cwd=cwd, bufsize=1)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip())
                if echo:
                    print(line, end="", file=sys.stderr, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        reader.join(timeout=10)
    return rc, list(tail)


def litgpt_prompt(style, instruction: str, input: str = "") -> str:
    """Return the full prompt text ``style`` (a ``litgpt.prompts.PromptStyle``) makes of one record.

    Alpaca-like styles place ``input`` themselves; chat styles that ignore it (ChatML) get it
    appended to the instruction after a blank line.
    """
    text = style.apply(instruction, input=input)
    if input and input not in text:
        text = style.apply(f"{instruction}\n\n{input}")
    return text


def load_llm(checkpoint_dir: str | Path, precision: str = "32-true"):
    """Return ``litgpt.LLM`` loaded from a local checkpoint directory (offline) on the GPU when
    there is one, else the CPU, in ``precision`` (32-true: litgpt's CPU default bf16 garbles small models)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from litgpt import LLM  # litgpt: the optional [litgpt] extra

    ckpt = check_checkpoint_dir(checkpoint_dir)
    llm = LLM.load(str(ckpt), distribute=None)
    llm.distribute(accelerator="auto", devices=1, precision=precision)
    return llm


def generate_responses(
    checkpoint_dir: str | Path,
    records: Sequence[dict],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 1337,
    precision: str = "32-true",
    top_p: float = 1.0,
) -> list[dict]:
    """Return one record per input: ``instruction``, ``input``, ``output`` (the reference) and
    ``response`` (the model's text, prompt and end-of-text excluded, stripped).

    Generates with ``litgpt.LLM`` from ``checkpoint_dir`` in the directory's own prompt style
    (``prompt_style.yaml``, which ``finetune_lora`` sets to alpaca; else the one litgpt picks from
    the config name, e.g. SmolLM2's ChatML). Record ``i`` samples with seed ``seed + i``, so a
    response does not depend on the others; temperature 0 is greedy.
    """
    import torch  # torch (slow to import): the litgpt stage's other steps run litgpt in a subprocess
    from litgpt.prompts import Default  # litgpt: the optional [litgpt] extra

    llm = load_llm(checkpoint_dir, precision)
    style = llm.prompt_style
    llm.prompt_style = Default()  # prompts are formatted here, so that ``input`` is not dropped
    out = []
    with progress(total=len(records), desc="litgpt generate", unit="response") as bar:
        for i, r in enumerate(records):
            rec = to_litgpt_record(r)
            torch.manual_seed(seed + i)
            text = llm.generate(
                litgpt_prompt(style, rec["instruction"], rec["input"]), max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p
            )
            out.append({**rec, "response": text.strip()})
            bar.update(1)
    return out
