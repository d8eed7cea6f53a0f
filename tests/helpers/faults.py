"""Fault injection for training stages, reusable by any stage's tests.

A stage runs in a subprocess (a small driver calling the library with tiny params, see
:data:`DRIVER`); ``GPTLAB_FAULT=<point>[#<n>][=<SIGNAL>]`` makes it send itself a signal the
``n``-th time it reaches a named point (:func:`gptlab.io.fault_point`): ``mid_step`` (between
the optimizer update and the step count), ``step_end``, ``eval``, ``after_save_latest``,
``atomic_dir:<folder>`` (a checkpoint written, not yet renamed), ``atomic_swap:<folder>``
(between the two renames). :func:`interrupted_equals_straight` runs a stage once straight and
once through a list of faults (each run resumes the last), and compares the outputs' sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

DRIVER = r"""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
spec = json.loads(sys.argv[1])
from gptlab.config import GPTConfig
from gptlab.params import FinetuneParams, LoraParams, PretrainParams
try:
    if spec["stage"] == "pretrain":
        from gptlab.train.loop import publish
        from gptlab.train.pretrain import pretrain
        r = pretrain(GPTConfig(**spec["model"]), PretrainParams(**spec["params"]), spec["data"], spec["seed"], live_dir=spec["live"])
        publish(r, spec["out"])
    else:
        from gptlab.train.finetune import finetune, publish_finetuned
        p = dict(spec["params"], lora=LoraParams(**spec["params"]["lora"]))
        r = finetune(spec["base"], Path(spec["data"]) / "train.json", Path(spec["data"]) / "val.json", FinetuneParams(**p), spec["seed"], live_dir=spec["live"])
        publish_finetuned(r, spec["out"])
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""

# what must match bit for bit between an interrupted and a straight run
COMPARED = ("model.safetensors", "state.safetensors", "config.json")


def stage_spec(root: Path, stage: str, params: dict, data: Path, seed: int, model: dict | None = None, base: Path | None = None) -> dict:
    """A driver spec whose checkpoints, outputs and DVCLive folder all live under ``root``."""
    return {"stage": stage, "params": {**params, "checkpoint_dir": str(root / "ckpt")}, "data": str(data), "seed": seed, "model": model,
            "base": str(base) if base else None, "out": str(root / "out"), "live": str(root / "live")}  # fmt: skip


def run_stage(spec: dict, fault: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the stage of ``spec`` in a subprocess (``fault``: a ``GPTLAB_FAULT`` value); return it."""
    env = {k: v for k, v in os.environ.items() if k != "GPTLAB_FAULT"}
    env.update(OMP_NUM_THREADS="1", GPTLAB_QUIET="1", **({"GPTLAB_FAULT": fault} if fault else {}))
    # SIGINT as in a terminal, even when the tests run under `nohup ... &` (which ignores it, and an ignored SIGINT stays ignored)
    return subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=timeout, preexec_fn=_default_sigint
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tree_sha256(folder: Path, names: tuple[str, ...] = COMPARED) -> dict[str, str]:
    """``{relative path: sha256}`` of the files named ``names`` anywhere under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.name in names}


def run_dir(spec: dict) -> Path:
    """The one run folder under the spec's checkpoint folder."""
    (folder,) = [p for p in Path(spec["params"]["checkpoint_dir"]).iterdir() if not p.name.startswith(".")]
    return folder


def random_faults(seed: int, max_steps: int, n: int = 2, signals: tuple[str, ...] = ("KILL", "TERM", "INT")) -> list[str]:
    """``n`` reproducible random faults: a point, an occurrence and a signal each."""
    rng = random.Random(seed)
    points = ["mid_step", "step_end", "eval", "after_save_latest", "atomic_dir:latest", "atomic_swap:latest", "atomic_dir:best"]
    out = []
    for _ in range(n):
        point = rng.choice(points)
        nth = rng.randint(1, max(1, max_steps // 3)) if point in ("mid_step", "step_end") else rng.randint(1, 2)
        out.append(f"{point}#{nth}={rng.choice(signals)}")
    return out


def interrupted_equals_straight(straight: dict, interrupted: dict, faults: list[str]) -> tuple[dict, dict, list[int]]:
    """Run ``straight`` once, then ``interrupted`` once per fault and a last time without one.
    Returns (straight outputs' sha256, interrupted outputs' sha256, each faulted run's exit code);
    outputs: the published folder and ``latest/`` of the run."""
    ok = run_stage(straight)
    assert ok.returncode == 0, ok.stderr[-3000:]
    codes = []
    for fault in faults:
        r = run_stage(interrupted, fault)
        assert r.returncode in (-9, 130, 0), f"{fault}: rc {r.returncode}\n{r.stderr[-3000:]}"
        codes.append(r.returncode)
    last = run_stage(interrupted)
    assert last.returncode == 0, last.stderr[-3000:]

    def outputs(spec: dict) -> dict:
        return {"out": tree_sha256(Path(spec["out"])), "latest": tree_sha256(run_dir(spec) / "latest")}

    return outputs(straight), outputs(interrupted), codes
