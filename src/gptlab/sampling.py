"""Text generation: temperature, top-k, top-p, greedy, stop tokens, a KV cache, batches.

The one sampling function of gptlab: the CLI, the generate stage and the server all call
:func:`generate` (or :func:`stream` to see tokens as they come).

Prompts of different lengths are left-padded; each row's positions start at 0 at its first
real token and padded keys are masked, so a prompt gives the same tokens alone or in a batch.
With the cache, a prefill pass fills a preallocated :class:`~gptlab.model.KVCache` (its length
bucketed by :func:`cache_length`) and each later step feeds one position through
``model.decode``, a step of static shapes (the token is written at its cache column, attention
runs over every column under a mask), which :func:`gptlab.inference.prepare` may replace with a
compiled one. Once a sequence outgrows ``context_length`` the
window slides and is recomputed in full, exactly as uncached generation crops it (learned
absolute positions cannot be shifted; RoPE models get the same per-row positions through
``position_ids`` and the same recompute, which keeps cached == uncached exact; a rolling RoPE
cache would avoid it but is not implemented).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, KVCache
from gptlab.params.evaluation import TEMPERATURE_FLOOR, SamplingConfig

__all__ = ["TEMPERATURE_FLOOR", "NonFiniteLogits", "SamplingConfig", "generate", "sample_next", "stream"]


class NonFiniteLogits(GptlabError):
    """The model gave NaN or infinite logits at the first step (broken weights); a caller that
    knows the model folder names it."""


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row. ``logits``: (batch, vocab) -> (batch,) int64. A temperature below
    :data:`TEMPERATURE_FLOOR` picks the likeliest token (greedy), as 0 does."""
    if cfg.temperature < TEMPERATURE_FLOOR:
        return logits.argmax(dim=-1)
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
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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
    cfg: SamplingConfig,
    stop_tokens: Iterable[int] = (),
    use_cache: bool = True,
    pad_token: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(tokens, active)`` per step: the next token of each row, (batch,) int64, and
    which rows were still generating, (batch,) bool. A row stops after a stop token (which is
    yielded with ``active`` True); later steps yield ``pad_token`` for it with ``active`` False.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GptlabError("generate: every prompt needs at least one token")
    model.eval()
    device = next(model.parameters()).device
    ctx = model.config.context_length
    B, width = len(prompts), max(len(p) for p in prompts)
    # preallocated: columns [0, n) hold prompt + generated tokens; valid marks real tokens
    buf = torch.full((B, width + cfg.max_new_tokens), pad_token, dtype=torch.long, device=device)
    valid = torch.zeros(buf.shape, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        buf[i, width - len(p) : width] = torch.as_tensor(list(p), dtype=torch.long, device=device)
        valid[i, width - len(p) : width] = True
    stops = torch.as_tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    active = torch.ones(B, dtype=torch.bool, device=device)
    cache: KVCache | None = None
    kv_valid: torch.Tensor | None = None  # (batch, cache.max_len) bool: the cache columns a query may see
    dtype = model.tok_emb.weight.dtype
    count = torch.zeros(B, dtype=torch.long, device=device)  # valid tokens in the current window

    n = width
    for step in range(cfg.max_new_tokens):
        if cache is not None and n <= ctx:
            # one token through the static-shape step; a cache starts at column 0 (made before the
            # window slides), so the token's cache column is its buffer column n-1
            col = n - 1
            kv_valid[:, col] = valid[:, col]
            position = (count - 1).clamp(min=0)[:, None]
            input_pos = torch.tensor([col], dtype=torch.long, device=device)
            logits = model.decode(buf[:, n - 1 : n], cache, input_pos, position, kv_valid[:, None, None, :])
        else:
            lo = max(0, n - ctx)
            window, win_valid = buf[:, lo:n], valid[:, lo:n]
            cache = None
            if use_cache and n < ctx:  # past the context every step recomputes its window: no cache
                cache = KVCache(model.config, B, cache_length(window.size(1) + cfg.max_new_tokens - step, ctx), device, dtype)
                kv_valid = torch.zeros(B, cache.max_len, dtype=torch.bool, device=device)
                kv_valid[:, : window.size(1)] = win_valid
            mask = _mask(win_valid, window.size(1))
            logits, _ = model(window, cache=cache, position_ids=_positions(win_valid), mask=mask, last_only=True)
            logits = logits[:, -1]
            count = win_valid.sum(dim=1)
        if step == 0 and not bool(torch.isfinite(logits).all()):
            raise NonFiniteLogits("the model gives NaN or infinite logits: its weights are broken; convert, download or train it again")
        nxt = sample_next(logits, cfg, generator)
        nxt = torch.where(active, nxt, torch.full_like(nxt, pad_token))
        yield nxt, active.clone()
        buf[:, n] = nxt
        valid[:, n] = active
        count += active
        n += 1
        if stops.numel():
            active &= ~torch.isin(nxt, stops)
            if not bool(active.any()):
                break


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    stop_tokens: Iterable[int] = (),
    use_cache: bool = True,
    pad_token: int = 0,
) -> list[list[int]]:
    """Return the new tokens of each prompt (stop token and what follows excluded).

    ``prompts``: token id lists, any lengths. At most ``cfg.max_new_tokens`` tokens each.
    """
    stops = set(stop_tokens)
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for tokens, active in stream(model, prompts, cfg, stops, use_cache, pad_token):
        for i, (t, a) in enumerate(zip(tokens.tolist(), active.tolist())):
            if a and not done[i]:
                if t in stops:
                    done[i] = True
                else:
                    out[i].append(t)
    return out
