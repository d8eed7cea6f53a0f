"""DVC stage `pretrain`: data/shards/ + params `seed`, `model`, `pretrain` -> models/pretrained/, metrics/pretrain/."""

import sys

from gptlab.cli import main

sys.exit(main(["pretrain", "--params", "params.yaml", "--shards", "data/shards", "--out", "models/pretrained", "--metrics-dir", "metrics/pretrain"]))
