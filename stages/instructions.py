"""Stage `instructions`: the Alpaca-format records split (seeded) into train/val/test.

reads   data/raw/instructions/ ; params seed, instructions
writes  data/instructions/{train,val,test}.json
metrics metrics/instructions.json (records per split, duplicates dropped, near-duplicates of train records found in val/test)
"""

import sys

from gptlab.data.instruction_splits import split_instruction_files
from gptlab.params import Params
from gptlab.pipeline import stage_main

RAW = "data/raw/instructions"
SPLITS = "data/instructions"
METRICS = "metrics/instructions.json"


def run(params: Params) -> None:
    """Read and check every record, split them, drop (or report) near-duplicates of train records from val/test and write the three files."""
    counts = split_instruction_files(params.instructions, RAW, SPLITS, params.seed, METRICS)
    print("instructions: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {SPLITS}")
    near = counts["near_duplicates_val"] + counts["near_duplicates_test"]
    if near:
        done = "dropped from val/test" if params.instructions.dedupe == "drop" else "kept (instructions.dedupe: report; drop removes them)"
        print(f"instructions: {near} val/test records ask what a train record asks (case, whitespace and punctuation aside): {done}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
