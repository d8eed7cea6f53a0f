"""Alpaca-format instruction data: records, prompt styles, splits and batches.

A record is a dict with ``instruction`` (non-empty str), optional ``input`` (str; missing or
null means ``""``) and ``output`` (str); extra keys are kept as they are.

The pipeline: :func:`load_records` -> :func:`drop_duplicates` -> :func:`split_records` ->
:func:`write_splits` (all four, with near-duplicates across splits dropped: the stage's
:func:`gptlab.data.instruction_splits.split_instruction_files`), then per split
:func:`encode_records` (token ids of prompt + response + ``<|endoftext|>``, and the prompt's
length; the prompt styles live in :mod:`gptlab.data.prompts`) -> :class:`InstructionBatches`
(training, shuffled, resumable) or :func:`eval_batches` (in order) -> :func:`collate` ->
``(inputs, targets)`` for ``GPT.forward``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from gptlab.data.prompts import encode_prompt, format_example
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, write_json
from gptlab.tokenizer import Tokenizer

SPLITS = ("train", "val", "test")
IGNORE_INDEX = -100


Example = tuple[list[int], int]
"""One encoded record: (token ids of prompt + response + end-of-text, prompt length in tokens)."""


# ---------------------------------------------------------------------------- records


def load_records(path: str | Path) -> list[dict]:
    """Return the validated records of a JSON array file or a JSONL file (one object a line).

    The format is told by the first non-blank character (``[``: JSON array, else JSONL); a
    file other than ``*.jsonl`` that is one JSON object as a whole is refused (wrap it in a list).
    Each record comes back as a new dict with ``input`` normalised to a str (missing/null ->
    ``""``) and extra keys kept. GptlabError names the file, the record index (0-based; and
    the line for JSONL), the field and the fix.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors write one) is not part of the JSON
    except FileNotFoundError:
        raise GptlabError(f"{path}: not found; check the instruction data path (run `dvc repro download` first?)") from None
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path}: not UTF-8 text ({e}); save the file as UTF-8 JSON or JSONL") from None
    stripped = text.lstrip()
    items: list[tuple[object, str]] = []  # (record, where)
    if stripped.startswith("{") and path.suffix != ".jsonl":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # not one object: read it as JSONL below
        if isinstance(whole, dict):
            raise GptlabError(
                f"{path}: holds one JSON object, not a list of records; wrap the record(s) in a JSON array [ ... ] "
                "(or name the file .jsonl for one record a line)"
            )
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GptlabError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix the file or write it as JSONL") from None
        items = [(rec, "") for rec in data]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise GptlabError(
                    f"{path}: line {lineno} is not a JSON object ({e.msg}); a JSONL file holds one record a line, "
                    "a JSON file one array of records starting with ["
                ) from None
            items.append((rec, f" (line {lineno})"))
    if not items:
        raise GptlabError(f"{path}: holds no records; it needs at least one object with 'instruction' and 'output'")
    return [_validated(rec, f"{path}: record {i}{where}") for i, (rec, where) in enumerate(items)]


def _validated(record: object, where: str) -> dict:
    """Check one record; return a copy with ``input`` as a str. ``where`` prefixes errors."""
    needs = "each record needs a non-empty string 'instruction', a string 'output' and optionally a string 'input'"
    if not isinstance(record, dict):
        raise GptlabError(f"{where} is a {type(record).__name__}, not an object; {needs}")
    if not record:
        raise GptlabError(f"{where} is empty; {needs}")
    for field in ("instruction", "output"):
        if field not in record:
            raise GptlabError(f"{where}: field '{field}' is missing; {needs}")
    for field in ("instruction", "output", "input"):
        value = record.get(field)
        if field == "input" and value is None:
            continue
        if not isinstance(value, str):
            raise GptlabError(f"{where}: field '{field}' is a {type(value).__name__}, not a string; {needs}")
    if not record["instruction"].strip():
        raise GptlabError(f"{where}: field 'instruction' is empty; {needs}")
    out = dict(record)
    out["input"] = record.get("input") or ""
    return out


