"""A pretrain whose checkpoint disk fills up (issue 24.10, 24.11): one line on stderr, exit 2,
no temporary folder left, the previous metrics folder untouched (a real 1 MiB tmpfs; root only)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

SCRIPT = """
import json, sys
from gptlab.config import GPTConfig
from gptlab.params import PretrainParams
from gptlab.pipeline import run_cli
from gptlab.train.pretrain import pretrain
shards, ckpt, live = sys.argv[1:4]
vocab = json.load(open(shards + "/meta.json"))["vocab_size"]
cfg = GPTConfig(vocab_size=vocab, context_length=16, emb_dim=128, n_heads=4, n_layers=2)  # ~1.6 MB of weights: more than the disk
p = PretrainParams(max_steps=4, batch_size=4, tokens_per_step=128, lr=1e-2, min_lr=1e-3, warmup_steps=1, eval_interval=2, eval_windows=4,
                   precision="fp32", device="cpu", sample_tokens=4, sample_prompt="ROMEO:", checkpoint_dir=ckpt)
sys.exit(run_cli(lambda: pretrain(cfg, p, shards, seed=0, live_dir=live)))
"""


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); tests/train/test_metrics_kept.py simulates the full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_pretrain_on_a_full_checkpoint_disk_fails_in_one_line_and_keeps_the_metrics(shards, tmpfs, tmp_path):
    live = tmp_path / "metrics" / "pretrain"
    live.mkdir(parents=True)
    (live / "metrics.json").write_text(json.dumps({"val_loss": 1.5}))
    before = hashlib.sha256((live / "metrics.json").read_bytes()).hexdigest()
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "CI": "true", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(shards), str(tmpfs / "ckpt"), str(live)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gptlab: error: {tmpfs / 'ckpt'}/") and "no space left on device" in lines[0], out.stderr[-3000:]
    assert sorted(p.name for p in live.iterdir()) == ["metrics.json"] and hashlib.sha256((live / "metrics.json").read_bytes()).hexdigest() == before
    assert sorted(p.name for p in live.parent.iterdir()) == ["pretrain"]
    leftovers = [p for p in (tmpfs / "ckpt").rglob(".tmp-*")]
    assert leftovers == []
