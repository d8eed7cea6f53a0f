"""DVC stage `instructions`: data/raw/instructions/ + params `instructions`, `seed` -> data/instructions/{train,val,test}.json."""

import sys

from gptlab.cli import main

sys.exit(
    main(["instructions", "--params", "params.yaml", "--raw", "data/raw/instructions", "--out", "data/instructions", "--metrics", "metrics/instructions.json"])
)
