"""The sampler's edges: underflowing temperatures, non-finite settings, NaN weights (issue 24.1, 24.12)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gptlab.sampling as sampling
from gptlab.checkpoint import save_model
from gptlab.config import GPTConfig
from gptlab.errors import GptlabError, ParamsError
from gptlab.model import GPT
from gptlab.params import GenerateParams, load_params
from gptlab.sampling import SamplingConfig, generate, sample_next

ROOT = Path(__file__).parents[1]
CFG = GPTConfig(vocab_size=101, context_length=24, emb_dim=32, n_heads=4, n_layers=2)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [40, 41, 42, 43]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CFG).eval()
    with torch.no_grad():  # sharp distributions, as a trained model's
        for p in m.parameters():
            p.mul_(8.0)
    return m


def sample_next_before(logits, cfg, generator=None):
    """The sampler as it was before the temperature floor (issue 24), verbatim."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= cfg.top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def test_the_pipeline_settings_and_normal_temperatures_give_the_same_tokens_as_before(model, monkeypatch):
    pipeline = load_params(ROOT / "params.yaml").generate
    settings = [
        SamplingConfig(pipeline.max_new_tokens, pipeline.temperature, pipeline.top_k, pipeline.top_p, 0),
        SamplingConfig(30, 0.8, None, None, 1),
        SamplingConfig(30, 0.7, 20, 0.9, 2),
        SamplingConfig(30, 1e-4, None, None, 3),
    ]
    now = [generate(model, PROMPTS, cfg) for cfg in settings]
    monkeypatch.setattr(sampling, "sample_next", sample_next_before)
    assert now == [generate(model, PROMPTS, cfg) for cfg in settings]


@pytest.mark.parametrize("temperature", [1e-320, 1e-45, 1e-30, 1e-6])
def test_a_tiny_positive_temperature_is_greedy(model, temperature):
    greedy = generate(model, PROMPTS, SamplingConfig(20, 0.0))
    assert generate(model, PROMPTS, SamplingConfig(20, temperature, seed=0)) == greedy
    logits = torch.tensor([[0.0, 80.0, -50.0, 79.9]])
    assert sample_next(logits, SamplingConfig(1, temperature)).tolist() == [1]


@pytest.mark.parametrize("field, value", [("temperature", float("inf")), ("temperature", float("nan")), ("top_p", float("nan")), ("top_p", float("inf"))])
def test_non_finite_settings_are_refused_naming_the_parameter(field, value):
    with pytest.raises(ParamsError, match=f"^{field}=(inf|nan) is impossible: must be a finite number"):
        SamplingConfig(**{field: value})
    with pytest.raises(ParamsError, match=f"^{field}="):
        GenerateParams(**{field: value})


@pytest.fixture
def nan_folder(tmp_path):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=1))
    with torch.no_grad():
        m.blocks[0].attn.proj.weight.fill_(float("nan"))
    return save_model(tmp_path / "broken", m), m


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_nan_weights_raise_one_line_instead_of_an_empty_answer(nan_folder, temperature):
    _, m = nan_folder
    with pytest.raises(GptlabError, match="NaN or infinite logits: its weights are broken") as info:
        generate(m, [[1, 2, 3]], SamplingConfig(5, temperature, seed=0))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("temperature", ["0", "0.8"])
def test_gptlab_sample_on_nan_weights_names_the_folder_and_exits_2(nan_folder, temperature):
    folder, _ = nan_folder
    cmd = [sys.executable, "-m", "gptlab.cli", "sample", "--model", str(folder), "--prompt", "Hello", "--max-new-tokens", "4", "--temperature", temperature]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"gptlab: error: {folder}: the model gives NaN or infinite logits: its weights are broken; convert, download or train it again"
    ]


def test_gptlab_sample_refuses_an_infinite_temperature(nan_folder):
    folder, _ = nan_folder
    cmd = [sys.executable, "-m", "gptlab.cli", "sample", "--model", str(folder), "--prompt", "Hi", "--temperature", "inf"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and out.stderr.strip().splitlines() == ["gptlab: error: temperature=inf is impossible: must be a finite number"]
