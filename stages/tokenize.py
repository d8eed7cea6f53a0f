"""Stage `tokenize`: the corpus into uint16 train/val token shards.

reads   data/raw/corpus/ ; params seed, tokenize
writes  data/shards/ ({train,val}-NNNNN.bin, meta.json, tokenizer.json when trained)
metrics metrics/tokenize.json (tokens per split; tokens/s is printed, not compared)
"""

import sys

from gptlab.data.tokenize import tokenize_corpus
from gptlab.params import Params
from gptlab.pipeline import stage_main

CORPUS = "data/raw/corpus"
SHARDS = "data/shards"
METRICS = "metrics/tokenize.json"


def run(params: Params) -> None:
    """Split the documents (seeded), encode them in parallel and write the shards."""
    s = tokenize_corpus(params.tokenize, CORPUS, SHARDS, params.seed, METRICS)
    print(
        f"tokenize: {s['documents']['train']}+{s['documents']['val']} documents, "
        f"{s['tokens']['train']:,} train / {s['tokens']['val']:,} val tokens, {s['tokens_per_s']:,.0f} tokens/s -> {SHARDS}"
    )


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
