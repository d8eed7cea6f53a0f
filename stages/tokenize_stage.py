"""DVC stage `tokenize`: data/raw/corpus/ + params `seed`, `tokenize` -> data/shards/, metrics/tokenize.json."""

import sys

from gptlab.cli import main

sys.exit(main(["tokenize", "--params", "params.yaml", "--corpus", "data/raw/corpus", "--out", "data/shards", "--metrics", "metrics/tokenize.json"]))
