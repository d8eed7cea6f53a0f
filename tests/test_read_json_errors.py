"""A malformed JSON input ends a stage with one line naming the file, not a traceback."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.errors import GptlabError
from gptlab.io import atomic_file, atomic_path
from gptlab.lora import read_adapter_config

ROOT = Path(__file__).resolve().parents[1]


def test_score_stage_names_a_malformed_responses_file(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "responses.json").write_text('[{"instruction": "x", "output": "y",', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]), "CI": "true"}
    proc = subprocess.run([sys.executable, "-m", "stages.score"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("gptlab: error: data/responses.json:1: not valid JSON"), lines[0]


def test_adapter_config_that_is_not_json_is_named(tmp_path):
    (tmp_path / "adapter.json").write_text("{r: 8}", encoding="utf-8")
    with pytest.raises(GptlabError, match=r"adapter.json:1: not valid JSON"):
        read_adapter_config(tmp_path)


def test_atomic_writers_leave_the_target_alone_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
