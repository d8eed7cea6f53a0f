"""Text generation: temperature, top-k, top-p, min-p, penalties, greedy, stop tokens, a KV cache, batches.

The one sampling function of gptlab: the CLI, the generate stage and the server all call
:func:`generate` (or :func:`stream` to see tokens as they come).

Prompts of different lengths are left-padded; each row's positions start at 0 at its first
real token and padded keys are masked, so a prompt gives the same tokens alone or in a batch.
With the cache, a prefill pass fills a preallocated :class:`~gptlab.model.KVCache` (its length
bucketed by :func:`cache_length`) and each later step feeds one position through
``model.decode`` (the token is written at its cache column; attention runs over the columns
written so far under an additive bias, or over every column when :func:`gptlab.inference.prepare`
has compiled the step, whose shapes must then stay static). Once a sequence outgrows ``context_length`` the
window slides and is recomputed in full, exactly as uncached generation crops it (learned
absolute positions cannot be shifted; RoPE models get the same per-row positions through
``position_ids`` and the same recompute, which keeps cached == uncached exact; a rolling RoPE
cache would avoid it but is not implemented).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, KVCache
from gptlab.params.evaluation import TEMPERATURE_FLOOR, SamplingConfig

__all__ = ["TEMPERATURE_FLOOR", "NonFiniteLogits", "Row", "SamplingConfig", "generate", "penalize", "sample_next", "stream", "warp"]


class NonFiniteLogits(GptlabError):
    """The model gave NaN or infinite logits at the first step (broken weights); a caller that
    knows the model folder names it."""


@dataclass
class Row:
    """One row of a batch with its own sampling (``gptlab serve``'s requests): its ``cfg`` (budget,
    temperature, filters, penalties), its ``generator`` (None: made from ``cfg.seed`` if set, else
    torch's global one), and how many of its prompt's last tokens are its own earlier answer
    (``answered``: a request resumed in a new batch, whose frequency/presence penalties count them)."""

    cfg: SamplingConfig
    generator: torch.Generator | None = None
    answered: int = 0


History = Sequence[tuple[Sequence[int], int]]
"""Per row: its tokens so far (prompt then answer) and the index where its answer starts."""


def penalize(logits: torch.Tensor, cfg: SamplingConfig, history: History) -> torch.Tensor:
    """Return ``logits`` (batch, vocab) with ``cfg``'s penalties applied, as fp32 (batch, vocab).

    Repetition penalty (Hugging Face's and llama.cpp's): a seen token's logit is divided by the
    penalty when positive, multiplied when negative. Then frequency and presence (OpenAI's):
    ``logit -= count * frequency_penalty + (count > 0) * presence_penalty``. Without
    ``penalty_last_n`` the repetition penalty sees prompt and answer, the other two the answer
    only; with it all three see the last ``penalty_last_n`` tokens of both (llama.cpp's window).
    """
    logits = logits.float().clone()
    vocab = logits.size(-1)
    for i, (tokens, answer_from) in enumerate(history):
        if cfg.penalty_last_n is not None:
            seen = counted = list(tokens[len(tokens) - cfg.penalty_last_n :]) if cfg.penalty_last_n else []
        else:
            seen, counted = list(tokens), list(tokens[answer_from:])
        if cfg.repetition_penalty != 1 and seen:
            ids = torch.as_tensor(seen, dtype=torch.long, device=logits.device).unique()
            row = logits[i, ids]
            logits[i, ids] = torch.where(row < 0, row * cfg.repetition_penalty, row / cfg.repetition_penalty)
        if (cfg.frequency_penalty or cfg.presence_penalty) and counted:
            counts = torch.bincount(torch.as_tensor(counted, dtype=torch.long, device=logits.device), minlength=vocab)[:vocab].float()
            logits[i] -= counts * cfg.frequency_penalty + (counts > 0).float() * cfg.presence_penalty
    return logits


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None, history: History | None = None) -> torch.Tensor:
    """Pick one token per row. ``logits``: (batch, vocab) -> (batch,) int64. A temperature below
    :data:`TEMPERATURE_FLOOR` picks the likeliest token (greedy), as 0 does.

    Order as Hugging Face's: penalties (:func:`penalize`; ``history`` gives each row's tokens,
    needed when ``cfg.penalized``), temperature, top-k, top-p, min-p, then the draw.
    """
    if cfg.penalized:
        if history is None:
            raise GptlabError("sample_next: a penalty is on but no history of tokens was given; pass each row's tokens so far")
        logits = penalize(logits, cfg, history)
    if cfg.temperature < TEMPERATURE_FLOOR:
        return logits.argmax(dim=-1)
    probs = warp(logits, cfg).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def warp(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Return ``logits`` (batch, vocab) divided by the temperature (> 0) with the tokens top-k,
    top-p and min-p drop set to -inf, in that order: fp32 (batch, vocab)."""
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already cover top_p
        drop = probs.cumsum(dim=-1) - probs >= cfg.top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if cfg.min_p:
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < cfg.min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    return logits


def _sample_rows(logits: torch.Tensor, rows: Sequence[Row], history: History) -> torch.Tensor:
    """Pick one token per row, each with its own Row: (batch, vocab) -> (batch,) int64.

    Each row is drawn alone (its own generator), so a row gets the same tokens in any batch; greedy rows without penalties share one argmax.
    """
    out = logits.argmax(dim=-1)
    for i, row in enumerate(rows):
        if row.cfg.temperature >= TEMPERATURE_FLOOR or row.cfg.penalized:
            out[i] = sample_next(logits[i : i + 1], row.cfg, row.generator, history[i : i + 1] if row.cfg.penalized else None)[0]
    return out


CACHE_BUCKET = 256
"""The KV cache's length is rounded up to a multiple of this (at most the context length), so a
compiled decode step sees few distinct shapes across prompts and is not recompiled for each."""


def cache_length(needed: int, context_length: int) -> int:
    """The columns of a KV cache for ``needed`` positions: ``needed`` rounded up to a multiple
    of :data:`CACHE_BUCKET`, at most ``context_length``."""
    return min(context_length, -(-needed // CACHE_BUCKET) * CACHE_BUCKET)


def _positions(valid: torch.Tensor) -> torch.Tensor:
    """Per-row position ids of a window: (batch, width) bool -> (batch, width) int64."""
    return (valid.long().cumsum(dim=1) - 1).clamp(min=0)


def _mask(valid: torch.Tensor, n_queries: int) -> torch.Tensor | None:
    """Attention mask for the last ``n_queries`` columns of a window over all its columns.

    ``valid``: (batch, keys) bool -> (batch, 1, n_queries, keys) bool, or None when nothing is
    padded (plain causal attention). Each query may always see itself, so no row is empty.
    """
    if bool(valid.all()):
        return None
    keys = valid.size(1)
    q_cols = torch.arange(keys - n_queries, keys, device=valid.device)[:, None]
    k_cols = torch.arange(keys, device=valid.device)[None, :]
    allowed = (k_cols <= q_cols) & valid[:, None, :]
    return (allowed | (k_cols == q_cols)).unsqueeze(1)


@torch.inference_mode()
def stream(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig | Sequence[Row],
    stop_tokens: Iterable[int] = (),
    use_cache: bool = True,
    pad_token: int = 0,
) -> Iterator[tuple[list[int], list[bool]]]:
    """Yield ``(tokens, active)`` per step: the next token of each row (``batch`` ints) and which
    rows were still generating (``batch`` bools). A row stops after a stop token (which is yielded
    with ``active`` True) or its budget; later steps yield ``pad_token`` for it with ``active`` False.

    ``cfg``: one SamplingConfig for every row (one generator, from its seed, drawn over the
    batch), or one :class:`Row` per prompt (each with its own budget, sampling and generator:
    a row then gets the same tokens in any batch as alone).

    Per cached step the host does a few tensor operations and one read of the new tokens (which
    every caller needs anyway); a stop or a spent budget is bookkept on the host.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GptlabError("generate: every prompt needs at least one token")
    rows = None if isinstance(cfg, SamplingConfig) else list(cfg)
    if rows is not None:
        if len(rows) != len(prompts):
            raise GptlabError(f"generate: {len(rows)} Rows for {len(prompts)} prompts; give one Row per prompt")
        for row in rows:
            if row.generator is None and row.cfg.seed is not None:
                row.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(row.cfg.seed)
    budgets = [r.cfg.max_new_tokens for r in rows] if rows is not None else [cfg.max_new_tokens] * len(prompts)
    budget = max(budgets)
    penalized = any(r.cfg.penalized for r in rows) if rows is not None else cfg.penalized
    history = [(list(p), len(p) - (rows[i].answered if rows is not None else 0)) for i, p in enumerate(prompts)] if penalized else []
    model.eval()
    device = next(model.parameters()).device
    ctx = model.config.context_length
    B, width = len(prompts), max(len(p) for p in prompts)
    # preallocated: columns [0, n) hold prompt + generated tokens; valid marks real tokens. Past the
    # prefill they are kept only where a later step may recompute its window (no cache, or a window that slides)
    keep_window = not use_cache or width + budget > ctx
    buf = torch.full((B, width + budget), pad_token, dtype=torch.long, device=device)
    valid = torch.zeros(buf.shape, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        buf[i, width - len(p) : width] = torch.as_tensor(list(p), dtype=torch.long, device=device)
        valid[i, width - len(p) : width] = True
    stops = set(stop_tokens)
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if rows is None and cfg.seed is not None else None
    active = [b > 0 for b in budgets]
    cache: KVCache | None = None
    dtype = model.tok_emb.weight.dtype
    static = model.static_decode  # a compiled step: its mask spans every cache column, so its shapes never change
    bias = offset = columns = nxt = None  # the cached steps' attention bias, position offsets and cache columns

    n = width
    for step in range(budget):
        if cache is not None and n <= ctx:
            # one token through the decode step; a cache starts at column 0 (made before the window
            # slides), so the token's cache column is its buffer column n-1. Its bias column opens
            # for every row (a row that has ended attends to its pads: its tokens are not used).
            col = n - 1
            bias[:, :, :, col] = 0.0
            logits = model.decode(nxt[:, None], cache, columns[col:n], offset + col, bias if static else bias[:, :, :, :n])
        else:
            lo = max(0, n - ctx)
            window, win_valid = buf[:, lo:n], valid[:, lo:n]
            cache = None
            if use_cache and n < ctx:  # past the context every step recomputes its window: no cache
                cache = KVCache(model.config, B, cache_length(window.size(1) + budget - step, ctx), device, dtype, zeroed=static)
                # additive attention bias over the cache columns: 0 where a real token is, -inf elsewhere
                bias = torch.full((B, 1, 1, cache.max_len), float("-inf"), dtype=dtype, device=device)
                bias[:, 0, 0, : window.size(1)].masked_fill_(win_valid, 0.0)
                columns = torch.arange(cache.max_len, device=device)
                # a row's position at cache column c (the window starts at column 0 here): its tokens before c
                offset = (win_valid.sum(dim=1) - window.size(1))[:, None]
            mask = _mask(win_valid, window.size(1))
            logits, _ = model(window, cache=cache, position_ids=_positions(win_valid), mask=mask, last_only=True)
            logits = logits[:, -1]
        if step == 0 and not bool(torch.isfinite(logits).all()):
            raise NonFiniteLogits("the model gives NaN or infinite logits: its weights are broken; convert, download or train it again")
        if rows is not None:
            nxt = _sample_rows(logits, rows, history)
        elif penalized:
            nxt = sample_next(logits, cfg, generator, history)
        else:
            nxt = sample_next(logits, cfg, generator)
        tokens = nxt.tolist()
        was = list(active)
        for i, (t, a) in enumerate(zip(tokens, was)):
            if not a:
                tokens[i] = pad_token
                continue
            if penalized:
                history[i][0].append(t)
            if t in stops or step + 1 >= budgets[i]:
                active[i] = False
        yield tokens, was
        if keep_window:
            buf[:, n] = torch.as_tensor(tokens, dtype=torch.long, device=device)
            valid[:, n] = torch.as_tensor(was, dtype=torch.bool, device=device)
        n += 1
        if not any(active):
            break


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig | Sequence[Row],
    stop_tokens: Iterable[int] = (),
    use_cache: bool = True,
    pad_token: int = 0,
) -> list[list[int]]:
    """Return the new tokens of each prompt (stop token and what follows excluded).

    ``prompts``: token id lists, any lengths. At most ``max_new_tokens`` tokens each
    (``cfg``: one config for all rows, or one :class:`Row` each, as :func:`stream` takes).
    """
    stops = set(stop_tokens)
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for tokens, active in stream(model, prompts, cfg, stops, use_cache, pad_token):
        for i, (t, a) in enumerate(zip(tokens, active)):
            if a and not done[i]:
                if t in stops:
                    done[i] = True
                else:
                    out[i].append(t)
    return out
