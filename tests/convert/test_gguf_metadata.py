"""GGUF metadata (issue 26.5): an export names the model as its source did (general.name,
basename, size label, license), carried from a GGUF/HF/OpenAI source through fine-tuning; the
CLI's --name/--license override it; quantization_version is written; GPT-2's position
embeddings stay F32 as in llama.cpp's converter. Read back with the ``gguf`` package."""

import json

import gguf
import pytest
import torch

from gptlab.checkpoint import read_config, save_model
from gptlab.cli import main
from gptlab.config import GPTConfig
from gptlab.convert.gguf import gguf_to_gptlab, open_gguf
from gptlab.convert.gguf_export import export_gguf
from gptlab.convert.hf import export_hf
from gptlab.convert.model_card import CARD_KEY, card_from_hf, read_card
from gptlab.data.instructions import write_splits
from gptlab.model import GPT
from gptlab.params import FinetuneParams, LoraParams
from gptlab.train.finetune import finetune, publish_finetuned
from tests.convert.test_hf_export import LLAMA, random_model, small_bpe

SOURCE = {"name": "Tiny Llama Instruct", "basename": "tiny-llama", "finetune": "Instruct", "organization": "Acme", "license": "apache-2.0"}
RECORDS = [{"instruction": "Say hello.", "input": "", "output": "Hello!"}, {"instruction": "Name a colour.", "input": "", "output": "Red."}]


def general(path) -> dict:
    """The ``general.*`` metadata of a GGUF file, key without the prefix -> value."""
    reader = open_gguf(path)
    return {k.removeprefix("general."): f.contents() for k, f in reader.fields.items() if k.startswith("general.")}


def tensor_types(path) -> dict:
    return {t.name: t.tensor_type for t in open_gguf(path).tensors}


def test_card_travels_from_a_gguf_source_through_finetuning_to_the_export(tmp_path):
    tok = small_bpe()
    config = GPTConfig(vocab_size=tok.n_vocab, context_length=64, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=1, mlp_hidden=64, **LLAMA)
    source = export_gguf(random_model(config), tok, tmp_path / "source.gguf", card=SOURCE)
    assert {k: general(source)[k] for k in SOURCE} == SOURCE and general(source)["size_label"] == "30K"

    base = gguf_to_gptlab(source, tmp_path / "base")
    assert read_config(base)[CARD_KEY] == {**SOURCE, "size_label": "30K"}

    write_splits({"train": RECORDS, "val": RECORDS[:1], "test": RECORDS[1:]}, tmp_path / "splits")
    p = FinetuneParams(
        prompt_style="alpaca", max_steps=1, eval_interval=1, batch_size=2, device="cpu", precision="fp32",
        checkpoint_dir=str(tmp_path / "ckpt"), lora=LoraParams(r=2, alpha=4, dropout=0.0),
    )  # fmt: skip
    tuned = publish_finetuned(finetune(base, tmp_path / "splits/train.json", tmp_path / "splits/val.json", p, seed=0), tmp_path / "finetuned")
    card = read_config(tuned)[CARD_KEY]
    assert card["name"] == "Tiny Llama Instruct gptlab-lora" and card["finetune"] == "Instruct-gptlab-lora"
    assert (
        card["license"] == "apache-2.0"
        and card["basename"] == "tiny-llama"
        and card["base_models"] == [{"name": "Tiny Llama Instruct", "organization": "Acme"}]
    )

    assert main(["convert", "--model", str(tuned), "--to", "gguf", "--dtype", "q8_0", "--out", str(tmp_path / "out.gguf")]) == 0
    meta = general(tmp_path / "out.gguf")
    assert meta["name"] == "Tiny Llama Instruct gptlab-lora" and meta["basename"] == "tiny-llama" and meta["size_label"] == "30K"
    assert meta["license"] == "apache-2.0" and meta["organization"] == "Acme" and meta["type"] == "model"
    assert meta["base_model.count"] == 1 and meta["base_model.0.name"] == "Tiny Llama Instruct"
    assert meta["quantization_version"] == gguf.GGML_QUANT_VERSION and meta["file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0

    cmd = ["convert", "--model", str(tuned), "--to", "gguf", "--out", str(tmp_path / "named.gguf"), "--name", "My Model", "--license", "mit"]
    assert main(cmd) == 0
    meta = general(tmp_path / "named.gguf")
    assert (meta["name"], meta["license"], meta["basename"]) == ("My Model", "mit", "tiny-llama")


def test_a_model_without_a_card_is_named_after_its_folder(tmp_path):
    tok = small_bpe()
    save_model(tmp_path / "shakespeare", GPT(GPTConfig(vocab_size=tok.n_vocab, context_length=32, emb_dim=32, n_heads=2, n_layers=1)), tok)
    assert main(["convert", "--model", str(tmp_path / "shakespeare"), "--to", "gguf", "--out", str(tmp_path / "s.gguf")]) == 0
    meta = general(tmp_path / "s.gguf")
    assert meta["name"] == "shakespeare" and "license" not in meta and meta["size_label"].endswith("K")


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_gpt2_position_embeddings_stay_f32(tmp_path, dtype):
    tok = small_bpe()
    torch.manual_seed(0)
    path = export_gguf(GPT(GPTConfig(vocab_size=tok.n_vocab, context_length=64, emb_dim=32, n_heads=2, n_layers=1)), tok, tmp_path / "g.gguf", dtype)
    kinds = tensor_types(path)
    assert kinds["position_embd.weight"] == gguf.GGMLQuantizationType.F32
    weight = gguf.GGMLQuantizationType.Q8_0 if dtype == "q8_0" else gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_qkv.weight"] == weight and kinds["token_embd.weight"] == weight


def test_hf_and_openai_sources_record_name_and_license(tmp_path):
    tok = small_bpe()
    config = GPTConfig(vocab_size=tok.n_vocab, context_length=64, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=1, mlp_hidden=64, **LLAMA)
    model = random_model(config)
    folder = export_hf(model, tmp_path / "SmolThing-135M-Instruct", tok)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# SmolThing\n", encoding="utf-8")
    card = card_from_hf(folder, model.num_parameters())
    assert card["license"] == "apache-2.0" and card["basename"] == "SmolThing" and card["size_label"] == "30K"
    assert read_card(f"hf:{folder}", model.num_parameters()) == card
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "hparams.json").write_text(json.dumps({"n_vocab": 50257}), encoding="utf-8")
    assert read_card(tmp_path / "tf", 124_439_808) == {
        "name": "GPT-2 124M",
        "basename": "gpt2",
        "organization": "OpenAI",
        "size_label": "124M",
        "license": "mit",
    }
