"""Stage `pretrain`: a GPT trained from scratch on the token shards (torchrun for several processes).

reads   data/shards/ ; params seed, model, pretrain
writes  models/pretrained/ (final weights; best/ by val loss) ; resumable state in pretrain.checkpoint_dir
metrics metrics/pretrain/ (DVCLive: metrics.json, plots/metrics/*.tsv, plots/images/loss.png, samples.txt)
"""

import sys

from gptlab.data.shards import shards_vocab_size
from gptlab.params import Params
from gptlab.pipeline import stage_main
from gptlab.train.loop import publish
from gptlab.train.pretrain import pretrain

SHARDS = "data/shards"
PRETRAINED = "models/pretrained"
LIVE = "metrics/pretrain"


def run(params: Params) -> None:
    """Train (or resume an interrupted run with the same params), then publish the weights."""
    config = params.model.to_config(tokenizer_vocab=shards_vocab_size(SHARDS))
    result = pretrain(config, params.pretrain, SHARDS, params.seed, live_dir=LIVE)
    if publish(result, PRETRAINED):
        s = result.summary
        print(
            f"pretrain: {s['steps']} steps, val loss {s['val_loss']}, {s['full_val_bits_per_byte']} bits/byte on the whole val split, "
            f"{s['tokens_per_s']} tokens/s -> {PRETRAINED}"
        )


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
