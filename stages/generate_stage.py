"""DVC stage `generate`: models/finetuned/ + data/instructions/test.json + params `generate` -> data/responses.json."""

import sys

from gptlab.cli import main

sys.exit(main(["respond", "--params", "params.yaml", "--model", "models/finetuned", "--test", "data/instructions/test.json", "--out", "data/responses.json"]))
