"""The litgpt track: litgpt JSON data, a tiny end-to-end finetune_lora + generate, and `litgpt serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("litgpt")

from gptlab.convert.gguf import GGUFVocab, build_tokenizer  # noqa: E402
from gptlab.data.prompts import format_prompt  # noqa: E402
from gptlab.errors import GptlabError, ParamsError  # noqa: E402
from gptlab.litgpt.checkpoint import tokenizer_config  # noqa: E402
from gptlab.litgpt.runner import (  # noqa: E402
    finetune_lora,
    generate_responses,
    litgpt_prompt,
    offline_env,
    read_litgpt_losses,
    write_litgpt_json,
)
from gptlab.params import LitgptParams  # noqa: E402
from tests.helpers.records import INSTRUCTIONS  # noqa: E402

RECORDS = INSTRUCTIONS


def test_write_litgpt_json_keeps_instruction_input_output(tmp_path):
    path = write_litgpt_json(RECORDS[:3], tmp_path / "d" / "train.json")
    data = json.loads(path.read_text())
    assert data == [
        {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Give the opposite of hot.", "input": "", "output": "Cold."},
    ]
    with pytest.raises(GptlabError, match="lacks the 'output' key"):
        write_litgpt_json([{"instruction": "x"}], tmp_path / "bad.json")


def test_litgpt_alpaca_prompt_is_ours():
    """litgpt fine-tunes JSON data in its alpaca style; generation must format prompts the same way."""
    from litgpt.prompts import Alpaca, SmolLM2

    for r in RECORDS[:2]:
        assert litgpt_prompt(Alpaca(), r["instruction"], r["input"]) == format_prompt(r["instruction"], r["input"])
    chat = litgpt_prompt(SmolLM2(), "Add the numbers.", "2 and 3")  # ChatML ignores input: it is appended
    assert chat.startswith("<|im_start|>system\n") and "Add the numbers.\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n" in chat


def test_finetune_params_are_checked():
    with pytest.raises(ParamsError, match="warmup_steps"):
        LitgptParams(max_steps=2, warmup_steps=2)
    with pytest.raises(ParamsError, match="global_batch_size"):
        LitgptParams(micro_batch_size=3, global_batch_size=4)
    with pytest.raises(ParamsError, match="precision"):
        LitgptParams(precision="fp8")


# --------------------------------------------------------------------------- a tiny random litgpt checkpoint


def tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Write a random 2-layer litgpt Llama (width 32) with a byte-level tokenizer (3 ChatML specials + 256 bytes)."""
    from litgpt.utils import save_config
    from tokenizers.pre_tokenizers import ByteLevel

    from litgpt import GPT, Config

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + sorted(ByteLevel.alphabet())
    vocab = GGUFVocab(tokens=tokens, merges=[], token_types=[3] * 3 + [1] * 256, special={t: i for i, t in enumerate(specials)},
                      bos_id=1, eos_id=2, unk_id=0, pad_id=2, pre="smollm", add_bos=False)  # fmt: skip
    config = Config(
        name="tiny-llama-track", block_size=512, vocab_size=len(tokens), padded_vocab_size=len(tokens), n_layer=2, n_head=4,
        n_embd=32, n_query_groups=2, rotary_percentage=1.0, parallel_residual=False, bias=False,
        norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=64, rope_base=10000, norm_eps=1e-5,
    )  # fmt: skip
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(GPT(config).state_dict(), folder / "lit_model.pth")
    save_config(config, folder)
    build_tokenizer(vocab).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(vocab, config.block_size)))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return folder


