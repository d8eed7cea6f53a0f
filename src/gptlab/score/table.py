"""``metrics/score.md``: the score means of two engines as a table that says which is better.

Rendered from the figures of ``metrics/score.json`` (so the two never disagree): per metric each
engine's mean with its interval, the paired difference with its interval, and the engine the
interval favours ("neither" when it includes 0).
"""

from __future__ import annotations

from gptlab.params import BootstrapParams
from gptlab.score.paired import DIFF_METRICS, better

LABELS = {
    "squad_token_f1": "token F1",
    "squad_token_f1_matched": "token F1 at matched length",
    "rougeL_f1": "ROUGE-L F1",
    "loss": "reference loss, nats/token",
}
DISPLAY = {"finetuned": "fine-tuned", "base": "base", "litgpt": "litgpt"}


def _num(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.3f}" if sign else f"{x:.3f}"


def _mean_ci(block: dict, metric: str) -> str:
    value = block.get(metric)
    if f"{metric}_low" not in block:
        return _num(value)
    return f"{_num(value)} [{_num(block[f'{metric}_low'])}, {_num(block[f'{metric}_high'])}]"


def _name(engine: str) -> str:
    return DISPLAY.get(engine, engine)


def score_markdown(metrics: dict, names: tuple[str, str], p: BootstrapParams, records: int) -> str:
    """Return the Markdown of ``metrics/score.md``: the engines ``names`` (a, b) side by side, the
    ``diff`` block (a - b) of ``metrics`` with its intervals and which engine is better, then their
    answers' precision, recall and length against the reference."""
    a, b = names
    da, db, diff = metrics[a], metrics[b], metrics.get("diff", {})
    pct = f"{p.confidence * 100:g}%"
    lines = [
        f"# Scores: {_name(a)} against {_name(b)}",
        "",
        f"{records} test records. Each figure is a mean over the records with its {pct} percentile bootstrap interval "
        f"({p.samples:,} resamples, seed {p.seed}); both engines are resampled on the same records, so "
        f"{_name(a)} − {_name(b)} is a paired difference. **better** names the engine the difference favours when its "
        'interval excludes 0, else "neither": a difference that small could be which records happened to be in the test split.',
        "",
        f"| metric | better | {_name(a)} | {_name(b)} | {_name(a)} − {_name(b)} | interval excludes 0 |",
        "|---|---|---|---|---|---|",
    ]
    for metric, lower in DIFF_METRICS.items():
        if metric not in diff:
            continue
        winner = better(diff, metric, names)
        direction = "lower is better" if lower else "higher is better"
        span = f"{_num(diff[metric], True)} [{_num(diff[f'{metric}_low'], True)}, {_num(diff[f'{metric}_high'], True)}]"
        lines.append(
            f"| {LABELS.get(metric, metric)} ({direction}) | {f'**{_name(winner)}**' if winner else 'neither'} | {_mean_ci(da, metric)} | "
            f"{_mean_ci(db, metric)} | {span} | {'yes' if diff[f'{metric}_significant'] else 'no'} |"
        )
    lines += [
        "",
        "Length, which token F1 and ROUGE-L reward by itself (a shorter answer has a higher precision): token F1 at "
        "matched length cuts both answers of a record to the shorter one's words before scoring, so it compares what "
        "each says, not how much.",
        "",
        "| engine | token precision | token recall | words per answer | answer / reference length |",
        "|---|---|---|---|---|",
    ]
    for engine, block in ((a, da), (b, db)):
        words, ratio = block.get("response_words"), block.get("length_ratio")
        lines.append(
            f"| {_name(engine)} | {_num(block.get('squad_token_precision'))} | {_num(block.get('squad_token_recall'))} | "
            f"{'-' if words is None else f'{words:.1f}'} | {'-' if ratio is None else f'{ratio:.2f}x'} |"
        )
    return "\n".join(lines) + "\n"
