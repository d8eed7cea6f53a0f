"""The score stage: per-record scores of each engine's responses, their figures as DVC metrics.

Offline metrics always (SQuAD exact match, token F1 with its precision and recall, ROUGE-1/2/L,
lengths, and the model's loss on the reference outputs, read from the per-record file a
reference_loss stage wrote: no forward pass here); an LLM judge when ``score.judge.api`` is not
``none``. ``data/scores.csv`` has one row per (engine, record); ``metrics/score.json`` holds
only figures worth comparing: one block per engine (means, bootstrap intervals) and, for a
pair of engines that answered the same records, a ``diff`` block (the paired difference, its
interval, whether it excludes 0), also written as the table ``metrics/score.md``. Where the
figures came from (judge, files, record counts) goes to a provenance JSON.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gptlab.errors import GptlabError
from gptlab.io import read_json, write_json, write_text
from gptlab.params import ScoreParams
from gptlab.score.judge import base_url, judge_records
from gptlab.score.metrics import record_metrics, summarise
from gptlab.score.paired import MATCHED, check_same_records, engine_intervals, matched_f1_columns, paired_differences
from gptlab.score.table import score_markdown


def load_responses(path: str | Path) -> list[dict]:
    """Return the response records of ``path`` (a JSON list with instruction/input/output/response)."""
    path = Path(path)
    records = read_json(path, "a responses file written by `dvc repro generate`")
    if not isinstance(records, list):
        raise GptlabError(f"{path}: expected a JSON list of response records")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "output" not in r or "response" not in r:
            raise GptlabError(f"{path}: record {i} lacks 'output' or 'response'; regenerate it with `dvc repro generate`")
    return records


def read_reference_losses(path: str | Path, records: int) -> list[float]:
    """Return the per-record losses (nats/token) in ``path`` (written by
    :func:`gptlab.score.reference_loss.reference_loss_file`),
    checking there is one per record of the responses they go with (``records``)."""
    data = read_json(path, "a reference-loss file written by `dvc repro reference_loss` (or reference_loss_base)")
    losses = data.get("loss") if isinstance(data, dict) else None
    if not isinstance(losses, list) or not all(isinstance(x, (int, float)) for x in losses):
        raise GptlabError(f"{path}: expected a JSON object with a list of numbers under 'loss'; rerun `dvc repro` for the stage that writes it")
    if len(losses) != records:
        raise GptlabError(f"{path}: {len(losses)} losses for {records} responses; the test split changed since: run `dvc repro` to bring both up to date")
    return [float(x) for x in losses]


def score_engine(records: list[dict], p: ScoreParams, losses: list[float] | None = None) -> pd.DataFrame:
    """Return one row per record: offline metrics, ``loss`` (``losses``: nats/token of each
    reference output under the engine's model, from a reference_loss stage, when given) and,
    with a judge, ``judge_score`` (0..100, empty when unscored), ``judge_reply``,
    ``judge_attempts`` and ``judge_error`` (why the request failed; empty when it did not)."""
    df = pd.DataFrame([record_metrics(r) for r in records])
    df.insert(0, "record", range(len(records)))
    if losses is not None:
        df["loss"] = losses
    if p.judge.api != "none":
        results = judge_records(records, p.judge)
        df["judge_score"] = pd.array([r.score for r in results], dtype="Int64")
        df["judge_reply"] = [r.reply for r in results]
        df["judge_attempts"] = [r.attempts for r in results]
        df["judge_error"] = [r.error for r in results]
    return df


def provenance(engines: dict[str, tuple[str | Path, str | Path | None]], counts: dict[str, int], p: ScoreParams, csv_path: str | Path) -> dict:
    """Return where the scores came from: the judge (api, model, URL), each engine's responses
    file, reference-loss file and record count, and the per-record CSV."""
    judge = {"api": p.judge.api} if p.judge.api == "none" else {"api": p.judge.api, "model": p.judge.model, "url": base_url(p.judge)}
    files = {
        name: {"responses": str(responses), "reference_loss": None if losses is None else str(losses), "records": counts[name]}
        for name, (responses, losses) in engines.items()
    }
    return {"judge": judge, "engines": files, "scores": str(csv_path)}


def score_responses(
    engines: dict[str, tuple[str | Path, str | Path | None]],
    p: ScoreParams,
    csv_path: str | Path,
    metrics_path: str | Path,
    provenance_path: str | Path | None = None,
    pair: tuple[str, str] | None = None,
    table_path: str | Path | None = None,
) -> dict:
    """Score each engine's responses (``engines``: name -> (responses JSON, per-record
    reference-loss JSON or None)); write the per-record CSV, the metrics JSON and, when
    ``provenance_path`` is given, :func:`provenance`; return the metrics.

    The metrics hold one block per engine (:func:`gptlab.score.metrics.summarise`, plus the
    bootstrap bounds ``<metric>_low`` / ``<metric>_high`` of F1, ROUGE-L and loss). With
    ``pair`` (a, b), two engines that answered the same records, the CSV gets each one's
    ``squad_token_f1_matched`` (F1 at matched length), their blocks its mean, and the metrics a
    ``diff`` block, a - b (:func:`gptlab.score.paired.paired_differences`), which
    ``table_path`` (when given) shows as Markdown (:func:`gptlab.score.table.score_markdown`).

    Failed judge requests leave their records unscored (reason in the CSV's ``judge_error``).
    With a judge configured that scored no record at all, the files are still written and
    GptlabError says why.
    """
    if pair is not None and not set(pair) <= set(engines):
        raise GptlabError(f"pair {pair} names an engine that is not scored (engines: {', '.join(engines)})")
    frames, metrics, counts, records = {}, {}, {}, {}
    for engine, (responses, losses_path) in engines.items():
        records[engine] = load_responses(responses)
        losses = None if losses_path is None else read_reference_losses(losses_path, len(records[engine]))
        frames[engine] = score_engine(records[engine], p, losses)
    if pair is not None:
        a, b = pair
        check_same_records(records[a], records[b], pair)
        frames[a][MATCHED], frames[b][MATCHED] = matched_f1_columns(records[a], records[b])
    for engine, df in frames.items():
        counts[engine] = len(df)
        block = summarise(df)
        if MATCHED in df:
            block[MATCHED] = float(df[MATCHED].mean())
        block.update(engine_intervals(df, p.bootstrap))
        metrics[engine] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in block.items()}
    if pair is not None:
        metrics["diff"] = paired_differences(frames[pair[0]], frames[pair[1]], p.bootstrap)
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    table = pd.concat([df.assign(engine=engine)[["engine", *df.columns]] for engine, df in frames.items()], ignore_index=True)
    table.to_csv(csv_path, index=False)
    write_json(metrics_path, metrics)
    if table_path is not None and pair is not None:
        write_text(table_path, score_markdown(metrics, pair, p.bootstrap, counts[pair[0]]))
    if provenance_path is not None:
        write_json(provenance_path, provenance(engines, counts, p, csv_path))
    if p.judge.api != "none" and len(table) and table["judge_score"].notna().sum() == 0:
        raise GptlabError(_nothing_scored(table, p, csv_path))
    return metrics


def _nothing_scored(table: pd.DataFrame, p: ScoreParams, csv_path: str | Path) -> str:
    errors = table["judge_error"].fillna("").astype(str)
    failed = errors[errors != ""]
    why = f"{len(failed)} requests failed, first: {failed.iloc[0]}" if len(failed) else "no reply held a score 0..100"
    return (
        f"judge {base_url(p.judge)} scored none of {len(table)} records ({why}); "
        f"see judge_reply/judge_error in {csv_path}, fix the judge (score.judge in params.yaml) or set score.judge.api: none"
    )
