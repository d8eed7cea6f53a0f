"""Stage `instructions`: the Alpaca-format records split (seeded) into train/val/test.

reads   data/raw/instructions/ ; params seed, instructions
writes  data/instructions/{train,val,test}.json
metrics metrics/instructions.json (records per split)
"""

import sys

from gptlab.data.instructions import split_instruction_files
from gptlab.params import Params
from gptlab.pipeline import stage_main

RAW = "data/raw/instructions"
SPLITS = "data/instructions"
METRICS = "metrics/instructions.json"


def run(params: Params) -> None:
    """Read and check every record, split them and write the three files."""
    counts = split_instruction_files(params.instructions, RAW, SPLITS, params.seed, METRICS)
    print("instructions: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {SPLITS}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
