"""Stage `score`: the responses scored against the references, with intervals (no forward pass).

reads   data/responses.json (fine-tuned), data/responses_base.json, data/responses_litgpt.json (when
        litgpt.enabled), data/reference_loss.json, data/reference_loss_base.json ;
        params score.judge, score.bootstrap, litgpt.enabled
writes  data/scores.csv (one row per engine and record), data/provenance/score.json (judge, files)
metrics metrics/score.json (per engine: reference loss, SQuAD F1/precision/recall, ROUGE-L, lengths,
        intervals; diff: fine-tuned minus base, paired, with intervals), metrics/score.md (the table)
"""

import sys

from gptlab.params import Params
from gptlab.pipeline import stage_main
from gptlab.score.report import score_responses

RESPONSES = "data/responses.json"
RESPONSES_BASE = "data/responses_base.json"
RESPONSES_LITGPT = "data/responses_litgpt.json"
LOSSES = "data/reference_loss.json"
LOSSES_BASE = "data/reference_loss_base.json"
SCORES = "data/scores.csv"
PROVENANCE = "data/provenance/score.json"
METRICS = "metrics/score.json"
TABLE = "metrics/score.md"


def run(params: Params) -> None:
    """Score every enabled engine's responses; write the table, the means with their intervals,
    and fine-tuned minus base (paired) with which is better."""
    engines = {"finetuned": (RESPONSES, LOSSES), "base": (RESPONSES_BASE, LOSSES_BASE)}
    if params.litgpt.enabled:
        engines["litgpt"] = (RESPONSES_LITGPT, None)
    m = score_responses(engines, params.score, SCORES, METRICS, provenance_path=PROVENANCE, pair=("finetuned", "base"), table_path=TABLE)
    for engine in [*engines, "diff"]:
        print(f"score: {engine}: " + ", ".join(f"{k} {v}" for k, v in m[engine].items() if isinstance(v, (int, float)) and not k.endswith(("_low", "_high"))))
    print(f"score: which is better, with intervals: {TABLE}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
