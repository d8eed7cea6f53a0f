"""The GPT model: GPT-2's architecture, config-driven, with a KV cache for generation.

Token + learned position embeddings, pre-LayerNorm blocks of causal multi-head attention
(``scaled_dot_product_attention``) and a 4x GELU(tanh) MLP, a final LayerNorm and an output
head optionally tied to the token embedding. Module names (``qkv``, ``proj``, ``fc``,
``head``) are what LoRA targets and the converters map.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.errors import GptlabError
from gptlab.fused_loss import linear_cross_entropy


class ConfigError(GptlabError, ValueError):
    """An impossible GPTConfig; the message names the fields."""


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT. ``emb_dim`` must divide by ``n_heads``; every size must be >= 1."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.emb_dim % self.n_heads:
            raise ConfigError(f"n_heads={self.n_heads} does not divide emb_dim={self.emb_dim}; pick n_heads among the divisors of emb_dim")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"drop_rate={self.drop_rate} is impossible: must be >= 0 and < 1")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``emb_dim // n_heads``."""
        return self.emb_dim // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """Return the preset ``name`` (see ``PRESETS``) with ``overrides`` applied."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; allowed: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        """Return the config as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        """Build a config from :meth:`to_dict` output; unknown keys fail naming them."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown GPTConfig keys {unknown}; allowed: {', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**data)


PRESETS: dict[str, GPTConfig] = {
    "gpt2-124M": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-355M": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-774M": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-1558M": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),
    # CPU-sized models with GPT-2's vocabulary; gpt-mini is the pretrain default (the best
    # bits/byte on Shakespeare in 5 minutes of 2 CPU cores among the widths tried with dvc exp run)
    "gpt-mini": GPTConfig(context_length=256, emb_dim=96, n_heads=4, n_layers=6),
    "gpt-tiny": GPTConfig(context_length=128, emb_dim=64, n_heads=4, n_layers=2),
    "gpt-small": GPTConfig(context_length=256, emb_dim=256, n_heads=8, n_layers=4),
}


class KVCache:
    """Keys and values of every layer for the positions seen so far.

    ``k``/``v``: (n_layers, batch, n_heads, max_len, head_dim); ``length`` positions are filled.
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype):
        shape = (config.n_layers, batch, config.n_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused qkv projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.emb_dim, config.emb_dim)
        self.drop_rate = config.drop_rate
        self.resid_drop = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (batch, seq, emb) -> (batch, seq, emb). With ``cache``, keys/values of the new
        positions are stored at ``cache.length`` onwards and attention covers all stored positions.
        ``mask``: (batch, 1, seq, keys) bool, True where attention is allowed (None: causal)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k, v = cache.k[layer, :, :, : start + T], cache.v[layer, :, :, : start + T]
        dropout = self.drop_rate if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(4x) -> GELU(tanh) -> Linear."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.proj = nn.Linear(4 * config.emb_dim, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., emb) -> (..., emb)."""
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.emb_dim)
        self.attn = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.emb_dim)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, seq, emb) -> (batch, seq, emb)."""
        x = x + self.attn(self.norm1(x), cache, layer, mask)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """A GPT-2-style decoder-only transformer."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.emb_dim)
        self.head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled down by depth so the residual stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Return the number of parameters, counting tied weights once."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return ``(logits, loss)``.

        ``idx``: (batch, seq) int64 -> ``logits``: (batch, seq, vocab). ``loss`` is the mean
        cross-entropy against ``targets`` (batch, seq) with -100 ignored, else None.
        With ``cache``, ``idx`` continues the cached positions (and the cache advances).
        ``position_ids``: (batch, seq), default ``cache.length + arange(seq)``.
        ``mask``: (batch, 1, seq, keys) bool attention mask, default causal.
        ``last_only``: logits of the last position only, (batch, 1, vocab) (for generation).

        With ``targets`` (and no autocast) the loss comes from a chunked fused head +
        cross-entropy that never materialises the (batch, seq, vocab) logits; ``logits`` is
        then None unless ``return_logits``.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        limit = cache.max_len if cache is not None else self.config.context_length
        if start + T > min(limit, self.config.context_length):
            raise GptlabError(
                f"sequence of {start + T} tokens exceeds the context length {min(limit, self.config.context_length)}; "
                "crop the input (generation does this itself)"
            )
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=idx.device).unsqueeze(0)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(position_ids))
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, mask)
        if cache is not None:
            cache.length += T
        x = self.final_norm(x[:, -1:] if last_only else x)
        if targets is not None and not return_logits and type(self.head) is nn.Linear and not torch.is_autocast_enabled(x.device.type):
            # fused head + loss; a wrapped head (e.g. LoRA) takes the plain path
            return None, linear_cross_entropy(x.flatten(0, 1), self.head.weight, targets.flatten())
        logits = self.head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss
