"""One entry point for ``gptlab convert --to hf|gguf``: a loaded model and its tokenizer out to
another library's format (``--to litgpt`` is :func:`gptlab.litgpt.checkpoint.export_litgpt`,
dispatched by the command: litgpt sits above the converters)."""

from __future__ import annotations

from pathlib import Path

from gptlab.convert.gguf_export import export_gguf
from gptlab.convert.hf import export_hf
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.tokenizer import Tokenizer

FORMATS = ("hf", "gguf")


def export_model(model: GPT, tokenizer: Tokenizer, out: str | Path, to: str, dtype: str = "f32", card: dict | None = None) -> Path:
    """Write ``model`` + ``tokenizer`` in format ``to``; return the path written.

    ``hf``: a Hugging Face folder (GPT-2, Llama or Qwen2; :func:`gptlab.convert.hf.export_hf`);
    ``gguf``: one GGUF file of ``dtype`` f32 | f16 | q8_0 (``out`` itself when it ends in
    ``.gguf``, else ``out/model.gguf``; :func:`gptlab.convert.gguf_export.export_gguf`, with
    ``card`` as its ``general.*`` metadata).
    """
    out = Path(out)
    if to == "hf":
        return export_hf(model, out, tokenizer)
    if to == "gguf":
        return export_gguf(model, tokenizer, out if out.suffix == ".gguf" else out / "model.gguf", dtype, card)
    raise GptlabError(f"export format {to!r} is unknown; choose among {', '.join(FORMATS)}")
