"""DVC stage `convert`: models/pretrained/ or data/checkpoint/ (per `convert.source`) -> models/base/, metrics/convert.json."""

import sys

from gptlab.cli import main

argv = ["convert", "--params", "params.yaml", "--checkpoint", "data/checkpoint", "--pretrained", "models/pretrained", "--out", "models/base"]
sys.exit(main([*argv, "--metrics", "metrics/convert.json"]))
