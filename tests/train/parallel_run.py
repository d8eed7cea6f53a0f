"""Run pretraining or fine-tuning from a JSON spec in this process (one process, or one rank
under torchrun); the helper of tests/train/test_train_parallel.py. Usage: ``python tests/train/parallel_run.py SPEC.json``."""

import json
import os
import sys
from pathlib import Path

from gptlab.config import GPTConfig
from gptlab.params import FinetuneParams, LoraParams, PretrainParams
from gptlab.train.loop import publish
from gptlab.train.pretrain import pretrain


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("kind") == "finetune":
        from gptlab.train.finetune import finetune, publish_finetuned

        p = FinetuneParams(**{**spec["params"], "lora": LoraParams(**spec["params"]["lora"])})
        result = finetune(spec["base"], spec["train"], spec["val"], p, seed=spec["seed"])
        if result.train.summary and os.environ.get("RANK", "0") == "0":
            publish_finetuned(result, spec["out"])
        return
    result = pretrain(
        GPTConfig(**spec["model"]), PretrainParams(**spec["params"]), spec["shards"], seed=spec["seed"], stop_after_steps=spec.get("stop_after_steps")
    )
    if spec.get("out"):
        publish(result, spec["out"])


if __name__ == "__main__":
    main(sys.argv[1])
