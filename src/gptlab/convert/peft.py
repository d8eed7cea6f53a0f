"""LoRA adapters in PEFT's format, for the Hugging Face model :func:`gptlab.convert.hf.export_hf`
writes from the same base: ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained(hf_model, folder)`` loads.

What maps (gptlab module -> Hugging Face module; ``A`` is (r, in), ``B`` (out, r) in both):

========================  =============================================  ==========================
gptlab                    GPT-2 (``transformer.h.N.``)                    Llama / Qwen2 (``model.layers.N.``)
========================  =============================================  ==========================
``blocks.N.attn.qkv``     ``attn.c_attn`` (fused; Conv1D)                 ``self_attn.q_proj/k_proj/v_proj``
``blocks.N.attn.proj``    ``attn.c_proj`` (Conv1D)                        ``self_attn.o_proj``
``blocks.N.mlp.fc``       ``mlp.c_fc`` (Conv1D)                           ``mlp.gate_proj/up_proj``
``blocks.N.mlp.proj``     ``mlp.c_proj`` (Conv1D)                         ``mlp.down_proj``
``head``                  ``lm_head``                                     ``lm_head``
========================  =============================================  ==========================

GPT-2's Conv1D stores its weight transposed, but PEFT's LoRA on a Conv1D keeps ``lora_A``
(r, in) and ``lora_B`` (out, r) as Linear layers do (``fan_in_fan_out`` only changes merging),
so the tensors are copied as they are. Where gptlab fuses what Llama splits (q/k/v, gate/up),
one LoRA on the fused layer becomes one LoRA per part with ``lora_A`` copied and ``lora_B``
split by rows: ``B_q A`` is exactly the q rows of ``B A``, so the adapted model is identical.
The scale is ``lora_alpha / r`` in both (no rsLoRA).
"""

from __future__ import annotations

import re

import torch

from gptlab.convert.hf import family_of
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.params.training import LoraParams

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_GPT2 = {"attn.qkv": ["attn.c_attn"], "attn.proj": ["attn.c_proj"], "mlp.fc": ["mlp.c_fc"], "mlp.proj": ["mlp.c_proj"]}
_LLAMA = {
    "attn.qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    "attn.proj": ["self_attn.o_proj"],
    "mlp.fc": ["mlp.gate_proj", "mlp.up_proj"],
    "mlp.proj": ["mlp.down_proj"],
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _family(model: GPT) -> str:
    """``gpt2`` or ``llama`` (Llama/Qwen2), checked the way :func:`~gptlab.convert.hf.export_hf` checks it."""
    family = family_of(model.config)
    family.config_to_hf(model.config)  # GptlabError when the model has no Hugging Face form
    return family.key


def peft_files(model: GPT, cfg: LoraParams, lora: dict[str, torch.Tensor]) -> tuple[dict, dict[str, dict]]:
    """Return ``(adapter.json entries, files)`` publishing gptlab adapter tensors ``lora`` in PEFT's
    format beside ours: ``{"peft": {"config", "weights"}}`` and ``{PEFT_CONFIG: config, PEFT_WEIGHTS:
    tensors}``; where the model or a module has no Hugging Face form, ``{"peft": {"skipped": why}}``
    and no files (see :func:`gptlab.lora.save_adapter`'s ``extra`` and ``files``)."""
    try:
        config, tensors = peft_adapter(model, cfg, lora)
    except GptlabError as e:  # no Hugging Face form of this model or module: our format only
        return {"peft": {"skipped": str(e)}}, {}
    return {"peft": {"config": PEFT_CONFIG, "weights": PEFT_WEIGHTS}}, {PEFT_WEIGHTS: tensors, PEFT_CONFIG: config}


def peft_adapter(model: GPT, cfg: LoraParams, lora: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return ``(adapter_config, tensors)`` in PEFT's format for gptlab adapter tensors ``lora``
    (``{"<module>.lora_A": (r, in), "<module>.lora_B": (out, r)}``, as :func:`gptlab.lora.lora_state`
    gives them) of ``model``. GptlabError when the model has no Hugging Face form or a LoRA
    module has no Hugging Face counterpart."""
    family = _family(model)
    c = model.config
    q_rows, kv_rows = c.emb_dim, c.kv_heads * c.head_dim
    modules = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in lora))
    tensors: dict[str, torch.Tensor] = {}
    targets: list[str] = []
    for name in modules:
        a, b = lora[f"{name}.lora_A"], lora[f"{name}.lora_B"]
        if name == "head":
            parts, bs = ["lm_head"], [b]
        else:
            m = _BLOCK.match(name)
            table = _GPT2 if family == "gpt2" else _LLAMA
            if not m or m.group(2) not in table:
                raise GptlabError(f"LoRA module {name} has no Hugging Face counterpart; PEFT export maps qkv, proj, fc, mlp_proj and head")
            stem = f"transformer.h.{m.group(1)}." if family == "gpt2" else f"model.layers.{m.group(1)}."
            parts = [stem + p for p in table[m.group(2)]]
            if len(parts) == 3:
                bs = list(b.split([q_rows, kv_rows, kv_rows]))
            elif len(parts) == 2:
                bs = list(b.chunk(2))
            else:
                bs = [b]
        for part, b_part in zip(parts, bs):
            tensors[f"{_PREFIX}{part}.lora_A.weight"] = a.detach().contiguous().clone()
            tensors[f"{_PREFIX}{part}.lora_B.weight"] = b_part.detach().contiguous().clone()
            targets.append(part)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": family == "gpt2",
        "modules_to_save": None,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return config, tensors
