"""A training run that fails leaves the previous run's metrics folder as it was (issue 24.11)."""

import hashlib

import pytest
from safetensors import SafetensorError

import gptlab.checkpoint as checkpoint
from gptlab.errors import GptlabError
from gptlab.train.pretrain import pretrain
from tests.train.test_train import params, tiny_config


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_that_fails_on_a_full_disk_leaves_the_previous_metrics_byte_identical(shards, tmp_path, monkeypatch):
    live = tmp_path / "metrics" / "pretrain"
    pretrain(tiny_config(shards), params(tmp_path / "a"), shards, seed=0, live_dir=live)
    before = tree(live)
    assert "metrics.json" in before and any(name.endswith(".tsv") for name in before)

    original, calls = checkpoint.save_file, {"n": 0}

    def full_disk(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:  # the second checkpoint of the run (step 8), after an evaluation was logged
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
        return original(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(GptlabError, match="no space left on device") as info:
        pretrain(tiny_config(shards), params(tmp_path / "b", lr=5e-3), shards, seed=1, live_dir=live)
    assert "\n" not in str(info.value)
    assert tree(live) == before
    assert sorted(p.name for p in live.parent.iterdir()) == ["pretrain"]  # no temporary folder left beside it

    monkeypatch.setattr(checkpoint, "save_file", original)
    pretrain(tiny_config(shards), params(tmp_path / "b", lr=5e-3), shards, seed=1, live_dir=live)  # resumes, then replaces the metrics
    assert tree(live) != before and sorted(p.name for p in live.parent.iterdir()) == ["pretrain"]
