"""Smoke test of bench/profile_step.py on a tiny config: it runs, and its shares add up."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

import gptlab.model
from tests.helpers.shards import word_shards

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "profile_step.py"
TINY = {"preset": None, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2}
LLAMA = {**TINY, "norm": "rmsnorm", "positions": "rope", "mlp": "swiglu", "mlp_hidden": 48, "n_kv_heads": 2, "qkv_bias": False}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return word_shards(tmp_path_factory.mktemp("profile"), docs=6)


@pytest.fixture(scope="module")
def profile_step():
    spec = importlib.util.spec_from_file_location("bench_profile_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("model", [TINY, LLAMA], ids=["gpt2", "llama"])
def test_profile_shares_sum_to_the_wall_time(profile_step, shards, tmp_path, model, one_torch_thread):
    params = tmp_path / "params.yaml"
    pretrain = {"batch_size": 4, "tokens_per_step": 128, "precision": "fp32", "device": "cpu"}  # two micro-batches a step
    params.write_text(yaml.safe_dump({"download": {"sources": {"x": {"uri": "file:///dev/null"}}}, "model": model, "pretrain": pretrain, "seed": 3}))
    rope = gptlab.model.rope_cos_sin
    out = tmp_path / "profile.json"
    argv = ["--params", str(params), "--shards", str(shards), "--steps", "2", "--warmup", "1", "--threads", "1", "--json", str(out)]
    assert profile_step.main(argv) == 0
    assert gptlab.model.rope_cos_sin is rope  # the RoPE scope is undone
    r = json.loads(out.read_text())
    assert sum(r["share_pct"].values()) == pytest.approx(100, abs=0.1)
    assert sum(r["ms"].values()) == pytest.approx(r["ms_per_step"], abs=0.02)  # both rounded
    # the profiled events cover the step: the remainder is small either way (a first run on a
    # cold machine once put the events' self times 1.9-2.7% above perf_counter's wall time)
    assert abs(r["unattributed_pct"]) < 5 and r["shape_rule_pct"] < 5
    for category in ("embedding_head", "attention", "mlp", "norms_elementwise", "optimizer", "data"):
        assert r["share_pct"][category] > 0, category
