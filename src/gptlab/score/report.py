"""The score stage: per-record scores of each engine's responses, their figures as DVC metrics.

Offline metrics always (SQuAD exact match and token F1, ROUGE-1/2/L, lengths, the gptlab
model's loss on the reference outputs); an LLM judge when ``score.judge.api`` is not ``none``.
``data/scores.csv`` has one row per (engine, record); ``metrics/score.json`` holds only figures
worth comparing, one block per engine, so ``dvc metrics diff`` / ``dvc exp show`` stay
readable; where they came from (judge, files, record counts) goes to a provenance JSON.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gptlab.convert.load_any import load_any
from gptlab.data.prompts import model_prompt_style
from gptlab.errors import GptlabError
from gptlab.io import read_json, write_json
from gptlab.params import ScoreParams
from gptlab.score.judge import base_url, judge_records
from gptlab.score.metrics import record_metrics, reference_loss, summarise


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


def score_engine(records: list[dict], p: ScoreParams, model_dir: str | Path | None = None, style: str | None = None) -> pd.DataFrame:
    """Return one row per record: offline metrics, ``loss`` (nats/token of the reference output
    under the gptlab model in ``model_dir``, when given, in prompt ``style``; None: the style
    recorded in ``model_dir``, else alpaca) and, with a judge, ``judge_score``
    (0..100, empty when unscored), ``judge_reply``, ``judge_attempts`` and ``judge_error`` (why
    the request failed; empty when it did not)."""
    df = pd.DataFrame([record_metrics(r) for r in records])
    df.insert(0, "record", range(len(records)))
    if model_dir is not None:
        model, tok = load_any(model_dir)
        df["loss"] = reference_loss(model, tok, records, style or model_prompt_style(model_dir, "alpaca"), p.loss_batch_size)
    if p.judge.api != "none":
        results = judge_records(records, p.judge)
        df["judge_score"] = pd.array([r.score for r in results], dtype="Int64")
        df["judge_reply"] = [r.reply for r in results]
        df["judge_attempts"] = [r.attempts for r in results]
        df["judge_error"] = [r.error for r in results]
    return df


def provenance(engines: dict[str, tuple[str | Path, str | Path | None]], counts: dict[str, int], p: ScoreParams, csv_path: str | Path) -> dict:
    """Return where the scores came from: the judge (api, model, URL), each engine's responses
    file, model directory and record count, and the per-record CSV."""
    judge = {"api": p.judge.api} if p.judge.api == "none" else {"api": p.judge.api, "model": p.judge.model, "url": base_url(p.judge)}
    files = {
        name: {"responses": str(responses), "model": None if model is None else str(model), "records": counts[name]}
        for name, (responses, model) in engines.items()
    }
    return {"judge": judge, "engines": files, "scores": str(csv_path)}


def score_responses(
    engines: dict[str, tuple[str | Path, str | Path | None]],
    p: ScoreParams,
    csv_path: str | Path,
    metrics_path: str | Path,
    style: str | None = None,
    provenance_path: str | Path | None = None,
) -> dict:
    """Score each engine's responses (``engines``: name -> (responses JSON, gptlab model dir or
    None)); write the per-record CSV, the metrics JSON (see :func:`summarise`) and, when
    ``provenance_path`` is given, :func:`provenance`; return the metrics.

    Failed judge requests leave their records unscored (reason in the CSV's ``judge_error``).
    With a judge configured that scored no record at all, the files are still written and
    GptlabError says why.
    """
    tables, metrics, counts = [], {}, {}
    for engine, (responses, model_dir) in engines.items():
        df = score_engine(load_responses(responses), p, model_dir, style)
        counts[engine] = len(df)
        metrics[engine] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in summarise(df).items()}
        df.insert(0, "engine", engine)
        tables.append(df)
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(csv_path, index=False)
    write_json(metrics_path, metrics)
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