@pytest.mark.slow
def test_tiny_finetune_lora_then_generate(tmp_path):
    """litgpt finetune_lora (3 steps) on a tiny random model, then generate_responses from the merged model."""
    base = tiny_checkpoint(tmp_path / "base")
    train = write_litgpt_json(RECORDS[:4], tmp_path / "json" / "train.json")
    val = write_litgpt_json(RECORDS[4:], tmp_path / "json" / "val.json")
    params = LitgptParams(max_steps=3, warmup_steps=1, micro_batch_size=1, global_batch_size=2, max_seq_length=256, lora_r=4, lora_alpha=8,
                                  eval_max_iters=2, eval_max_new_tokens=4, lr=1e-3, timeout_s=240)  # fmt: skip
    t0 = time.perf_counter()
    result = finetune_lora(base, train, val, tmp_path / "out", params)
    print(f"tiny finetune_lora: {time.perf_counter() - t0:.1f} s")
    final = result.final_dir
    for name in (
        "lit_model.pth",
        "lit_model.pth.lora",
        "model_config.yaml",
        "tokenizer.json",
        "tokenizer_config.json",
        "prompt_style.yaml",
        "hyperparameters.yaml",
    ):
        assert (final / name).is_file(), name
    assert "Alpaca" in (final / "prompt_style.yaml").read_text()
    hyper = (final / "hyperparameters.yaml").read_text()
    assert "max_steps: 3" in hyper and "lora_r: 4" in hyper and "num_workers: 0" in hyper
    losses = read_litgpt_losses(result.metrics_csv)
    assert [r["iter"] for r in losses] == [1, 2, 3, 4, 5, 6] and all(r["loss"] > 0 for r in losses)  # 2 micro-batches a step
    assert "Final evaluation" in result.log_path.read_text()
    merged = torch.load(final / "lit_model.pth", weights_only=True)
    before = torch.load(base / "lit_model.pth", weights_only=True)
    assert not torch.equal(merged["transformer.h.0.attn.qkv.weight"], before["transformer.h.0.attn.qkv.weight"])  # LoRA merged in
    assert torch.equal(merged["transformer.h.0.mlp.fc_1.weight"], before["transformer.h.0.mlp.fc_1.weight"])  # not a LoRA target

    t0 = time.perf_counter()
    out = generate_responses(final, RECORDS[4:], max_new_tokens=5, temperature=0.8, top_k=20, seed=7)
    again = generate_responses(final, RECORDS[4:], max_new_tokens=5, temperature=0.8, top_k=20, seed=7)
    print(f"tiny generate_responses x2: {time.perf_counter() - t0:.1f} s")
    assert [sorted(r) for r in out] == [["input", "instruction", "output", "response"]] * 2
    assert [r["output"] for r in out] == ["Hello!", "1, 2, 3"]
    assert all(isinstance(r["response"], str) for r in out)
    assert out == again  # seeded


def test_finetune_lora_reports_litgpt_failure(tmp_path):
    base = tiny_checkpoint(tmp_path / "base")
    train = write_litgpt_json(RECORDS[:4], tmp_path / "train.json")
    with pytest.raises(GptlabError, match="no such litgpt JSON file"):
        finetune_lora(base, train, tmp_path / "absent.json", tmp_path / "out", LitgptParams(max_steps=2, warmup_steps=1))
    with pytest.raises(GptlabError, match="not a litgpt checkpoint directory"):
        finetune_lora(tmp_path, train, None, tmp_path / "out", LitgptParams(max_steps=2, warmup_steps=1))


# --------------------------------------------------------------------------- litgpt serve (OpenAI spec) on SmolLM2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_litgpt_serve_openai_chat_on_converted_smollm2(tmp_path_factory):
    """`litgpt serve <dir> --openai_spec true` answers /v1/chat/completions offline (greedy: --temperature 0 --top_k 1).

    litgpt 0.5.13's serve has no host flag: uvicorn listens on 0.0.0.0; the test talks to 127.0.0.1.
    A request's temperature 0 falls back to the server's (litgpt uses ``or``), and its token limit
    is read from ``max_completion_tokens``, not ``max_tokens``.
    """
    import requests

    from tests.convert import test_gguf

    ckpt = test_gguf.converted_smollm2(tmp_path_factory)
    port = _free_port()
    cmd = [sys.executable, "-m", "litgpt", "serve", str(ckpt), "--openai_spec", "true", "--port", str(port),
           "--accelerator", "cpu", "--devices", "1", "--precision", "32-true", "--max_new_tokens", "32",
           "--temperature", "0", "--top_k", "1"]  # fmt: skip
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=offline_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"litgpt serve exited early: {Path(log.name).read_text()[-2000:]}"
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"litgpt serve not ready in 120 s: {Path(log.name).read_text()[-2000:]}"
            time.sleep(0.5)
        t0 = time.perf_counter()
        r = requests.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "smollm2", "messages": [{"role": "user", "content": test_gguf.PARIS_QUESTION}], "max_completion_tokens": 24},
            timeout=60,
        )
        print(f"litgpt serve chat completion: {time.perf_counter() - t0:.1f} s: {r.text[:300]}")
        assert r.status_code == 200, r.text
        reply = r.json()["choices"][0]["message"]["content"]
        assert reply.strip()
        assert "Paris" in reply

        # our judge client scoring through a real third-party server (litgpt's OpenAI spec)
        from gptlab.params import JudgeParams
        from gptlab.score.judge import judge_records

        records = [
            {"instruction": "What is the capital of France?", "input": "", "output": "Paris", "response": "Paris"},
            {"instruction": "What is 2 + 2?", "input": "", "output": "4", "response": "The answer is 5."},
        ]
        cfg = JudgeParams(api="openai", url=f"http://127.0.0.1:{port}", model="smollm2", max_tokens=8, concurrency=1, timeout_s=120, retries=0)
        results = judge_records(records, cfg)
        print("litgpt judge:", [(r.score, r.reply, r.attempts) for r in results])
        assert [r.attempts in (1, 2) and r.reply.strip() != "" for r in results] == [True, True]
        assert all(r.score is None or 0 <= r.score <= 100 for r in results)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