def drop_duplicates(records: Sequence[dict]) -> tuple[list[dict], int]:
    """Return ``(unique, dropped)``: the records with the same ``instruction``, ``input`` and
    ``output`` as an earlier one removed (first occurrence kept, order kept), and how many went.

    Compare validated records (``input`` normalised by :func:`load_records`): a duplicate left
    in would land in two splits and leak test answers into training.
    """
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for rec in records:
        key = (rec["instruction"], rec.get("input") or "", rec["output"])
        if key not in seen:
            seen.add(key)
            unique.append(rec)
    return unique, len(records) - len(unique)


def split_records(records: Sequence[dict], fractions: Sequence[float] = (0.85, 0.05, 0.10), seed: int = 0) -> dict[str, list[dict]]:
    """Return ``{"train": [...], "val": [...], "test": [...]}``: a seeded shuffle cut by ``fractions``.

    Deterministic for a given ``seed`` and input order. Sizes are the floors of
    ``fraction * n`` with the remainder given to the largest fractional parts; then, when there
    are at least as many records as positive fractions, every split with a positive fraction
    gets at least one record (taken from the largest split). Records are not copied.
    """
    fr = tuple(fractions)
    if len(fr) != 3 or any(not isinstance(f, (int, float)) or isinstance(f, bool) or not math.isfinite(f) or f < 0 for f in fr):
        raise GptlabError(f"split fractions {fr} are impossible: give three numbers >= 0 for train, val and test")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise GptlabError(f"split fractions {fr} sum to {sum(fr):.6g}, not 1; adjust train/val/test so they add up to 1")
    n = len(records)
    counts = _split_sizes(n, fr)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for name, count in zip(SPLITS, counts):
        out[name] = [records[i] for i in order[start : start + count]]
        start += count
    return out


def _split_sizes(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``n`` into integer sizes proportional to ``fractions`` (largest remainders)."""
    exact = [f * n for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    positive = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def write_splits(splits: Mapping[str, list[dict]], out_dir: str | Path) -> Path:
    """Write ``train.json``, ``val.json`` and ``test.json`` (JSON arrays, indent 2, UTF-8 as is)
    into ``out_dir``; return it. The folder is replaced as a whole, only once all three are
    written (a crash leaves the old one)."""
    missing = [name for name in SPLITS if name not in splits]
    unknown = sorted(set(splits) - set(SPLITS))
    if missing or unknown:
        raise GptlabError(f"write_splits: splits must be exactly {', '.join(SPLITS)} (missing {missing}, unknown {unknown})")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            write_json(tmp / f"{name}.json", list(splits[name]))
    return out_dir


# ---------------------------------------------------------------------------- encoding


def encode_example(record: Mapping, tokenizer: Tokenizer, style: str = "alpaca", eot_id: int | None = None) -> Example:
    """Return ``(ids, prompt_len)``: token ids of prompt + response + end-of-text (list of int)
    and the number of prompt tokens at their start.

    ``tokenizer``: any :class:`~gptlab.tokenizer.Tokenizer`; texts go through
    ``encode_ordinary`` (so ``<|endoftext|>`` written in a record is plain text), prompt and
    response separately, so ``ids[:prompt_len]`` is exactly the encoded prompt that generation
    will see. ``eot_id`` defaults to ``tokenizer.eot_token``.
    """
    prompt, response = format_example(record, style, tokenizer.chat_template)
    prompt_ids = encode_prompt(tokenizer, prompt, style)
    ids = prompt_ids + tokenizer.encode_ordinary(response) + [tokenizer.eot_token if eot_id is None else eot_id]
    return ids, len(prompt_ids)


def encode_records(records: Sequence[Mapping], tokenizer: Tokenizer, style: str = "alpaca", eot_id: int | None = None) -> list[Example]:
    """Return :func:`encode_example` of every record, in order."""
    return [encode_example(rec, tokenizer, style, eot_id) for rec in records]


def collate(
    examples: Sequence[Example | Sequence[int]],
    pad_id: int = 50256,
    ignore_index: int = IGNORE_INDEX,
    allowed_max_length: int | None = None,
    mask_prompt: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs, targets)``, both (batch, T) int64, for next-token training.

    ``examples``: ``(ids, prompt_len)`` pairs from :func:`encode_example` (or bare id lists,
    prompt length 0), each ending with its end-of-text token. With ``L`` the longest ids,
    ``T = L - 1`` (then at most ``allowed_max_length``). Row ``i``: ``inputs`` are ``ids[:-1]``
    padded with ``pad_id``; ``targets`` are ``ids[1:]`` (so the end-of-text, the first one,
    is a target and the model learns to stop) then ``ignore_index`` over the padding. With
    ``mask_prompt`` the targets that are prompt tokens are ``ignore_index`` too (the first
    response token stays). The LLMs-from-scratch ch. 7 scheme, by position rather than by
    value, so an end-of-text inside a text is never masked by mistake.
    """
    if not examples:
        raise GptlabError("collate: no examples; a batch needs at least one")
    if allowed_max_length is not None and allowed_max_length < 1:
        raise GptlabError(f"collate: allowed_max_length={allowed_max_length} is impossible: must be >= 1 (or None)")
    pairs: list[Example] = []
    for i, ex in enumerate(examples):
        if isinstance(ex, tuple) and len(ex) == 2 and not isinstance(ex[0], int):
            ids, prompt_len = list(ex[0]), int(ex[1])
        else:
            ids, prompt_len = list(ex), 0
        if len(ids) < 2:
            raise GptlabError(f"collate: example {i} has {len(ids)} token(s); it needs at least one token and the end-of-text")
        pairs.append((ids, prompt_len))
    T = max(len(ids) for ids, _ in pairs) - 1
    inputs = torch.full((len(pairs), T), pad_id, dtype=torch.int64)
    targets = torch.full((len(pairs), T), ignore_index, dtype=torch.int64)
    for row, (ids, prompt_len) in enumerate(pairs):
        n = len(ids) - 1
        seq = torch.tensor(ids, dtype=torch.int64)
        inputs[row, :n] = seq[:-1]
        targets[row, :n] = seq[1:]
        if mask_prompt and prompt_len > 1:
            targets[row, : min(prompt_len - 1, n)] = ignore_index
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length].contiguous(), targets[:, :allowed_max_length].contiguous()
    return inputs, targets


