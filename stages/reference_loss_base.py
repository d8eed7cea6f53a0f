"""Stage `reference_loss_base`: the base model's loss on each test record's reference output.

reads   models/base/, data/instructions/test.json ; params finetune.prompt_style, score.loss_batch_size
writes  data/reference_loss_base.json: the loss per record (nats/token), in test.json's order
"""

import sys

from gptlab.params import Params
from gptlab.pipeline import stage_main
from gptlab.score.reference_loss import reference_loss_file

BASE = "models/base"
TEST = "data/instructions/test.json"
LOSSES_BASE = "data/reference_loss_base.json"


def run(params: Params) -> None:
    """The base's loss in the fine-tuning prompt style, so the two losses are of the same text;
    neither the fine-tuned model nor generation is read: it reruns only with a new base or split."""
    losses = reference_loss_file(BASE, TEST, LOSSES_BASE, params.finetune.prompt_style, params.score.loss_batch_size)
    print(f"reference_loss_base: {BASE}: mean {sum(losses) / max(len(losses), 1):.4f} nats/token over {len(losses)} records -> {LOSSES_BASE}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
