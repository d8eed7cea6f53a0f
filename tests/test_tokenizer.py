import json

import pytest
import tiktoken

from gptlab.errors import GptlabError
from gptlab.tokenizer import (
    ENDOFTEXT,
    UNK,
    SimpleTokenizer,
    gpt2,
    gpt2_bpe_dir,
    load_tokenizer,
)

SAMPLE = (
    "Hello, world. It's 2026; the model's loss fell to 3.14!\n\n"
    "  Indented line\twith tabs, émigrés, naïve café, 東京, and emoji 🙂.\n"
    "CAPITALS and ALL-CAPS--dashes... (parens) [brackets] {braces} 'quotes' \"double\"   \n"
)


def test_gpt2_is_a_real_tiktoken_encoding_with_openai_ids():
    enc = gpt2()
    assert isinstance(enc.encoding, tiktoken.Encoding)
    assert enc.encode("Hello, world.") == [15496, 11, 995, 13] == enc.encoding.encode("Hello, world.")
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    assert enc.encode(ENDOFTEXT, allowed_special="all") == [50256]
    assert enc.decode(enc.encode(SAMPLE)) == SAMPLE


def test_gpt2_matches_transformers_reference_tokenizer():
    # Hugging Face's byte-level BPE (the engine of transformers' GPT2TokenizerFast) on the same files.
    tokenizers = pytest.importorskip("tokenizers")
    folder = gpt2_bpe_dir()
    ref = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe")))
    ref.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    ours = gpt2()
    texts = [SAMPLE, "\n\nHello there\n\n  world", " leading space", "a" * 300, "x\u00a0y 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]
    for text in texts:
        assert ours.encode_ordinary(text) == ref.encode(text).ids, text
    assert len(ref.encode(SAMPLE).ids) > 50


def test_gpt2_refuses_files_with_the_wrong_hash(tmp_path, monkeypatch):
    good = gpt2_bpe_dir()
    (tmp_path / "encoder.json").write_bytes((good / "encoder.json").read_bytes())
    (tmp_path / "vocab.bpe").write_bytes((good / "vocab.bpe").read_bytes() + b"\n")
    monkeypatch.setenv("GPTLAB_GPT2_BPE_DIR", str(tmp_path))
    with pytest.raises(GptlabError, match=r"vocab\.bpe: sha256 [0-9a-f]{64} differs from OpenAI's 1ce16647"):
        gpt2()


def test_gpt2_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_GPT2_BPE_DIR", str(tmp_path))
    with pytest.raises(GptlabError, match="vocab.bpe: missing"):
        gpt2()


def test_simple_split_keeps_every_character():
    pieces = SimpleTokenizer.split(SAMPLE)
    assert "".join(pieces) == SAMPLE
    assert SimpleTokenizer.split("Hello, world. It's") == ["Hello", ",", " world", ".", " It", "'s"]


def test_simple_round_trip_and_unknown_words():
    tok = SimpleTokenizer.train([SAMPLE])
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.vocab[-2:] == [ENDOFTEXT, UNK]
    ids = tok.encode("Hello moon")
    assert ids == [tok.str_to_id["Hello"], tok.unk_token]
    assert tok.decode(ids) == "Hello" + UNK


def test_simple_special_tokens_and_frequency_order():
    tok = SimpleTokenizer.train(["b b b a a c"])
    # pieces: "b", " b" x2, " a" x2, " c": most frequent first, ties alphabetical
    assert tok.vocab == [" a", " b", " c", "b", ENDOFTEXT, UNK]
    assert tok.encode("b<|endoftext|> a") == [tok.str_to_id["b"], tok.eot_token, tok.str_to_id[" a"]]
    assert tok.encode_ordinary("<|endoftext|>") != [tok.eot_token]
    assert tok.encode("b<|endoftext|>", allowed_special=set()) == tok.encode_ordinary("b<|endoftext|>")


def test_simple_max_size_keeps_the_most_frequent():
    tok = SimpleTokenizer.train(["x x x y y z"], max_size=4)
    assert tok.vocab == [" x", " y", ENDOFTEXT, UNK]


def test_simple_save_load(tmp_path):
    tok = SimpleTokenizer.train([SAMPLE])
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text())["type"] == "simple"
    again = load_tokenizer(path)
    assert again.vocab == tok.vocab
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)


def test_simple_bad_inputs(tmp_path):
    with pytest.raises(GptlabError, match="duplicate"):
        SimpleTokenizer(["a", "a", ENDOFTEXT, UNK])
    with pytest.raises(GptlabError, match="lacks the special token"):
        SimpleTokenizer(["a"])
    tok = SimpleTokenizer.train(["a b"])
    with pytest.raises(GptlabError, match="token id 99 is outside the vocabulary"):
        tok.decode([0, 99])
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "bpe"}')
    with pytest.raises(GptlabError, match="not a SimpleTokenizer file"):
        SimpleTokenizer.load(bad)
    with pytest.raises(GptlabError, match="unknown tokenizer 'nope'"):
        load_tokenizer("nope")


def test_hf_tokenizer_json_loads_plain_and_wrapped(tmp_path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from gptlab.tokenizer import HFTokenizer, load_tokenizer

    vocab = {c: i for i, c in enumerate(["<|endoftext|>", "<|im_end|>", "h", "i", "Ġ", "hi", "Ã", "©"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("h", "i")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|endoftext|>", "<|im_end|>")])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>", "chat_template": "{{ x }}"}')
    plain = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(plain, HFTokenizer) and plain.eot_token == 1 and plain.chat_template == "{{ x }}"
    assert plain.encode("hi<|im_end|>") == [5, 1] and plain.decode([5, 4, 3, 1]) == "hi i<|im_end|>"
    assert plain.encode("hi<|im_end|>", allowed_special=set()) != [5, 1] and plain.n_vocab == 8
    assert plain.token_bytes(6) == b"\xc3" and plain.decode([6, 7]) == "é"
    wrapped = HFTokenizer(tok, "tmpl", 0, [1])
    wrapped.save(tmp_path / "w.json")
    back = load_tokenizer(tmp_path / "w.json")
    assert (back.eot_token, back.stop_tokens, back.chat_template) == (0, [0, 1], "tmpl")
