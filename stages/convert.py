"""Stage `convert`: the base model of fine-tuning, as a gptlab checkpoint.

reads   data/checkpoint/ (convert.source's files), models/pretrained/ ; params convert
writes  models/base/ (model.safetensors, config.json, tokenizer), data/provenance/convert.json (weights used, sha256; time and memory are printed only)
metrics metrics/convert.json (parameters)
"""

import sys

from gptlab.convert.base import build_base
from gptlab.params import Params
from gptlab.pipeline import stage_main

CHECKPOINT = "data/checkpoint"
PRETRAINED = "models/pretrained"
BASE = "models/base"
PROVENANCE = "data/provenance/convert.json"
METRICS = "metrics/convert.json"


def run(params: Params) -> None:
    """Convert (or copy) convert.source into models/base/."""
    m = build_base(params.convert, CHECKPOINT, PRETRAINED, BASE, METRICS, PROVENANCE)
    print(f"convert: {m['source']} -> {BASE}: {m['parameters']:,} parameters, {m['seconds']} s, peak {m['peak_memory_mib']} MiB")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
