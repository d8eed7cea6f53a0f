"""The base model fine-tuning starts from: fetch its source, convert it to ``models/base/``.

``convert.source`` names it: ``pretrained`` (our ``models/pretrained/``, copied as is: its best
weights, ``best/``, or the final ones, by ``convert.weights``),
``gpt2-124M`` ... ``gpt2-1558M`` (OpenAI's TensorFlow checkpoints, fetched with the download
stage's https/file source and its cache) or ``hf:<dir>`` (a Hugging Face GPT-2 folder).
:func:`gptlab.convert.download_checkpoint.download_checkpoint` puts the source's files in ``data/checkpoint/`` (so DVC hashes what
the conversion reads); :func:`build_base` converts them.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from pathlib import Path

from gptlab.checkpoint import load_model, save_model
from gptlab.convert.download_checkpoint import GGUF_FILE
from gptlab.convert.gguf import gguf_to_gptlab
from gptlab.convert.load_any import load_any
from gptlab.convert.model_card import CARD_KEY, card_from_hf, card_from_openai
from gptlab.convert.openai_tf import load_openai_tf
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, read_json, sha256_file, write_json
from gptlab.params import ConvertParams

# Summary fields that differ between two runs of the same inputs: printed, never in a DVC out.
RUN_DEPENDENT = ("seconds", "peak_memory_mib")


def peak_rss_bytes() -> int:
    """Return this process's peak resident memory so far, in bytes (Linux ru_maxrss is KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def pick_pretrained(pretrained_dir: Path, weights: str) -> tuple[Path, dict]:
    """Return the folder to copy for ``convert.weights`` (``best``: ``best/`` when it exists and its
    weights differ from the final ones, else the top folder) and provenance: which weights, the
    folder, its training step and sha256."""
    final_sha = sha256_file(pretrained_dir / "model.safetensors")
    src, sha, used = pretrained_dir, final_sha, "final"
    best = pretrained_dir / "best"
    if weights == "best" and (best / "model.safetensors").exists():
        best_sha = sha256_file(best / "model.safetensors")
        used = "best"
        if best_sha != final_sha:  # equal weights: the final folder, so models/base stays as it was
            src, sha = best, best_sha
    info = read_json(src / "config.json", "the pretrained model's config").get("pretrain", {}) if (src / "config.json").exists() else {}
    provenance = {"source": "pretrained", "weights": used, "requested": weights, "folder": str(src), "step": info.get("step"), "sha256": sha}
    if "val_loss" in info:
        provenance["val_loss"] = info["val_loss"]
    return src, provenance


def build_base(
    p: ConvertParams,
    checkpoint_dir: str | Path,
    pretrained_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path | None = None,
    provenance_path: str | Path | None = None,
) -> dict:
    """Write the base model to ``out_dir`` (a gptlab checkpoint) and return the summary: source,
    parameters, sha256 of ``model.safetensors``, seconds, peak memory (MiB) and source bytes.
    ``metrics_path`` gets the parameter count; ``provenance_path`` the summary less its seconds
    and peak memory (a DVC out must be a function of its inputs: those two are printed only).

    For ``source: pretrained`` ``p.weights`` picks the best or the final pretrained weights; which
    were used is printed and written to ``provenance_path`` (JSON) when given."""
    start = time.perf_counter()
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    provenance: dict = {"source": p.source}
    if p.source == "pretrained":
        src = Path(pretrained_dir)
        if not (src / "model.safetensors").exists():
            raise GptlabError(f"{src}: no model.safetensors; run `dvc repro pretrain` first (convert.source: pretrained)")
        src, provenance = pick_pretrained(src, p.weights)
        step = f" (step {provenance['step']})" if provenance["step"] is not None else ""
        print(f"convert: base = the {provenance['weights']} pretrained weights{step} from {src}")
        with atomic_dir(out_dir) as tmp:
            for name in ("model.safetensors", "config.json", "tokenizer.json"):
                if (src / name).exists():
                    shutil.copyfile(src / name, tmp / name)
        model, _ = load_model(out_dir)
        source_bytes = (src / "model.safetensors").stat().st_size
    else:
        if not (checkpoint_dir / "SOURCE.json").exists():
            raise GptlabError(f"{checkpoint_dir}: not fetched; run `dvc repro download_checkpoint` first")
        if p.source == "smollm2-135m-instruct":
            gguf_to_gptlab(checkpoint_dir / GGUF_FILE, out_dir)
            model, _ = load_model(out_dir)
        elif p.source.startswith("hf:"):
            hf_model, tokenizer = load_any(checkpoint_dir)  # GPT-2, Llama or Qwen2, with the folder's tokenizer
            save_model(out_dir, hf_model, tokenizer, {"source": p.source, CARD_KEY: card_from_hf(checkpoint_dir, hf_model.num_parameters())})
            model, _ = load_model(out_dir)
        else:
            model = load_openai_tf(checkpoint_dir)
            save_model(out_dir, model, "gpt2", {"source": p.source, CARD_KEY: card_from_openai(model.num_parameters())})
        source_bytes = sum(f.stat().st_size for f in checkpoint_dir.iterdir() if f.is_file())
    summary = {
        "source": p.source,
        "parameters": model.num_parameters(),
        "layers": model.config.n_layers,
        "emb_dim": model.config.emb_dim,
        "sha256": sha256_file(out_dir / "model.safetensors"),
        "seconds": round(time.perf_counter() - start, 3),
        "peak_memory_mib": round(peak_rss_bytes() / 2**20, 1),
        "source_bytes": source_bytes,
    }
    if metrics_path is not None:  # the one figure worth comparing across experiments
        write_json(metrics_path, {"parameters": summary["parameters"]})
    if provenance_path is not None:  # what was converted, from where (not how fast: that differs per run)
        write_json(provenance_path, {**provenance, **{k: v for k, v in summary.items() if k not in RUN_DEPENDENT}})
    return summary
