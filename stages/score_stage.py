"""DVC stage `score`: data/responses.json (+ data/responses_litgpt.json) + params `score` -> data/scores.csv, metrics/score.json."""

import sys

from gptlab.cli import main

sys.exit(main(["score", "--params", "params.yaml", "--responses", "data/responses.json", "--model", "models/finetuned", "--out", "data/scores.csv"]))
