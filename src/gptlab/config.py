"""A GPT's shape and family (:class:`GPTConfig`) and the named presets, apart from the model
code so that params, stages and converters can name a config without importing torch.

The defaults are GPT-2; the Llama family (RMSNorm, RoPE, SwiGLU, grouped key/value heads) and
Qwen2 (Llama plus qkv biases) are configurations of the same class (see :mod:`gptlab.model`).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from gptlab.errors import GptlabError

# Parameters a config may describe (2**40, 4.4 TB in fp32): a typo such as emb_dim 1e9 fails in one line
# instead of in the allocator.
MAX_PARAMS = 1 << 40
_CHOICES = {"norm": ("layernorm", "rmsnorm"), "positions": ("learned", "rope"), "mlp": ("gelu", "swiglu")}


@dataclass(frozen=True)
class GPTConfig:
    """Shape and family of a GPT. ``emb_dim`` must divide by ``n_heads``, ``n_heads`` by
    ``n_kv_heads``; every size must be >= 1. The defaults are GPT-2.

    ``norm``: layernorm | rmsnorm (``norm_eps``); ``positions``: learned | rope (``rope_base``);
    ``mlp``: gelu | swiglu with ``mlp_hidden`` units (None: 4 x emb_dim); ``n_kv_heads``: key/value
    heads (None: n_heads); ``qkv_bias`` / ``proj_bias`` / ``mlp_bias``: biases of the qkv,
    attention output and MLP projections; ``tie_embeddings``: head shares the token embedding.
    ``vocab_pad``: the embedding and head rows are rounded up to a multiple of it
    (:attr:`padded_vocab`; 64 suits a GPU's matmul tiles); the pad rows are never predicted.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    tie_embeddings: bool = True
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    positions: str = "learned"
    rope_base: float = 10000.0
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    n_kv_heads: int | None = None
    proj_bias: bool = True
    mlp_bias: bool = True
    vocab_pad: int = 1

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "mlp_hidden", "n_kv_heads", "vocab_pad"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
                raise GptlabError(f"{name}={value!r} is impossible: must be a whole number")
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "vocab_pad"):
            if getattr(self, name) < 1:
                raise GptlabError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.emb_dim % self.n_heads:
            raise GptlabError(f"n_heads={self.n_heads} does not divide emb_dim={self.emb_dim}; pick n_heads among the divisors of emb_dim")
        if not 0.0 <= self.drop_rate < 1.0:
            raise GptlabError(f"drop_rate={self.drop_rate} is impossible: must be >= 0 and < 1")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise GptlabError(f"{name}={getattr(self, name)!r} is unknown; allowed: {', '.join(allowed)}")
        for name in ("mlp_hidden", "n_kv_heads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise GptlabError(f"{name}={getattr(self, name)} is impossible: must be >= 1 (or null for the default)")
        if self.n_heads % self.kv_heads:
            raise GptlabError(f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; pick a divisor of n_heads")
        if self.positions == "rope" and self.head_dim % 2:
            raise GptlabError(f"positions=rope needs an even head_dim, got emb_dim/n_heads={self.head_dim}; change emb_dim or n_heads")
        if self.norm_eps <= 0 or self.rope_base <= 0:
            raise GptlabError(f"norm_eps={self.norm_eps} and rope_base={self.rope_base} must be > 0")
        if self.n_params > MAX_PARAMS:
            raise GptlabError(
                f"vocab_size={self.vocab_size}, context_length={self.context_length}, emb_dim={self.emb_dim}, n_layers={self.n_layers}, "
                f"mlp_hidden={self.hidden_dim} describe {self.n_params:.3g} parameters ({self.n_params * 4 / 1e12:.3g} TB in fp32), "
                f"over the {MAX_PARAMS:.3g} a config may describe; fix these fields"
            )

    @property
    def n_params(self) -> int:
        """The parameter count the config describes (embeddings, head, attention, MLP; norms and
        biases left out), computed without building anything: a bound, not an exact count."""
        emb, hidden, kv = self.emb_dim, self.hidden_dim, self.kv_heads * self.head_dim
        embeddings = self.vocab_size * emb * (1 if self.tie_embeddings else 2) + self.context_length * emb
        layer = emb * (emb + 2 * kv) + emb * emb + (3 if self.mlp == "swiglu" else 2) * emb * hidden
        return embeddings + self.n_layers * layer

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and the head: ``vocab_size`` rounded up to a multiple of ``vocab_pad``."""
        return -(-self.vocab_size // self.vocab_pad) * self.vocab_pad

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``emb_dim // n_heads``."""
        return self.emb_dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads: ``n_kv_heads``, or ``n_heads`` when None."""
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        """Width of the MLP's hidden layer: ``mlp_hidden``, or 4 x emb_dim when None."""
        return self.mlp_hidden or 4 * self.emb_dim

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """Return the preset ``name`` (see ``PRESETS``) with ``overrides`` applied."""
        if name not in PRESETS:
            raise GptlabError(f"unknown model preset {name!r}; allowed: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        """Return the config as a JSON-ready dict (``vocab_pad`` only when it pads: a config.json
        written before padding existed reads back the same, and an unpadded one is unchanged)."""
        out = dataclasses.asdict(self)
        if out["vocab_pad"] == 1:
            del out["vocab_pad"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        """Build a config from :meth:`to_dict` output; unknown keys fail naming them."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise GptlabError(f"unknown GPTConfig keys {unknown}; allowed: {', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**data)


PRESETS: dict[str, GPTConfig] = {
    "gpt2-124M": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-355M": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-774M": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-1558M": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),
    # CPU-sized models (vocab_size: GPT-2's unless model.vocab_size or the shards' tokenizer say
    # otherwise). gpt-micro with a 4,096-id BPE is the pretrain default: the best bits/byte on
    # Shakespeare in 5 minutes of 2 CPU cores among the recipes tried (README, "The default run")
    "gpt-micro": GPTConfig(context_length=128, emb_dim=128, n_heads=4, n_layers=4),
    "gpt-mini": GPTConfig(context_length=256, emb_dim=96, n_heads=4, n_layers=6),
    "gpt-tiny": GPTConfig(context_length=128, emb_dim=64, n_heads=4, n_layers=2),
    "gpt-small": GPTConfig(context_length=256, emb_dim=256, n_heads=8, n_layers=4),
}
_LLAMA = {"norm": "rmsnorm", "positions": "rope", "mlp": "swiglu", "qkv_bias": False, "proj_bias": False, "mlp_bias": False}
# HuggingFaceTB/SmolLM2-135M(-Instruct): the Llama architecture, 134.5M parameters
PRESETS["smollm2-135m"] = GPTConfig(
    vocab_size=49152, context_length=8192, emb_dim=576, n_heads=9, n_kv_heads=3, n_layers=30, mlp_hidden=1536, rope_base=100000.0, **_LLAMA
)
# Qwen2's shape (qkv biases, RoPE base 1e6, RMSNorm 1e-6): Qwen2-0.5B, and a CPU-sized one with GPT-2's vocabulary
_QWEN2 = {**_LLAMA, "qkv_bias": True, "rope_base": 1000000.0, "norm_eps": 1e-6}
PRESETS["qwen2-0.5b"] = GPTConfig(vocab_size=151936, context_length=32768, emb_dim=896, n_heads=14, n_kv_heads=2, n_layers=24, mlp_hidden=4864, **_QWEN2)
PRESETS["qwen2-tiny"] = GPTConfig(context_length=256, emb_dim=128, n_heads=4, n_kv_heads=2, n_layers=4, mlp_hidden=352, **_QWEN2)
