"""Stage `litgpt`: the same split fine-tuned and answered by litgpt (off unless litgpt.enabled).

reads   data/instructions/ ; params seed, litgpt, download (cache)
writes  models/litgpt/, data/responses_litgpt.json (an empty list when disabled)
metrics metrics/litgpt.json (litgpt's losses and timings; empty when disabled)
"""

import sys

from gptlab.io import write_json
from gptlab.litgpt.track import run_litgpt_track
from gptlab.params import Params
from gptlab.pipeline import stage_main

SPLITS = "data/instructions"
MODELS = "models/litgpt"
RESPONSES = "data/responses_litgpt.json"
METRICS = "metrics/litgpt.json"


def run(params: Params) -> None:
    """Fetch SmolLM2, convert it for litgpt, run `litgpt finetune_lora`, answer the test split."""
    s = run_litgpt_track(params.litgpt, params.download, SPLITS, MODELS, RESPONSES, params.seed)
    write_json(METRICS, {k: v for k, v in s.items() if k != "enabled"})
    if not s["enabled"]:
        print(f"litgpt: off (litgpt.enabled: false); wrote an empty {RESPONSES}")
    else:
        print(f"litgpt: {s['responses']} responses -> {RESPONSES} (fine-tune {s['finetune_seconds']} s)")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
