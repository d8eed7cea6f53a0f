"""Stage `score`: the responses scored against the references (offline metrics, optional LLM judge).

reads   data/responses.json (fine-tuned), data/responses_base.json, data/responses_litgpt.json (when
        litgpt.enabled), models/finetuned/ (its prompt style too), models/base/ ;
        params score, litgpt.enabled
writes  data/scores.csv (one row per engine and record), data/provenance/score.json (judge, files)
metrics metrics/score.json (per engine: reference loss, SQuAD F1, ROUGE-L, words, empty share; judge mean, scored/unscored)
"""

import sys

from gptlab.data.prompts import model_prompt_style
from gptlab.params import Params
from gptlab.pipeline import stage_main
from gptlab.score.report import score_responses

RESPONSES = "data/responses.json"
RESPONSES_BASE = "data/responses_base.json"
RESPONSES_LITGPT = "data/responses_litgpt.json"
FINETUNED = "models/finetuned"
BASE = "models/base"
SCORES = "data/scores.csv"
PROVENANCE = "data/provenance/score.json"
METRICS = "metrics/score.json"


def run(params: Params) -> None:
    """Score every enabled engine's responses and write the table and the means."""
    engines = {"finetuned": (RESPONSES, FINETUNED), "base": (RESPONSES_BASE, BASE)}
    if params.litgpt.enabled:
        engines["litgpt"] = (RESPONSES_LITGPT, None)
    style = model_prompt_style(FINETUNED, "alpaca")  # the reference loss uses the fine-tuning prompt style for every engine
    m = score_responses(engines, params.score, SCORES, METRICS, style, provenance_path=PROVENANCE)
    for engine in engines:
        print(f"score: {engine}: " + ", ".join(f"{k} {v}" for k, v in m[engine].items() if isinstance(v, (int, float))))


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
