"""gptlab.inference.prepare: int8/bf16 weights made at load time, the compiled decode step,
and the static KV cache it relies on (same greedy tokens as the eager and uncached paths)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptlab.checkpoint import save_model
from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.inference import Int8Linear, cpu_native_bf16, prepare, wants_compile
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, generate
from gptlab.tokenizer import gpt2

GPT2 = GPTConfig(vocab_size=101, context_length=24, emb_dim=32, n_heads=4, n_layers=2)
LLAMA = GPTConfig.preset("smollm2-135m", vocab_size=101, context_length=24, emb_dim=48, n_heads=6, n_kv_heads=2, n_layers=2, mlp_hidden=64)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [40, 41, 42, 43]]  # left-padded in a batch
GREEDY = SamplingConfig(max_new_tokens=12, temperature=0)


def sharp(config: GPTConfig) -> GPT:
    """Random weights scaled by 8 (greedy paths that vary), seed 0."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    return model


def fresh(config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(config).eval()


def test_int8_linear_is_the_per_channel_dequantized_matmul():
    torch.manual_seed(0)
    linear = nn.Linear(48, 37, bias=True)
    q = Int8Linear.from_linear(linear)
    assert q.weight.dtype == torch.int8 and q.scales.shape == (37,)
    assert int(q.weight.abs().amax(dim=1).min()) == 127  # each row uses the full range
    x = torch.randn(3, 5, 48)
    dequant = q.weight.float() * q.scales[:, None]
    torch.testing.assert_close(q(x), F.linear(x, dequant, linear.bias), atol=1e-4, rtol=1e-4)
    # per-channel rounding error at most half a step of that channel
    assert bool(((dequant - linear.weight).abs() <= q.scales[:, None] / 2 + 1e-7).all())
    bf16_act = Int8Linear.from_linear(linear, torch.bfloat16)  # the CPU's fast int8 kernel takes bf16 inputs
    y = bf16_act(x)
    assert y.dtype == torch.float32 and bf16_act.scales.dtype == torch.bfloat16
    torch.testing.assert_close(y, F.linear(x, dequant, linear.bias), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("config", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_int8_and_bf16_models_stay_close_to_fp32(config):
    idx = torch.randint(0, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, _ = fresh(config)(idx)
        int8 = prepare(fresh(config), weights="int8", compile=False)
        bf16 = prepare(fresh(config), weights="bf16", compile=False)
        q, _ = int8(idx)
        b, _ = bf16(idx)
    linears = [m for m in int8.modules() if isinstance(m, (nn.Linear, Int8Linear))]
    assert linears and all(type(m) is Int8Linear for m in linears)  # the head too
    assert int8.tok_emb.weight.dtype == torch.float32 and q.dtype == torch.float32
    assert b.dtype == torch.bfloat16 and bf16.tok_emb.weight.dtype == torch.bfloat16
    scale = ref.abs().mean()
    assert (q - ref).abs().mean() < 0.02 * scale
    assert (b.float() - ref).abs().mean() < 0.02 * scale
    assert len(generate(int8, PROMPTS, GREEDY)[0]) == 12 and len(generate(bf16, PROMPTS, GREEDY)[0]) == 12


@pytest.mark.parametrize("config", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_static_cache_gives_the_uncached_greedy_tokens_batched_and_past_the_context(config):
    model = prepare(sharp(config), weights="fp32", compile=False)
    long = dataclasses.replace(GREEDY, max_new_tokens=30)  # 7 + 30 > 24: the window slides
    cached = generate(model, PROMPTS, long)
    assert cached == generate(model, PROMPTS, long, use_cache=False)
    assert cached == [generate(model, [p], long)[0] for p in PROMPTS]


@pytest.mark.slow
def test_compiled_decode_step_gives_the_eager_greedy_tokens():
    eager = sharp(LLAMA)
    expected = generate(eager, PROMPTS, GREEDY)
    compiled = prepare(sharp(LLAMA), weights="fp32", compile=True)
    assert compiled.decode is not eager.decode  # the compiled step replaced the method
    assert generate(compiled, PROMPTS, GREEDY) == expected
    assert generate(compiled, PROMPTS[:1], GREEDY) == expected[:1]  # another batch: a second shape


def test_bad_weights_and_compile_values_name_the_choices():
    with pytest.raises(GptlabError, match="weights='int4' is unknown; choose one of fp32, bf16, int8"):
        prepare(fresh(GPT2), weights="int4")
    with pytest.raises(GptlabError, match="compile='maybe' is unknown; choose auto, true or false"):
        wants_compile("maybe", torch.device("cpu"))
    assert not wants_compile("auto", torch.device("cpu")) and wants_compile("auto", torch.device("cuda"))
    assert wants_compile("true", torch.device("cpu")) and not wants_compile(False, torch.device("cuda"))


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_sample_cli_answers_with_the_weights_asked_for(tmp_path, weights):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("gpt-tiny")).eval()
    save_model(tmp_path / "m", model)
    enc = gpt2()
    ids = enc.encode("To be, or not")
    expected = generate(prepare(model, weights=weights, compile=False), [ids], dataclasses.replace(GREEDY, max_new_tokens=8), stop_tokens=[enc.eot_token])[0]
    gptlab = str(Path(sys.executable).parent / "gptlab")
    args = ["sample", "--model", str(tmp_path / "m"), "--prompt", "To be, or not", "--max-new-tokens", "8", "--temperature", "0", "--weights", weights]
    r = subprocess.run([gptlab, *args, "--compile", "false"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == enc.decode(expected) + "\n"
    r = subprocess.run([gptlab, *args[:-1], "int4"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--weights: invalid choice: 'int4'" in r.stderr


needs_onednn_bf16 = pytest.mark.skipif(not cpu_native_bf16(torch.device("cpu")), reason="this CPU has no native bf16 for oneDNN")


@needs_onednn_bf16
@pytest.mark.parametrize("config", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_packed_bf16_weights_give_the_numbers_of_plain_bf16_ones(config):
    from gptlab.inference import PackedLinear

    packed = prepare(sharp(config), weights="bf16", compile=False)
    plain = sharp(config).to(torch.bfloat16)
    assert all(type(m) is not nn.Linear for m in packed.modules()) and isinstance(packed.head, PackedLinear)
    assert packed.tok_emb.weight.dtype == torch.bfloat16  # the embedding keeps its rows; the head has its own packed copy
    idx = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    with torch.inference_mode():
        got, _ = packed(idx)
        want, _ = plain(idx)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)  # the same oneDNN kernel, reordered once
    assert generate(packed, PROMPTS, GREEDY) == generate(plain, PROMPTS, GREEDY)
    assert "packed" not in str(list(packed.state_dict()))  # the opaque oneDNN tensors stay out of the state dict


def test_stream_yields_host_lists_and_ends_each_row_on_its_budget():
    from gptlab.sampling import Row, stream

    model = sharp(LLAMA)
    rows = [Row(dataclasses.replace(GREEDY, max_new_tokens=n)) for n in (3, 1, 5)]
    steps = list(stream(model, PROMPTS, rows, pad_token=0))
    assert len(steps) == 5 and all(isinstance(t, list) and isinstance(a, list) for t, a in steps)
    assert [a for _, a in steps] == [[True, True, True], [True, False, True], [True, False, True], [False, False, True], [False, False, True]]
    assert [t[1] for t, _ in steps[1:]] == [0, 0, 0, 0]  # an ended row yields the pad token
    alone = [generate(model, [p], dataclasses.replace(GREEDY, max_new_tokens=n))[0] for p, n in zip(PROMPTS, (3, 1, 5))]
    assert [[t[i] for t, a in steps if a[i]] for i in range(3)] == alone
