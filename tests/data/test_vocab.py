"""Tokenizers trained on the corpus (tokenize.tokenizer: bpe) and bytes (char): ids, determinism,
exact chunking, the shards they write, and what transformers reads back."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from gptlab.data.corpus import chunk_bounds, clean_text
from gptlab.data.shards import read_shard, shards_vocab_size
from gptlab.data.tokenize import tokenize_corpus
from gptlab.data.vocab import byte_tokenizer, train_bpe
from gptlab.errors import GptlabError
from gptlab.params import ModelParams, TokenizeParams
from gptlab.tokenizer import load_tokenizer

TEXTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20,
    "HAMLET.\nTo be, or not to be, that is the question:\n  Whether 'tis nobler in the mind to suffer\n" * 20,
    "Café au lait, 東京, naïve señor -- 1603; the play's the thing!\r\n" * 10,
]
SAMPLE = "ROMEO:\nBut soft, what light through yonder window breaks?\n\tÇa va? 東京 🎉 <|endoftext|>\n"


def test_bpe_ids_bytes_first_merges_then_endoftext():
    tok = train_bpe(TEXTS, 300)
    assert tok.n_vocab == 300 and tok.eot_token == 299
    assert tok.encode("<|endoftext|>") == [299]
    assert tok.encode_ordinary("<|endoftext|>") != [299]  # special-token text stays ordinary text
    for b in (0, 10, 32, 65, 200, 255):
        assert tok.token_bytes(b) == bytes([b])
    merged = [tok.token_bytes(i) for i in range(256, 299)]
    assert all(len(m) >= 2 for m in merged) and len(set(merged)) == len(merged)
    assert len(tok.encode_ordinary(TEXTS[0])) < 0.7 * len(TEXTS[0].encode())  # 43 merges already compress
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE


def test_bpe_is_deterministic_across_processes():
    here = train_bpe(TEXTS, 320).to_json()
    code = "import json, sys; from gptlab.data.vocab import train_bpe; texts = json.loads(sys.stdin.read()); print(json.dumps(train_bpe(texts, 320).to_json()))"
    there = subprocess.run([sys.executable, "-c", code], input=json.dumps(TEXTS), capture_output=True, text=True, check=True).stdout
    assert json.loads(there) == here


@pytest.mark.parametrize("seed", range(3))
def test_pieces_cut_at_safe_line_breaks_encode_like_the_whole(seed):
    rng = random.Random(seed)
    words = ["the", "King", "'s", "don't", "--", "café", "東京", "!", "  ", "\t", "x_y"]
    text = "".join(" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) + rng.choice(["\n", "\n\n", " \n", "\r\n"]) for _ in range(300))
    for tok in (train_bpe(TEXTS + [text], 400), byte_tokenizer()):
        spans = chunk_bounds(text, 150)
        assert len(spans) > 5
        assert [i for a, b in spans for i in tok.encode_ordinary(text[a:b])] == tok.encode_ordinary(text)


def test_char_is_one_id_per_utf8_byte():
    tok = byte_tokenizer()
    assert tok.n_vocab == 257 and tok.eot_token == 256
    assert tok.encode_ordinary(SAMPLE) == list(SAMPLE.encode("utf-8"))
    assert tok.decode(tok.encode_ordinary(SAMPLE)) == SAMPLE
    assert tok.encode("a<|endoftext|>") == [97, 256]


def test_impossible_vocab_sizes_are_refused():
    with pytest.raises(GptlabError, match=r"vocab_size=200 .*258\.\.65536"):
        TokenizeParams(tokenizer="bpe", vocab_size=200)
    with pytest.raises(GptlabError, match="vocab_size=70000"):
        train_bpe(TEXTS, 70000)
    TokenizeParams(tokenizer="gpt2", vocab_size=200)  # read only by bpe


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenize_stage_writes_the_tokenizer_beside_the_shards(corpus_dir, tmp_path, kind):
    out = tmp_path / "shards"
    summary = tokenize_corpus(TokenizeParams(tokenizer=kind, vocab_size=300, val_fraction=0.2, workers=2), corpus_dir, out, seed=1)
    meta = json.loads((out / "meta.json").read_text())
    tok = load_tokenizer(out / "tokenizer.json")
    assert meta["tokenizer"] == "tokenizer.json" and meta["vocab_size"] == tok.n_vocab == shards_vocab_size(out)
    assert summary["vocab_size"] == (257 if kind == "char" else tok.n_vocab)
    # the train shard decodes back to the train documents, each followed by <|endoftext|>
    train_text = "".join(clean_text((corpus_dir / n).read_bytes().decode()) + "<|endoftext|>" for n in meta["splits"]["train"]["documents"])
    ids = np.concatenate([read_shard(out / n) for n in meta["splits"]["train"]["shards"]])
    assert tok.decode(ids.tolist()) == train_text
    if kind == "char":
        assert meta["splits"]["val"]["tokens"] == meta["splits"]["val"]["bytes"] + meta["splits"]["val"]["documents"].__len__()
    # the model built from scratch takes the tokenizer's vocabulary when model.vocab_size is null
    assert ModelParams(preset="gpt-tiny").to_config(tokenizer_vocab=tok.n_vocab).vocab_size == tok.n_vocab
    assert ModelParams(preset="gpt-tiny", vocab_size=512).to_config(tokenizer_vocab=tok.n_vocab).vocab_size == 512


def test_a_bpe_that_runs_out_of_merges_says_so_and_records_its_real_size(corpus_dir, tmp_path, capsys):
    metrics_path = tmp_path / "tokenize.json"
    tokenize_corpus(
        TokenizeParams(tokenizer="bpe", vocab_size=4096, val_fraction=0.2, workers=1), corpus_dir, tmp_path / "s", seed=1, metrics_path=metrics_path
    )
    got = load_tokenizer(tmp_path / "s" / "tokenizer.json").n_vocab
    assert 258 <= got < 4096
    err = capsys.readouterr().err
    assert f"tokenize: warning: tokenize.vocab_size=4096 but the BPE learnt {got:,} ids: it ran out of merges" in err
    assert f"Set tokenize.vocab_size: {got}" in err and sum("vocab_size" in line for line in err.splitlines()) == 1
    assert json.loads(metrics_path.read_text())["vocab_size"] == got
    # asked for no more than it can learn: nothing said, the same size recorded
    tokenize_corpus(TokenizeParams(tokenizer="bpe", vocab_size=got, val_fraction=0.2, workers=1), corpus_dir, tmp_path / "t", seed=1, metrics_path=metrics_path)
    assert "warning" not in capsys.readouterr().err and json.loads(metrics_path.read_text())["vocab_size"] == got


def test_bpe_trains_on_the_train_split_only(corpus_dir, tmp_path):
    # a word only the val document holds never becomes a merge
    (corpus_dir / "z.txt").write_text("Zyzzyva " * 400)
    params = TokenizeParams(tokenizer="bpe", vocab_size=320, val_fraction=0.2, workers=1)
    tokenize_corpus(params, corpus_dir, tmp_path / "a", seed=1)
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    tok = load_tokenizer(tmp_path / "a" / "tokenizer.json")
    pieces = {tok.token_bytes(i) for i in range(256, tok.n_vocab)}
    zyz_in_train = "z.txt" in meta["splits"]["train"]["documents"]
    assert (b"Zy" in pieces or b" Zy" in pieces or b"zz" in pieces) == zyz_in_train
    # the same corpus and seed give the same tokenizer file
    tokenize_corpus(params, corpus_dir, tmp_path / "b", seed=1)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_a_model_pretrained_on_its_own_tokenizer_carries_it_everywhere(corpus_dir, tmp_path, kind, one_torch_thread):
    """tokenize -> pretrain -> the published model -> generate, transformers (HF folder and GGUF)."""
    import torch

    from gptlab.checkpoint import load_model
    from gptlab.convert.gguf_export import export_gguf
    from gptlab.convert.hf import export_hf
    from gptlab.params import PretrainParams
    from gptlab.train.loop import publish
    from gptlab.train.pretrain import pretrain

    transformers = pytest.importorskip("transformers")
    shards = tmp_path / "shards"
    tokenize_corpus(TokenizeParams(tokenizer=kind, vocab_size=320, val_fraction=0.2, workers=1), corpus_dir, shards, seed=1)
    config = ModelParams(preset="gpt-tiny", context_length=16, emb_dim=32, n_layers=1).to_config(tokenizer_vocab=shards_vocab_size(shards))
    p = PretrainParams(max_steps=6, batch_size=2, tokens_per_step=32, eval_interval=3, eval_windows=2, sample_prompt="HAMLET", sample_tokens=6,
                       checkpoint_dir=str(tmp_path / "ck"), resume=False)  # fmt: skip
    result = pretrain(config, p, shards, seed=0)
    bpb = result.summary["full_val_bits_per_byte"]
    assert 0 < bpb < 20 and "val_bits_per_byte" in result.summary
    assert publish(result, tmp_path / "pretrained")
    model, tok = load_model(tmp_path / "pretrained")
    assert model.config.vocab_size == tok.n_vocab == (257 if kind == "char" else 320)
    assert tok.encode(SAMPLE) == load_tokenizer(shards / "tokenizer.json").encode(SAMPLE)
    # transformers reads the exported folder: the same ids and the same logits
    folder = export_hf(model, tmp_path / "hf", tok)
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    assert auto(SAMPLE)["input_ids"] == tok.encode(SAMPLE)
    assert auto.decode(tok.encode(SAMPLE)) == SAMPLE
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    idx = torch.tensor([tok.encode(SAMPLE)[:16]])
    with torch.no_grad():
        assert torch.allclose(hf(idx).logits, model(idx)[0], atol=1e-5)
    # and the GGUF file (llama.cpp's byte-level BPE) rebuilds the same tokenizer in transformers
    if kind == "char":  # llama.cpp needs merges, and GGUF cannot hold an empty list
        with pytest.raises(GptlabError, match=r"without merges .*\(--to hf\)"):
            export_gguf(model, tok, tmp_path / "gguf" / "m.gguf")
        return
    path = export_gguf(model, tok, tmp_path / "gguf" / "m.gguf")
    auto = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert auto(SAMPLE, add_special_tokens=False)["input_ids"] == tok.encode(SAMPLE)
