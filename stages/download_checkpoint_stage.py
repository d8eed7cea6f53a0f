"""DVC stage `download_checkpoint`: params `convert` (source, mirror) -> data/checkpoint/ (the source's files; none for `pretrained`)."""

import sys

from gptlab.cli import main

sys.exit(main(["download-checkpoint", "--params", "params.yaml", "--out", "data/checkpoint"]))
