"""DVC stage `litgpt`: data/instructions/ + params `litgpt` -> models/litgpt/, data/responses_litgpt.json, metrics/litgpt.json."""

import sys

from gptlab.cli import main

sys.exit(main(["litgpt", "--params", "params.yaml", "--splits", "data/instructions", "--models", "models/litgpt", "--responses", "data/responses_litgpt.json"]))
