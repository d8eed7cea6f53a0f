"""Stage `reference_loss`: the fine-tuned model's loss on each test record's reference output.

reads   models/finetuned/ (its prompt style too), data/instructions/test.json ; params score.loss_batch_size
writes  data/reference_loss.json: the loss per record (nats/token), in test.json's order
"""

import sys

from gptlab.data.prompts import model_prompt_style
from gptlab.params import Params
from gptlab.pipeline import stage_main
from gptlab.score.reference_loss import reference_loss_file

FINETUNED = "models/finetuned"
TEST = "data/instructions/test.json"
LOSSES = "data/reference_loss.json"


def run(params: Params) -> None:
    """Teacher-forced loss of each reference output in the style the model was trained with; no
    generation param is read, so a generation experiment does not rerun it."""
    losses = reference_loss_file(FINETUNED, TEST, LOSSES, model_prompt_style(FINETUNED, "alpaca"), params.score.loss_batch_size)
    print(f"reference_loss: {FINETUNED}: mean {sum(losses) / max(len(losses), 1):.4f} nats/token over {len(losses)} records -> {LOSSES}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
