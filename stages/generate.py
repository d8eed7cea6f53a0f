"""Stage `generate`: the fine-tuned model answers every test instruction.

reads   models/finetuned/ (its prompt style too), data/instructions/test.json ; params seed, generate
writes  data/responses.json: instruction, input, output = the reference, response
"""

import sys

from gptlab.data.prompts import model_prompt_style
from gptlab.generate import answer_file
from gptlab.params import Params
from gptlab.pipeline import stage_main

FINETUNED = "models/finetuned"
TEST = "data/instructions/test.json"
RESPONSES = "data/responses.json"


def run(params: Params) -> None:
    """Answer in batches with the KV cache, stopping at the model's end tokens, in the prompt
    style the fine-tuned model records (the one it was trained with). The base's answers are the
    generate_base stage's, so a new fine-tune does not answer again with an unchanged base."""
    out = answer_file(FINETUNED, TEST, RESPONSES, params.generate, params.seed, model_prompt_style(FINETUNED, "alpaca"))
    empty = sum(1 for r in out if not r["response"])
    print(f"generate: {FINETUNED}: {len(out)} responses ({empty} empty) -> {RESPONSES}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
