"""What a model is called and under which license: read from its source when converting, carried
through fine-tuning, written into its exports (GGUF's ``general.*`` keys).

A gptlab folder's ``config.json`` holds it under ``model_card``, with GGUF's key names: ``name``,
``basename``, ``finetune``, ``organization``, ``size_label``, ``license`` (each optional), and for
a fine-tuned model ``base_models`` (a list of ``{name, organization}``: what it was tuned from).
The values are the source's own: a GGUF file's ``general.*`` metadata, a Hugging Face folder's
model card and config as llama.cpp's converter reads them (``gguf.Metadata.load``), or OpenAI's
GPT-2 (MIT).
"""

from __future__ import annotations

from pathlib import Path

import gguf

from gptlab.checkpoint import read_config

CARD_KEY = "model_card"
FIELDS = ("name", "basename", "finetune", "organization", "size_label", "license")


def size_label(n_params: int) -> str:
    """Return llama.cpp's size label of a model with ``n_params`` parameters, e.g. ``"135M"``."""
    return gguf.size_label(n_params, 0, 0, 0)


def card_from_gguf(reader: gguf.GGUFReader) -> dict:
    """Return the ``general.*`` fields of :data:`FIELDS` a GGUF file sets (strings; absent ones left out)."""
    card = {}
    for key in FIELDS:
        field = reader.fields.get(f"general.{key}")
        if field is not None and isinstance(value := field.contents(), str) and value:
            card[key] = value
    return card


def card_from_hf(folder: str | Path, n_params: int) -> dict:
    """Return the card llama.cpp's ``convert_hf_to_gguf.py`` would write for a Hugging Face folder:
    ``gguf.Metadata.load`` on its ``README.md`` model card, ``config.json`` and folder name, the
    size label from ``n_params`` where those give none."""
    meta = gguf.Metadata.load(None, Path(folder), None, n_params)
    card = {key: getattr(meta, key) for key in FIELDS if isinstance(getattr(meta, key), str) and getattr(meta, key)}
    if isinstance(meta.license, list) and meta.license:  # a model card may list several
        card["license"] = ",".join(meta.license)
    card.setdefault("size_label", size_label(n_params))
    return card


def card_from_openai(n_params: int) -> dict:
    """Return the card of one of OpenAI's GPT-2 checkpoints of ``n_params`` parameters (MIT licensed)."""
    size = size_label(n_params)
    return {"name": f"GPT-2 {size}", "basename": "gpt2", "organization": "OpenAI", "size_label": size, "license": "mit"}


def read_card(folder: str | Path, n_params: int) -> dict:
    """Return the card of any model folder gptlab reads: a gptlab checkpoint's ``model_card`` (empty
    when it has none, e.g. a model pretrained here), a Hugging Face folder's (:func:`card_from_hf`) or
    an OpenAI TensorFlow GPT-2 folder's (:func:`card_from_openai`)."""
    folder = Path(str(folder).removeprefix("hf:"))
    if (folder / "hparams.json").exists() and not (folder / "config.json").exists():
        return card_from_openai(n_params)
    data = read_config(folder)
    if "model_type" in data:
        return card_from_hf(folder, n_params)
    return dict(data.get(CARD_KEY) or {})


def finetuned_card(base: dict, method: str) -> dict:
    """Return the card of a model fine-tuned by gptlab (``method``: lora | full) from a model with
    card ``base``: its license, basename, organization and size kept, ``finetune`` and the name
    extended with ``gptlab-<method>``, and the base recorded under ``base_models``. Empty for an
    empty ``base`` (nothing known to carry)."""
    if not base:
        return {}
    tag = f"gptlab-{method}"
    card = {k: v for k, v in base.items() if k in FIELDS}
    card["finetune"] = f"{base['finetune']}-{tag}" if base.get("finetune") else tag
    if base.get("name"):
        card["name"] = f"{base['name']} {tag}"
        card["base_models"] = [{k: base[k] for k in ("name", "organization") if base.get(k)}]
    return card


def export_card(card: dict, n_params: int, fallback_name: str, name: str | None = None, license: str | None = None) -> dict:
    """Return ``card`` completed for an export: ``name`` and ``license`` overridden when given (the
    CLI's ``--name``/``--license``), the name else the card's or ``fallback_name`` (llama.cpp's
    converter also falls back to the folder's name), and ``size_label`` computed from ``n_params``
    when the card has none."""
    out = dict(card)
    out["name"] = name or card.get("name") or fallback_name
    if license:
        out["license"] = license
    out.setdefault("size_label", size_label(n_params))
    return out


def write_card(writer: gguf.GGUFWriter, card: dict) -> None:
    """Add ``card`` (see :func:`export_card`) to a GGUF file as ``general.*`` metadata, the way
    ``gguf.Metadata.set_gguf_meta_model`` does in llama.cpp's converter."""
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(card["name"])
    adders = {
        "organization": writer.add_organization,
        "finetune": writer.add_finetune,
        "basename": writer.add_basename,
        "size_label": writer.add_size_label,
        "license": writer.add_license,
    }
    for key, add in adders.items():
        if card.get(key):
            add(card[key])
    bases = card.get("base_models") or []
    if bases:
        writer.add_base_model_count(len(bases))
        for i, base in enumerate(bases):
            if base.get("name"):
                writer.add_base_model_name(i, base["name"])
            if base.get("organization"):
                writer.add_base_model_organization(i, base["organization"])
