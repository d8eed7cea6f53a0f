"""The score stage: per-record scores of each engine's responses, and their means as DVC metrics.

Offline metrics always (exact match, token F1, ROUGE-L, lengths, the gptlab model's loss on the
reference outputs); an LLM judge when ``score.judge.api`` is not ``none``. ``data/scores.csv``
has one row per (engine, record); ``metrics/score.json`` one block of means per engine plus the
judge's name and URL, so ``dvc metrics diff`` / ``dvc exp show`` compare runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from gptlab.errors import GptlabError
from gptlab.io import write_json
from gptlab.params import JudgeParams, ScoreParams
from gptlab.score.judge import JudgeConfig, judge_records
from gptlab.score.metrics import record_metrics, reference_loss, summarise


def judge_config(p: JudgeParams) -> JudgeConfig:
    """Return the judge client's config for the ``score.judge`` params."""
    extra = {"prompt": p.prompt} if p.prompt else {}
    return JudgeConfig(
        api=p.api,
        url=p.url,
        model=p.model,
        timeout_s=p.timeout_s,
        retries=p.retries,
        concurrency=p.concurrency,
        num_ctx=p.num_ctx,
        seed=p.seed,
        max_tokens=p.max_tokens,
        **extra,
    )


def load_responses(path: str | Path) -> list[dict]:
    """Return the response records of ``path`` (a JSON list with instruction/input/output/response)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptlabError(f"{path}: not found; run `dvc repro generate` first") from None
    if not isinstance(records, list):
        raise GptlabError(f"{path}: expected a JSON list of response records")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "output" not in r or "response" not in r:
            raise GptlabError(f"{path}: record {i} lacks 'output' or 'response'; regenerate it with `dvc repro generate`")
    return records


def score_engine(records: list[dict], p: ScoreParams, model_dir: str | Path | None = None, style: str = "alpaca") -> pd.DataFrame:
    """Return one row per record: offline metrics, ``loss`` (nats/token of the reference output
    under the gptlab model in ``model_dir``, when given), ``judge_score`` (0..100 or empty when
    unscored) and ``judge_reply``."""
    df = pd.DataFrame([record_metrics(r) for r in records])
    df.insert(0, "record", range(len(records)))
    if model_dir is not None:
        from gptlab.checkpoint import load_model

        model, tok = load_model(model_dir)
        df["loss"] = reference_loss(model, tok, records, style, p.loss_batch_size)
    if p.judge.api != "none":
        results = judge_records(records, judge_config(p.judge))
        df["judge_score"] = pd.array([r.score for r in results], dtype="Int64")
        df["judge_reply"] = [r.reply for r in results]
        df["judge_attempts"] = [r.attempts for r in results]
    return df


def score_responses(
    engines: dict[str, tuple[str | Path, str | Path | None]],
    p: ScoreParams,
    csv_path: str | Path,
    metrics_path: str | Path,
    style: str = "alpaca",
) -> dict:
    """Score each engine's responses (``engines``: name -> (responses JSON, gptlab model dir or
    None)); write the per-record CSV and the metrics JSON; return the metrics."""
    tables, metrics = [], {}
    for engine, (responses, model_dir) in engines.items():
        df = score_engine(load_responses(responses), p, model_dir, style)
        summary = summarise(df)
        if "judge_score" in df and df["judge_score"].notna().sum() >= 3:
            # how far the judge agrees with the offline metric (rank correlation, -1..1)
            scored = df[df["judge_score"].notna()]
            summary["judge_f1_spearman"] = float(scored["judge_score"].astype(float).corr(scored["token_f1"], method="spearman"))
        metrics[engine] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in summary.items()}
        df.insert(0, "engine", engine)
        tables.append(df)
    metrics["judge"] = {"api": p.judge.api} if p.judge.api == "none" else {"api": p.judge.api, "model": p.judge.model, "url": p.judge.url}
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    pd.concat(tables, ignore_index=True).to_csv(csv_path, index=False)
    write_json(metrics_path, metrics)
    return metrics
