"""Peak memory and time of reading OpenAI's GPT-2 TensorFlow checkpoint (gptlab.convert.openai_tf).

Builds a random model of the gpt2-124M shape, writes it in OpenAI's seven-file layout with
``export_openai_tf`` (timed), then in a fresh subprocess measures ``load_openai_tf``: the peak
resident memory the conversion itself adds (the process's peak RSS during the load minus its RSS
after importing torch and TensorFlow), as a ratio of the checkpoint's data file size. The issue
requires ``peak_over_checkpoint < 1.5``. The converted weights are checked against the exported ones.

The baseline, measured the same way in its own subprocess, is the naive reader: every variable
into a dict first, then ``load_state`` into a randomly initialised GPT.

Prints ``name: value`` lines and writes them to --json.

    python bench/convert.py [--preset gpt2-124M] [--skip-naive] [--json metrics/bench_convert.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptlab.config import GPTConfig
from gptlab.model import GPT


def rss_bytes() -> int:
    """Return this process's current resident set size in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_bytes(reset: bool) -> int:
    """Return the peak RSS in bytes since :func:`reset_peak` (or since the start, if it could not reset)."""
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def weights_checksum(model: GPT) -> float:
    """Return the float64 sum of every parameter (tied ones once), to compare models across processes."""
    return sum(p.detach().double().sum().item() for p in model.parameters())


def naive_load(folder: Path, tf) -> GPT:
    """The baseline: read every variable into memory first, then copy into a random-initialised GPT."""
    from gptlab.checkpoint import load_state
    from gptlab.convert.openai_tf import config_from_hparams, openai_name_map

    config = config_from_hparams(json.loads((folder / "hparams.json").read_text()))
    reader = tf.train.load_checkpoint(str(folder / "model.ckpt"))
    arrays = {e.ours: e.to_torch(reader.get_tensor(e.tf_name)).clone() for e in openai_name_map(config)}
    model = GPT(config)
    load_state(model, arrays, str(folder))
    return model


def child(folder: Path, how: str) -> None:
    """Measure one load of ``folder`` in this (fresh) process; print one JSON line."""
    from gptlab.convert.openai_tf import _import_tensorflow, load_openai_tf

    tf = _import_tensorflow("bench/convert.py")
    base = rss_bytes()
    reset = reset_peak()
    start = time.perf_counter()
    model = load_openai_tf(folder) if how == "gptlab" else naive_load(folder, tf)
    seconds = time.perf_counter() - start
    peak = peak_bytes(reset)
    print(json.dumps({"seconds": seconds, "peak_extra": peak - base, "rss_extra_after": rss_bytes() - base, "checksum": weights_checksum(model)}))


def measure(folder: Path, how: str) -> dict:
    """Run :func:`child` in a fresh interpreter and return its figures."""
    out = subprocess.run([sys.executable, __file__, "--child", str(folder), "--how", how], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2-124M")
    ap.add_argument("--skip-naive", action="store_true", help="do not measure the naive baseline")
    ap.add_argument("--json", default="metrics/bench_convert.json")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--how", default="gptlab", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.how)
        return 0

    from gptlab.convert.openai_tf import export_openai_tf

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset(args.preset))
    expected = weights_checksum(model)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        folder = Path(tmp) / args.preset
        start = time.perf_counter()
        export_openai_tf(model, folder)
        results["export_seconds"] = round(time.perf_counter() - start, 2)
        del model
        data_bytes = (folder / "model.ckpt.data-00000-of-00001").stat().st_size
        results["checkpoint_mb"] = round(data_bytes / 1e6, 1)
        runs = ["gptlab"] if args.skip_naive else ["gptlab", "naive"]
        for how in runs:
            got = measure(folder, how)
            if got["checksum"] != expected:
                raise SystemExit(f"{how}: converted weights differ from the exported ones ({got['checksum']} != {expected})")
            prefix = "" if how == "gptlab" else "naive_"
            results[f"{prefix}load_seconds"] = round(got["seconds"], 2)
            results[f"{prefix}peak_mb"] = round(got["peak_extra"] / 1e6, 1)
            results[f"{prefix}peak_over_checkpoint"] = round(got["peak_extra"] / data_bytes, 3)
            results[f"{prefix}resident_after_over_checkpoint"] = round(got["rss_extra_after"] / data_bytes, 3)
    for key, value in results.items():
        print(f"{key}: {value}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["peak_over_checkpoint"] < 1.5 else 1


if __name__ == "__main__":
    os.environ.setdefault("GPTLAB_QUIET", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
