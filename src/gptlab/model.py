"""The GPT model: one decoder-only class for GPT-2 and the Llama family, with a KV cache.

A :class:`GPTConfig` chooses the parts. GPT-2 (the defaults): token + learned position
embeddings, pre-LayerNorm blocks of causal multi-head attention and a 4x GELU(tanh) MLP, biases
everywhere, a final LayerNorm and a head tied to the embedding. The Llama family: RMSNorm
(``norm``), rotary positions (``positions="rope"``, ``rope_base``), a SwiGLU MLP
(``mlp="swiglu"``, ``mlp_hidden``), grouped key/value heads (``n_kv_heads``) and per-projection
biases (``qkv_bias`` for Qwen2, ``proj_bias``, ``mlp_bias``).

Module names are the same in both families and are what LoRA targets and the converters map:
``attn.qkv`` (one fused Linear, rows ``[q (n_heads*hd) | k (n_kv*hd) | v (n_kv*hd)]``),
``attn.proj``, ``mlp.fc`` (GELU: the up projection; SwiGLU: ``[gate | up]`` fused, 2 x
``mlp_hidden`` rows), ``mlp.proj``, ``head``. RoPE follows Hugging Face's Llama (rotate-half,
not interleaved) and is computed from ``position_ids``, so left-padded rows get their own
positions.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.fused_loss import linear_cross_entropy

HEAD_CHUNK_ACCELERATOR = 2048  # rows per chunk of the fused head + loss off the CPU: a few large matmuls, ~0.4 GB of fp32 logits at GPT-2's vocabulary


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions, per key/value head.

    ``k``/``v``: (n_layers, batch, kv_heads, max_len, head_dim), written in place at the
    positions a forward pass names (``index_copy_``), so a one-token decode step has static
    shapes and ``torch.compile`` captures it once. ``length`` positions are filled by prefill
    passes (a static step, :meth:`GPT.decode`, leaves the count to its caller). With RoPE the stored
    keys are already rotated and ``rope`` holds the (cos, sin) tables of positions 0 .. max_len-1,
    each (max_len, head_dim) in ``dtype``, computed once. ``zeroed=False`` leaves the memory
    unwritten, for a caller whose attention never reaches a column before it is written.
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype, zeroed: bool = True):
        shape = (config.n_layers, batch, config.kv_heads, max_len, config.head_dim)
        # zeroed: a step that attends to every column (a compiled one) must not read garbage (0 * NaN
        # is NaN); a caller that attends only to written columns skips the fill (SmolLM2-135M, batch 8:
        # 150 ms a cache on the 2-core Xeon)
        alloc = torch.zeros if zeroed else torch.empty
        self.k = alloc(shape, device=device, dtype=dtype)
        self.v = alloc(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.positions == "rope":
            cos, sin = rope_cos_sin(config, torch.arange(max_len, device=device)[None], dtype)
            self.rope = cos[0, 0], sin[0, 0]

    def rope_at(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The precomputed tables at ``position_ids``: (batch or 1, seq) int64 -> cos, sin:
        (batch or 1, 1, seq, head_dim), as :func:`rope_cos_sin` computes them."""
        cos, sin = self.rope
        return cos[position_ids][:, None], sin[position_ids][:, None]

    def write(self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``/``v``: (batch, kv_heads, seq, head_dim) of ``layer`` at the cache columns
        ``input_pos``: (seq,) int64, in place."""
        self.k[layer].index_copy_(2, input_pos, k)
        self.v[layer].index_copy_(2, input_pos, v)


def rope_cos_sin(config: GPTConfig, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for ``position_ids``: (batch or 1, seq) int64 -> cos, sin: (batch or 1, 1, seq, head_dim).

    As Hugging Face's Llama: ``inv_freq = base ** -(2i / head_dim)``, angles computed in fp32 and
    repeated for both halves of a head (rotate-half layout).
    """
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, hd, 2, dtype=torch.int64, device=position_ids.device).float() / hd))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x``: (batch, heads, seq, head_dim) by the tables of :func:`rope_cos_sin`; same shape."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class CausalSelfAttention(nn.Module):
    """Causal self-attention with a fused qkv projection, grouped key/value heads and optional RoPE."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.qkv = nn.Linear(config.emb_dim, (config.n_heads + 2 * self.n_kv) * config.head_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.emb_dim, config.emb_dim, bias=config.proj_bias)
        self.drop_rate = config.drop_rate
        self.resid_drop = nn.Dropout(config.drop_rate)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: (batch, seq, emb) -> (batch, seq, emb). With ``cache``, keys/values of the new
        positions are stored at the cache columns ``input_pos``: (seq,) int64 and attention covers
        the first ``mask.size(-1)`` cache columns under ``mask`` (a decode step: all
        ``cache.max_len`` of them keep its shapes static); without ``input_pos`` they are stored at
        ``cache.length`` onwards and attention covers the filled columns.
        ``mask``: (batch, 1, seq, keys) bool, True where attention is allowed, or an additive float
        bias in ``x``'s dtype (0 allowed, -inf not); None: causal.
        ``rope``: (cos, sin) of :func:`rope_cos_sin` for these positions (None: no rotation)."""
        B, T, C = x.shape
        if self.n_kv == self.n_heads:
            q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = self.qkv(x).split([C, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1)
            q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            end = mask.size(-1) if input_pos is not None else cache.length + T
            if input_pos is None:
                input_pos = torch.arange(cache.length, end, device=x.device)
            cache.write(layer, input_pos, k, v)
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
        dropout = self.drop_rate if self.training else 0.0
        gqa = {"enable_gqa": True} if self.n_kv != self.n_heads else {}
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=T > 1, **gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, **gqa)
        y = self.proj(y.transpose(1, 2).reshape(B, T, C))
        return self.resid_drop(y) if self.training else y  # no module call per layer at inference


