"""Stage `generate`: the fine-tuned model answers every test instruction.

reads   models/finetuned/, data/instructions/test.json ; params seed, generate, finetune.prompt_style
writes  data/responses.json (instruction, input, output = the reference, response)
"""

import sys

from gptlab.generate import answer_file
from gptlab.params import Params
from gptlab.pipeline import stage_main

FINETUNED = "models/finetuned"
TEST = "data/instructions/test.json"
RESPONSES = "data/responses.json"


def run(params: Params) -> None:
    """Answer in batches with the KV cache, stopping at end-of-text."""
    out = answer_file(FINETUNED, TEST, RESPONSES, params.generate, params.seed, params.finetune.prompt_style)
    empty = sum(1 for r in out if not r["response"])
    print(f"generate: {len(out)} responses ({empty} empty) -> {RESPONSES}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
