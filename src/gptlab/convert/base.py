"""The base model fine-tuning starts from: fetch its source, convert it to ``models/base/``.

``convert.source`` names it: ``pretrained`` (our ``models/pretrained/``, copied as is),
``gpt2-124M`` ... ``gpt2-1558M`` (OpenAI's TensorFlow checkpoints, fetched with the download
stage's https/file source and its cache) or ``hf:<dir>`` (a Hugging Face GPT-2 folder).
:func:`fetch_checkpoint` puts the source's files in ``data/checkpoint/`` (so DVC hashes what
the conversion reads); :func:`build_base` converts them.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from pathlib import Path

from gptlab.checkpoint import load_model, save_model
from gptlab.data.download import fetch, sha256_file
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, write_json
from gptlab.params import ConvertParams, DownloadParams, SourceParams

HF_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")
OFFLINE_HELP = "set convert.mirror to a file:// copy of OpenAI's files (README: 'GPT-2 weights without internet')"


def checkpoint_sources(p: ConvertParams) -> dict[str, SourceParams]:
    """Return the files to fetch for ``p.source``: name -> source (empty for ``pretrained``)."""
    from gptlab.convert.openai_tf import OPENAI_BASE_URL, OPENAI_FILES, OPENAI_SIZES

    if p.source == "pretrained":
        return {}
    if p.source.startswith("hf:"):
        folder = Path(p.source[3:]).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise GptlabError(f"convert.source={p.source}: {folder / 'config.json'} not found; point hf: at a Hugging Face GPT-2 folder")
        files = [n for n in HF_FILES if (folder / n).is_file()]
        if files == ["config.json"]:
            raise GptlabError(f"convert.source={p.source}: {folder} has neither model.safetensors nor pytorch_model.bin")
        return {n: SourceParams(uri=(folder / n).as_uri()) for n in files}
    base = (p.mirror or OPENAI_BASE_URL).rstrip("/")
    size = OPENAI_SIZES[p.source]
    return {n: SourceParams(uri=f"{base}/{size}/{n}") for n in OPENAI_FILES}


def fetch_checkpoint(p: ConvertParams, download: DownloadParams, out_dir: str | Path = "data/checkpoint") -> dict:
    """Fetch the files of ``p.source`` into ``out_dir`` (replaced once complete); return a summary
    (source, files with bytes and sha256). Without network a ``gpt2-*`` source fails with one
    line naming the URL and the way out (a ``file://`` mirror)."""
    from gptlab.data.download import cache_root

    sources = checkpoint_sources(p)
    cache = cache_root(download.cache_dir)
    summary: dict = {"source": p.source, "files": {}}
    with atomic_dir(out_dir) as tmp:
        for name, source in sources.items():
            try:
                got = fetch(source, cache, download.timeout_s, download.retries, label=name)
            except GptlabError as e:
                if source.uri.startswith(("https://", "http://")):
                    reason = str(e).removeprefix(f"{source.uri}: ")
                    reason = reason if len(reason) <= 160 else reason[:157] + "..."
                    raise GptlabError(
                        f"{source.uri}: cannot be fetched ({reason}); convert.source={p.source} needs the internet once, or {OFFLINE_HELP}"
                    ) from None
                raise
            _link_or_copy(got.path, tmp / name)
            summary["files"][name] = {"uri": source.uri, "bytes": got.bytes, "sha256": got.sha256}
        write_json(tmp / "SOURCE.json", summary)
    return summary


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a GPT-2 checkpoint is up to 6 GB), copying across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def peak_rss_bytes() -> int:
    """Return this process's peak resident memory so far, in bytes (Linux ru_maxrss is KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def build_base(p: ConvertParams, checkpoint_dir: str | Path, pretrained_dir: str | Path, out_dir: str | Path, metrics_path: str | Path | None = None) -> dict:
    """Write the base model to ``out_dir`` (a gptlab checkpoint) and return the metrics: source,
    parameters, sha256 of ``model.safetensors``, seconds, peak memory (MiB) and source bytes."""
    start = time.perf_counter()
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if p.source == "pretrained":
        src = Path(pretrained_dir)
        if not (src / "model.safetensors").exists():
            raise GptlabError(f"{src}: no model.safetensors; run `dvc repro pretrain` first (convert.source: pretrained)")
        with atomic_dir(out_dir) as tmp:
            for name in ("model.safetensors", "config.json", "tokenizer.json"):
                if (src / name).exists():
                    shutil.copyfile(src / name, tmp / name)
        model, _ = load_model(out_dir)
        source_bytes = (src / "model.safetensors").stat().st_size
    else:
        if not (checkpoint_dir / "SOURCE.json").exists():
            raise GptlabError(f"{checkpoint_dir}: not fetched; run `dvc repro download_checkpoint` first")
        if p.source.startswith("hf:"):
            from gptlab.convert.hf import load_hf_dir

            model = load_hf_dir(checkpoint_dir)
        else:
            from gptlab.convert.openai_tf import load_openai_tf

            model = load_openai_tf(checkpoint_dir)
        source_bytes = sum(f.stat().st_size for f in checkpoint_dir.iterdir() if f.is_file())
        save_model(out_dir, model, "gpt2", {"source": p.source})
    metrics = {
        "source": p.source,
        "parameters": model.num_parameters(),
        "layers": model.config.n_layers,
        "emb_dim": model.config.emb_dim,
        "sha256": sha256_file(out_dir / "model.safetensors"),
        "seconds": round(time.perf_counter() - start, 3),
        "peak_memory_mib": round(peak_rss_bytes() / 2**20, 1),
        "source_bytes": source_bytes,
    }
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics
