"""Stage `download_checkpoint`: the files of convert.source into data/checkpoint/.

reads   params convert (source, mirror), download (timeout_s, retries, cache_dir)
writes  data/checkpoint/ (the source's files and SOURCE.json; only SOURCE.json for `pretrained`)
Network only here, and only for a URL source (OpenAI's GPT-2 files).
"""

import sys

from gptlab.convert.download_checkpoint import download_checkpoint
from gptlab.params import Params
from gptlab.pipeline import stage_main

CHECKPOINT = "data/checkpoint"


def run(params: Params) -> None:
    """Fetch (through the download cache) and check the files of the chosen base model."""
    s = download_checkpoint(params.convert, params.download, CHECKPOINT)
    size = sum(f["bytes"] for f in s["files"].values())
    print(f"download_checkpoint: {params.convert.source}: {len(s['files'])} files, {size:,} bytes -> {CHECKPOINT}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
