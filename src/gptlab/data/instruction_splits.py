"""The instructions stage's library side: the raw Alpaca-format files into train/val/test.

Kept apart from :mod:`gptlab.data.instructions` (records, prompts, batches), which the training,
generation and scoring stages import, so that a change here reruns the instructions stage only.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.data.instructions import drop_duplicates, load_records, split_records, write_splits
from gptlab.data.overlap import dedupe_splits
from gptlab.errors import GptlabError
from gptlab.io import write_json
from gptlab.params import InstructionsParams


def split_instruction_files(
    params: InstructionsParams, raw_dir: str | Path, out_dir: str | Path, seed: int, metrics_path: str | Path | None = None
) -> dict[str, int]:
    """The instructions stage: read every ``params.file_glob`` file of ``raw_dir`` (sorted),
    drop duplicate records, keep the first ``params.max_records``, split them with ``seed``,
    find the val/test records that near-duplicate a train record (:mod:`gptlab.data.overlap`;
    dropped from val/test under ``params.dedupe: drop``) and write ``out_dir/{train,val,test}.json``.

    Returns the counts ``{"records", "duplicates_dropped", "train", "val", "test",
    "near_duplicates_val", "near_duplicates_test"}`` (``records`` is the number split, after
    duplicates went; the split sizes are those written; near-duplicates are those found,
    dropped or not); ``metrics_path`` gets all but ``records``.
    """
    files = sorted(p for p in Path(raw_dir).glob(params.file_glob) if p.is_file())
    if not files:
        raise GptlabError(f"{raw_dir}: no file matches instructions.file_glob={params.file_glob!r}; run `dvc repro download` or fix the glob")
    records, dropped = drop_duplicates([r for f in files for r in load_records(f)])
    if params.max_records is not None:
        records = records[: params.max_records]
    splits = split_records(records, (params.train_fraction, params.val_fraction, params.test_fraction), seed)
    splits, near = dedupe_splits(splits, params.dedupe)
    write_splits(splits, out_dir)
    counts = {"records": len(records), "duplicates_dropped": dropped, **{k: len(v) for k, v in splits.items()}, **near}
    if metrics_path is not None:
        write_json(metrics_path, {k: v for k, v in counts.items() if k != "records"})
    return counts