class MLP(nn.Module):
    """Position-wise feed-forward: GELU(tanh) ``proj(gelu(fc(x)))`` or SwiGLU
    ``proj(silu(gate) * up)`` with ``fc`` = ``[gate | up]`` fused."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = config.hidden_dim
        self.fc = nn.Linear(config.emb_dim, 2 * hidden if self.swiglu else hidden, bias=config.mlp_bias)
        self.proj = nn.Linear(hidden, config.emb_dim, bias=config.mlp_bias)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., emb) -> (..., emb)."""
        if self.swiglu:
            gate, up = self.fc(x).chunk(2, dim=-1)
            y = self.proj(F.silu(gate) * up)
        else:
            y = self.proj(F.gelu(self.fc(x), approximate="tanh"))
        return self.drop(y) if self.training else y


def make_norm(config: GPTConfig) -> nn.Module:
    """Return the config's normalisation over ``emb_dim``: LayerNorm (with bias) or RMSNorm."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.emb_dim, eps=config.norm_eps)
    return nn.LayerNorm(config.emb_dim, eps=config.norm_eps)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None, rope=None, input_pos=None
    ) -> torch.Tensor:
        """(batch, seq, emb) -> (batch, seq, emb); the arguments are :class:`CausalSelfAttention`'s."""
        x = x + self.attn(self.norm1(x), cache, layer, mask, rope, input_pos)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """A decoder-only transformer: GPT-2 or a Llama-family model, as ``config`` says."""

    static_decode: bool = False
    """True once :meth:`decode` is compiled (:func:`gptlab.inference.prepare`): the sampler then
    gives it masks over every cache column, so its shapes never change; else over the filled ones."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.padded_vocab, config.emb_dim)
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = make_norm(config)
        self.head = nn.Linear(config.emb_dim, config.padded_vocab, bias=False)
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

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the head's input: the final-normed hidden states, (batch, seq, emb_dim)
        ((batch, 1, emb_dim) with ``last_only``); the arguments are :meth:`forward`'s.

        ``self.head`` of a subset of its rows gives those rows' logits, so a caller that scores
        a few positions pays the vocabulary-sized matmul for those only.
        """
        B, T = idx.shape
        if input_pos is None:
            start = cache.length if cache is not None else 0
            limit = cache.max_len if cache is not None else self.config.context_length
            if start + T > min(limit, self.config.context_length):
                raise GptlabError(
                    f"sequence of {start + T} tokens exceeds the context length {min(limit, self.config.context_length)}; "
                    "crop the input (generation does this itself)"
                )
            if position_ids is None:
                position_ids = torch.arange(start, start + T, device=idx.device).unsqueeze(0)
        elif cache is None or mask is None:
            raise GptlabError("a forward pass at input_pos needs the cache and the attention mask over its columns (see GPT.decode)")
        elif position_ids is None:
            position_ids = input_pos[None]
        rope = None
        if self.config.positions == "rope":
            x = self.tok_emb(idx)
            if cache is not None and cache.rope is not None:
                rope = tuple(t.to(x.dtype) for t in cache.rope_at(position_ids))
            else:
                rope = rope_cos_sin(self.config, position_ids, x.dtype)
        else:
            x = self.tok_emb(idx) + self.pos_emb(position_ids)
        if self.training:
            x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, mask, rope, input_pos)
        if cache is not None and input_pos is None:
            cache.length += T
        return self.final_norm(x[:, -1:] if last_only else x)

    def decode(self, idx: torch.Tensor, cache: KVCache, input_pos: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One decode step, what ``torch.compile`` captures (:func:`gptlab.inference.prepare`
        swaps in the compiled one): ``idx``: (batch, 1) int64 written to the cache column
        ``input_pos``: (1,) int64, at RoPE/learned ``position_ids``: (batch, 1) int64, attending to
        the first ``keys`` cache columns as ``mask``: (batch, 1, 1, keys) says (bool, or an additive
        float bias in the model's dtype; ``keys`` = ``cache.max_len`` keeps the shapes static)
        -> logits of the next token, (batch, vocab) in the model's dtype. ``cache.length`` is the
        caller's to keep."""
        logits, _ = self(idx, cache=cache, input_pos=input_pos, position_ids=position_ids, mask=mask)
        return logits[:, -1]

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
        input_pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return ``(logits, loss)``.

        ``idx``: (batch, seq) int64 -> ``logits``: (batch, seq, vocab). ``loss`` is the mean
        cross-entropy against ``targets`` (batch, seq) with -100 ignored, else None.
        With ``cache``, ``idx`` continues the cached positions (and the cache advances).
        ``position_ids``: (batch, seq), default ``cache.length + arange(seq)``.
        ``mask``: (batch, 1, seq, keys) bool attention mask, default causal.
        ``last_only``: logits of the last position only, (batch, 1, vocab) (for generation).
        ``input_pos``: (seq,) int64, the cache columns to write (a static step, see :meth:`decode`);
        then ``position_ids`` defaults to ``input_pos`` and the cache's length is left as it is.

        With ``targets`` the loss comes from a chunked fused head + cross-entropy (under autocast
        too: its matmuls in autocast's dtype, the log-sum-exp in fp32) that never materialises the
        (batch, seq, vocab) logits; ``logits`` is then None unless ``return_logits``. A padded
        vocabulary (``config.vocab_pad``) is invisible here: ``logits`` has the true ``vocab_size``
        columns and the pad rows never enter the loss.
        """
        x = self.hidden_states(idx, cache=cache, position_ids=position_ids, mask=mask, last_only=last_only, input_pos=input_pos)
        vocab = self.config.vocab_size
        if targets is not None and not return_logits and type(self.head) is nn.Linear:
            # fused head + loss; a wrapped head (e.g. LoRA) takes the plain path
            chunk = 256 if x.device.type == "cpu" else HEAD_CHUNK_ACCELERATOR
            return None, linear_cross_entropy(x.flatten(0, 1), self.head.weight, targets.flatten(), chunk, vocab)
        logits = self.head(x)
        if logits.size(-1) != vocab:
            logits = logits[..., :vocab]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss


def unpadded(model: GPT) -> GPT:
    """``model`` itself when its vocabulary is not padded, else a model with ``vocab_pad`` 1 whose
    embedding and head are views of the true ``vocab_size`` rows (no copy, no RNG drawn): what
    every export writes."""
    if model.config.padded_vocab == model.config.vocab_size:
        return model
    v = model.config.vocab_size
    trimmed = {k: (t[:v] if k in ("tok_emb.weight", "head.weight") else t) for k, t in model.state_dict().items()}
    with torch.device("meta"):
        out = GPT(dataclasses.replace(model.config, vocab_pad=1))
    out.load_state_dict(trimmed, assign=True)
    if out.config.tie_embeddings:
        out.head.weight = out.tok_emb.weight
    return out.train(model.training)
