"""DVC stage `download`: params `download` -> data/raw/, metrics/download.json."""

import sys

from gptlab.cli import main

sys.exit(main(["download", "--params", "params.yaml", "--out", "data/raw", "--metrics", "metrics/download.json"]))
