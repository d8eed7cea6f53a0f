"""DVC stage `finetune`: models/base/ + data/instructions/ + params `finetune`, `seed` -> models/finetuned/, metrics/finetune/."""

import sys

from gptlab.cli import main

argv = ["finetune", "--params", "params.yaml", "--base", "models/base", "--splits", "data/instructions", "--out", "models/finetuned"]
sys.exit(main([*argv, "--metrics-dir", "metrics/finetune"]))
