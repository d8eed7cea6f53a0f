"""Stage `generate_base`: the base model answers every test instruction, as the fine-tuned one does.

reads   models/base/, data/instructions/test.json ; params seed, generate, finetune.prompt_style
writes  data/responses_base.json: instruction, input, output = the reference, response
"""

import sys

from gptlab.generate import answer_file
from gptlab.params import Params
from gptlab.pipeline import stage_main

BASE = "models/base"
TEST = "data/instructions/test.json"
RESPONSES_BASE = "data/responses_base.json"


def run(params: Params) -> None:
    """Answer with the base in the fine-tuning prompt style (the style the fine-tuned model
    records is this param), with the same sampling as the generate stage, so the score stage
    shows what fine-tuning bought. It reads neither models/finetuned nor the other finetune
    params: a fine-tune experiment does not rerun it."""
    out = answer_file(BASE, TEST, RESPONSES_BASE, params.generate, params.seed, params.finetune.prompt_style)
    empty = sum(1 for r in out if not r["response"])
    print(f"generate_base: {BASE}: {len(out)} responses ({empty} empty) -> {RESPONSES_BASE}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
