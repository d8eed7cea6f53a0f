"""A model folder loads only when its parts fit together and the machine (issue 24.7, 24.10):
the tokenizer's ids fit the embedding, a tokenizer file is bounded, a config's size is bounded,
a safetensors header may not declare more than the file or the memory holds."""

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, models

from gptlab.checkpoint import load_model, read_shapes, save_model
from gptlab.config import PRESETS, GPTConfig
from gptlab.convert.hf import export_hf
from gptlab.convert.load_any import load_any
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.tokenizer import MAX_TOKENIZER_ENTRIES, HFTokenizer, load_tokenizer

ROOT = Path(__file__).parents[1]
SMALL = GPTConfig(
    vocab_size=4096,
    context_length=16,
    emb_dim=16,
    n_heads=2,
    n_layers=1,
    **{k: v for k, v in PRESETS["qwen2-tiny"].to_dict().items() if k in ("norm", "positions", "mlp", "qkv_bias", "proj_bias", "mlp_bias", "tie_embeddings")},
)


def one_line(fn, match):
    with pytest.raises(GptlabError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def word_tokenizer(n: int) -> HFTokenizer:
    """A word-level Hugging Face tokenizer of ``n`` ids, the last one ``<|endoftext|>`` (a special token)."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(n - 1)}, unk_token="w0"))
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return HFTokenizer(tok)


def test_a_tokenizer_with_more_ids_than_the_model_is_refused_naming_the_folder(tmp_path):
    big = word_tokenizer(49_152)  # SmolLM2's vocabulary size on a 4,096-id model
    ours = save_model(tmp_path / "ours", GPT(SMALL), big)
    message = one_line(
        lambda: load_any(ours), r"ours: the tokenizer's ids go up to 49151 \(49,152 ids\) but the model's vocab_size is 4,096; put the tokenizer"
    )
    assert message.startswith(str(ours))
    one_line(lambda: load_model(ours), "vocab_size is 4,096")
    hf = export_hf(GPT(SMALL), tmp_path / "hf")
    big.tokenizer.save(str(hf / "tokenizer.json"))
    one_line(lambda: load_any(hf), r"hf: the tokenizer's ids go up to 49151 .* vocab_size is 4,096")
    fits = save_model(tmp_path / "fits", GPT(SMALL), word_tokenizer(4096))
    assert load_any(fits)[1].n_vocab == 4096


def test_the_smollm2_tokenizer_on_a_small_model_is_refused(tmp_path):
    from gptlab.convert.gguf import build_tokenizer, read_gguf_vocab
    from tests.convert.test_gguf import find_smollm2_gguf  # skips when the GGUF is not available

    vocab = read_gguf_vocab(find_smollm2_gguf())
    smol = HFTokenizer(build_tokenizer(vocab), vocab.chat_template, vocab.eos_id)
    folder = save_model(tmp_path / "m", GPT(SMALL), smol)
    one_line(lambda: load_any(folder), r"m: the tokenizer's ids go up to 49151 \(49,152 ids\) but the model's vocab_size is 4,096")
    smol.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "tokenizer.json").n_vocab == 49_152  # within the bounds


def test_a_qwen2_sized_tokenizer_loads_and_an_oversized_one_is_refused_before_it_is_built(tmp_path):
    qwen = tmp_path / "qwen.json"
    word_tokenizer(151_936).tokenizer.save(str(qwen))
    assert load_tokenizer(qwen).n_vocab == 151_936
    huge = tmp_path / "huge.json"
    vocab = {f"t{i}": i for i in range(MAX_TOKENIZER_ENTRIES + 1)}
    huge.write_text(json.dumps({"version": "1.0", "added_tokens": [], "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}}))
    start = time.perf_counter()
    one_line(lambda: load_tokenizer(huge), r"huge.json: 1,048,577 vocabulary entries, over the 1,048,576 a tokenizer may hold")
    assert time.perf_counter() - start < 10
    sparse = tmp_path / "sparse.json"
    with open(sparse, "wb") as f:
        f.truncate(65 << 20)
    one_line(lambda: load_tokenizer(sparse), r"sparse.json: 65 MiB, over the 64 MiB a tokenizer file may hold")


def test_a_config_describing_an_absurd_size_is_refused_before_allocating(tmp_path):
    one_line(
        lambda: GPTConfig(emb_dim=10**9, n_heads=1),
        r"emb_dim=1000000000, .* describe 1.44e\+20 parameters \(5.76e\+08 TB in fp32\), over the 1.1e\+12 a config may describe; fix these fields",
    )
    one_line(lambda: GPTConfig(emb_dim=1e9, n_heads=1), r"emb_dim=1000000000.0 is impossible: must be a whole number")
    folder = save_model(tmp_path / "m", GPT(SMALL), word_tokenizer(4096))
    data = json.loads((folder / "config.json").read_text())
    data["model"]["emb_dim"] = 10**9
    (folder / "config.json").write_text(json.dumps(data))
    one_line(lambda: load_any(folder), r"m/config.json: vocab_size=4096, context_length=16, emb_dim=1000000000, .* parameters")
    hf = export_hf(GPT(GPTConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=2, n_layers=1)), tmp_path / "hf")
    data = json.loads((hf / "config.json").read_text())
    data["n_embd"] = 10**9
    (hf / "config.json").write_text(json.dumps(data))
    one_line(lambda: load_any(hf), r"hf/config.json: .*emb_dim=1000000000.* over the 1.1e\+12 a config may describe")


def fake_weights(path: Path, n_bytes: int) -> None:
    """A safetensors file whose consistent header declares one tensor of ``n_bytes`` (a sparse file)."""
    header = json.dumps({"tok_emb.weight": {"dtype": "F32", "shape": [n_bytes // 4], "data_offsets": [0, n_bytes]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + n_bytes)


def test_a_4tb_safetensors_header_on_a_sparse_file_is_refused_in_one_line(tmp_path):
    folder = save_model(tmp_path / "m", GPT(SMALL), word_tokenizer(4096))
    fake_weights(folder / "model.safetensors", 4 << 40)
    one_line(lambda: load_any(folder), r"m/model.safetensors: its tensors take 4096.0 GiB, over the .* GiB this process may use \(memory or ulimit -v\)")


def test_weights_over_the_address_space_limit_are_refused_in_one_line(tmp_path):
    fake_weights(tmp_path / "model.safetensors", 3 << 30)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "from gptlab.checkpoint import load_tensors\n"
        "from gptlab.errors import GptlabError\n"
        "try:\n    load_tensors(sys.argv[1])\nexcept GptlabError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.safetensors")], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")}
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]
    assert out.stdout.strip().endswith(
        "its tensors take 3.0 GiB, over the 2.0 GiB this process may use (memory or ulimit -v); load it on a larger machine, or check that the file is the model you meant"
    )


def test_a_header_declaring_more_than_the_file_holds_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    fake_weights(path, 1 << 20)
    with open(path, "r+b") as f:
        f.truncate(1000)
    one_line(lambda: read_shapes(path), r"model.safetensors: is truncated or not a safetensors file \(the header declares \d+ bytes, the file holds 1000\)")
