"""``gptlab compare``: experiments side by side, with the score intervals and their significance.

Reads what ``dvc exp show --json`` reports (run in the project folder): each experiment's params
and ``metrics/score.json``. The table has one column per experiment and one row per param that
differs among them, then the key figures: per engine the mean with its bootstrap interval, and
the paired difference fine-tuned minus base with its interval, marked ``*`` when the interval
excludes 0 (the difference is unlikely to be test-split noise).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gptlab.errors import GptlabError

SCORE_METRICS = "metrics/score.json"
PARAMS_FILE = "params.yaml"
# (label, block, metric): the rows of the table, in order
ROWS = (
    ("F1 fine-tuned", "finetuned", "squad_token_f1"),
    ("F1 base", "base", "squad_token_f1"),
    ("F1 fine-tuned - base", "diff", "squad_token_f1"),
    ("F1 at matched length, ft - base", "diff", "squad_token_f1_matched"),
    ("ROUGE-L fine-tuned", "finetuned", "rougeL_f1"),
    ("ROUGE-L base", "base", "rougeL_f1"),
    ("ROUGE-L fine-tuned - base", "diff", "rougeL_f1"),
    ("loss fine-tuned (nats/token)", "finetuned", "loss"),
    ("loss base", "base", "loss"),
    ("loss fine-tuned - base", "diff", "loss"),
    ("words per answer, fine-tuned", "finetuned", "response_words"),
    ("words per answer, base", "base", "response_words"),
)


def exp_show(root: str | Path = ".") -> list[dict]:
    """Return the parsed output of ``dvc exp show --json`` in the DVC project ``root`` (a list:
    the workspace, then each baseline commit with its ``experiments``)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GptlabError(f"`dvc exp show --json` in {root} did not run ({e}); is DVC installed in this environment?") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise GptlabError(f"`dvc exp show --json` failed in {Path(root).resolve()}: {last}; run gptlab compare in the project folder (with dvc.yaml)")
    try:
        return json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        raise GptlabError(f"`dvc exp show --json` printed no JSON: {proc.stdout[:200]!r}; is this DVC 3?") from None


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _record(entry: dict) -> dict:
    """``{"params": {dotted key: value}, "score": metrics/score.json's dict or {}}`` of one entry."""
    data = entry.get("data") or {}
    params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
    score = ((data.get("metrics") or {}).get(SCORE_METRICS) or {}).get("data") or {}
    return {"params": _flatten(params), "score": score}


def experiments(shown: list[dict]) -> dict[str, dict]:
    """Return ``{name: record}`` of every entry of ``dvc exp show --json``: ``workspace``, each
    baseline commit (by branch name, else its short hash) and each experiment by name; a record
    holds the flattened params (dotted keys) and the score metrics (:data:`SCORE_METRICS`)."""
    found: dict[str, dict] = {}
    for entry in shown:
        rev = entry.get("rev") or ""
        name = "workspace" if rev == "workspace" else (entry.get("name") or rev[:7])
        found[name] = _record(entry) | {"baseline": rev != "workspace"}
        for exp in entry.get("experiments") or []:
            for run in exp.get("revs") or []:
                exp_name = exp.get("name") or run.get("name") or (run.get("rev") or "")[:7]
                found[exp_name] = _record(run) | {"baseline": False}
    return found


def select(found: dict[str, dict], names: Sequence[str]) -> list[str]:
    """Return the experiments to show: ``names`` in order, or with none the workspace and its
    baseline (the first commit ``dvc exp show`` lists). GptlabError names an unknown one and the
    known ones."""
    if not names:
        baseline = next((n for n, r in found.items() if r["baseline"]), None)
        return ["workspace"] + ([baseline] if baseline else [])
    unknown = [n for n in names if n not in found]
    if unknown:
        raise GptlabError(f"no experiment named {', '.join(unknown)} in `dvc exp show`; known: {', '.join(found)}")
    return list(names)


def changed_params(records: Sequence[dict]) -> list[str]:
    """Return the dotted params keys whose values differ among ``records`` (sorted)."""
    keys = sorted({k for r in records for k in r["params"]})
    return [k for k in keys if len({json.dumps(r["params"].get(k), sort_keys=True) for r in records}) > 1]


def _cell(block: dict, metric: str, signed: bool) -> str:
    if metric not in block or block[metric] is None:
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if metric == "response_words":
        return f"{block[metric]:.1f}"
    text = fmt.format(block[metric])
    low, high = block.get(f"{metric}_low"), block.get(f"{metric}_high")
    if low is not None and high is not None:
        text += f" [{fmt.format(low)}, {fmt.format(high)}]"
        if signed:
            significant = block.get(f"{metric}_significant", low > 0 or high < 0)
            text += " *" if significant else "  "
    return text


def comparison_table(found: dict[str, dict], names: Sequence[str]) -> str:
    """Return the text table of the experiments ``names``: a column each, a row per changed param,
    then the figures of :data:`ROWS` with their intervals, ``*`` marking a fine-tuned minus base
    difference whose interval excludes 0; a note on how to read it at the end."""
    records = [found[n] for n in names]
    rows = [("", list(names))]
    rows += [(key, [_value(r["params"].get(key)) for r in records]) for key in changed_params(records)]
    rows.append(("", ["" for _ in names]))
    for label, block, metric in ROWS:
        cells = [_cell(r["score"].get(block) or {}, metric, signed=block == "diff") for r in records]
        if any(c != "-" for c in cells):
            rows.append((label, cells))
    if all(not r["score"] for r in records):
        raise GptlabError(f"none of {', '.join(names)} has {SCORE_METRICS}; run `dvc repro` (or `dvc exp run`) through the score stage first")
    width = max(len(label) for label, _ in rows)
    widths = [max(len(cells[i]) for _, cells in rows) for i in range(len(names))]
    lines = [label.ljust(width) + "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)) for label, cells in rows]
    confidence = next((r["params"]["score.bootstrap.confidence"] for r in records if "score.bootstrap.confidence" in r["params"]), 0.95)
    lines.append("")
    lines.append(f"mean [{confidence * 100:g}% bootstrap interval] over the test records; * the fine-tuned - base interval excludes 0.")
    lines.append("F1 and ROUGE-L: higher is better; loss: lower is better. Per experiment, metrics/score.md says which engine wins.")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _value(value) -> str:
    return "-" if value is None else str(value)


def compare(names: Sequence[str] = (), root: str | Path = ".") -> str:
    """Return :func:`comparison_table` of the experiments ``names`` (none: the workspace and its
    baseline) of the DVC project in ``root``."""
    found = experiments(exp_show(root))
    return comparison_table(found, select(found, names))