# ---------------------------------------------------------------------------- batches


class InstructionBatches:
    """Endless shuffled training batches of one split, resumable exactly.

    Each epoch draws a fresh permutation of the examples with ``torch.randperm`` from a
    ``torch.Generator`` seeded with ``seed``, and yields ``ceil(n / batch_size)`` batches of it
    (the last one smaller unless ``drop_last``), each through :func:`collate` with
    ``collate_kwargs`` (``pad_id``, ``ignore_index``, ``allowed_max_length``, ``mask_prompt``).
    ``next(batches)`` -> ``(inputs, targets)`` (batch, T) int64.

    For exact resume save :meth:`state_dict` (JSON-able: epoch, position in the epoch, and the
    generator state at the start of the epoch) and give it to :meth:`load_state_dict` of a new
    instance built with the same examples and batch size: the next batch is the one that would
    have come.
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int = 0, drop_last: bool = False, **collate_kwargs):
        if batch_size < 1:
            raise GptlabError(f"batch_size={batch_size} is impossible: must be >= 1")
        if not examples or (drop_last and len(examples) < batch_size):
            raise GptlabError(f"{len(examples)} training example(s) cannot fill a batch of {batch_size}; add records or lower the batch size")
        self.examples, self.batch_size, self.drop_last = examples, batch_size, drop_last
        self.collate_kwargs = collate_kwargs
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.position = 0, 0
        self._start_epoch()

    @property
    def batches_per_epoch(self) -> int:
        """Number of batches in one pass over the examples."""
        n = len(self.examples)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _start_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        self._order = torch.randperm(len(self.examples), generator=self.generator).tolist()

    def __iter__(self) -> InstructionBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
        start = self.position * self.batch_size
        chosen = [self.examples[i] for i in self._order[start : start + self.batch_size]]
        self.position += 1
        return collate(chosen, **self.collate_kwargs)

    def state_dict(self) -> dict:
        """Return ``{"epoch", "position", "generator"}`` (JSON-able; generator as a list of bytes)."""
        return {"epoch": self.epoch, "position": self.position, "generator": self._epoch_state.tolist()}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a :meth:`state_dict` (same examples and batch size)."""
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._start_epoch()


def eval_batches(examples: Sequence[Example], batch_size: int, **collate_kwargs) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, targets)`` (batch, T) int64 over ``examples`` in order, once; the last
    batch may be smaller. ``collate_kwargs`` as for :func:`collate`."""
    if batch_size < 1:
        raise GptlabError(f"batch_size={batch_size} is impossible: must be >= 1")
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size], **collate_kwargs)
