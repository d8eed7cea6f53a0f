"""Stage `generate`: the fine-tuned model, and the base beside it, answer every test instruction.

reads   models/finetuned/ (its prompt style too), models/base/, data/instructions/test.json ; params seed, generate
writes  data/responses.json (fine-tuned), data/responses_base.json (base): instruction, input, output = the reference, response
"""

import sys

from gptlab.data.prompts import model_prompt_style
from gptlab.generate import answer_file
from gptlab.params import Params
from gptlab.pipeline import stage_main

FINETUNED = "models/finetuned"
BASE = "models/base"
TEST = "data/instructions/test.json"
RESPONSES = "data/responses.json"
RESPONSES_BASE = "data/responses_base.json"


def run(params: Params) -> None:
    """Answer in batches with the KV cache, stopping at the model's end tokens; the base too, so
    the score stage can show what fine-tuning bought. Both get the prompt style the fine-tuned
    model records (the one it was trained with)."""
    style = model_prompt_style(FINETUNED, "alpaca")
    for model, out_path in ((FINETUNED, RESPONSES), (BASE, RESPONSES_BASE)):
        out = answer_file(model, TEST, out_path, params.generate, params.seed, style)
        empty = sum(1 for r in out if not r["response"])
        print(f"generate: {model}: {len(out)} responses ({empty} empty) -> {out_path}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
