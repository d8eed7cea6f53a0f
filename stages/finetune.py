"""Stage `finetune`: instruction fine-tuning of the base model (LoRA or all weights).

reads   models/base/, data/instructions/{train,val}.json ; params seed, finetune
writes  models/finetuned/ (merged weights; the LoRA adapter in adapter/) ; resumable state in finetune.checkpoint_dir
metrics metrics/finetune/ (DVCLive: val loss before/after, train loss, tokens/s; plots)
"""

import sys

from gptlab.params import Params
from gptlab.pipeline import stage_main
from gptlab.train.finetune import finetune, publish_finetuned

BASE = "models/base"
TRAIN = "data/instructions/train.json"
VAL = "data/instructions/val.json"
FINETUNED = "models/finetuned"
LIVE = "metrics/finetune"


def run(params: Params) -> None:
    """Measure the base on the val split, fine-tune (resuming if interrupted), publish."""
    result = finetune(BASE, TRAIN, VAL, params.finetune, params.seed, live_dir=LIVE)
    if result.train.ddp.main:
        publish_finetuned(result, FINETUNED)
        s = result.train.summary
        print(f"finetune: {s['method']}, {s['steps']} steps, val loss {s.get('base_val_loss')} -> {s['val_loss']} -> {FINETUNED}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
