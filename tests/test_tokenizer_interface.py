"""Every tokenizer behind the one interface: same ids as before, streaming decode, stops, specials, save/load."""

import pytest
import tiktoken
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFCore

from gptlab.convert.hf_tokenizer import to_hf_tokenizer
from gptlab.tokenizer import ENDOFTEXT, UNK, GPT2Tokenizer, HFTokenizer, SimpleTokenizer, Tokenizer, gpt2, load_tokenizer, split_specials

TEXT = "Hi 東京 🙂 café<|endoftext|>naïve"


def byte_level(specials: list[str]) -> HFTokenizer:
    """A byte-level HF tokenizer (no merges) with ``specials`` appended as special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = HFCore(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [ENDOFTEXT, *specials]])
    return HFTokenizer(core)


@pytest.fixture(scope="module")
def tokenizers():
    simple = SimpleTokenizer.train(["Hi there, café naïve", "more words"])
    return {"gpt2": gpt2(), "simple": simple, "hf": HFTokenizer(to_hf_tokenizer(gpt2()), chat_template="{{ messages }}", stop_tokens=[0])}


def test_every_tokenizer_is_one_interface(tokenizers):
    for name, tok in tokenizers.items():
        assert isinstance(tok, Tokenizer), name
        ids = tok.encode(TEXT)
        assert all(isinstance(i, int) for i in ids) and tok.encode_array(TEXT).tolist() == tok.encode_ordinary(TEXT)
        assert tok.eot_token in ids and tok.eot_token not in tok.encode_ordinary(TEXT) and tok.eot_token in tok.stop_tokens
        assert tok.name and tok.n_vocab > max(ids)
    assert tokenizers["gpt2"].chat_template is None and tokenizers["simple"].chat_template is None
    assert tokenizers["hf"].chat_template == "{{ messages }}" and tokenizers["hf"].stop_tokens == [0, 50256]


def test_gpt2_keeps_tiktokens_ids_exactly(tokenizers):
    tok = tokenizers["gpt2"]
    enc = tok.encoding
    assert isinstance(tok, GPT2Tokenizer) and isinstance(enc, tiktoken.Encoding)
    assert tok.encode(TEXT) == enc.encode(TEXT, allowed_special="all") and tok.encode_ordinary(TEXT) == enc.encode_ordinary(TEXT)
    assert tok.encode(TEXT, allowed_special=set()) == enc.encode_ordinary(TEXT)
    assert tok.encode_array(TEXT).tolist() == enc.encode_ordinary(TEXT)
    assert [tok.token_bytes(i) for i in enc.encode(TEXT, allowed_special="all")] == [
        enc.decode_single_token_bytes(i) for i in enc.encode(TEXT, allowed_special="all")
    ]
    assert (tok.n_vocab, tok.eot_token, tok.stop_tokens, tok.name) == (enc.n_vocab, enc.eot_token, [enc.eot_token], "gpt2")
    # the HF form gives the same ids too
    assert tokenizers["hf"].encode(TEXT) == tok.encode(TEXT)


def test_decode_stream_yields_whole_characters_as_their_last_byte_arrives(tokenizers):
    for name, tok in tokenizers.items():
        stream = tok.decode_stream()
        pieces = [stream.add(i) for i in tok.encode(TEXT)]
        assert "".join(pieces) + stream.flush() == tok.decode(tok.encode(TEXT)), name
        assert "\ufffd" not in "".join(pieces), name
    gpt = tokenizers["gpt2"]
    emoji = gpt.encode_ordinary("🙂")
    assert len(emoji) > 1  # one character, several byte-level tokens
    stream = gpt.decode_stream()
    assert [stream.add(i) for i in emoji] == [""] * (len(emoji) - 1) + ["🙂"]
    cut = gpt.decode_stream()
    assert cut.add(emoji[0]) == "" and cut.flush() == "\ufffd"


def test_special_tokens_split_longest_first():
    assert split_specials("x<|a|>b<|a|>y", ["<|a|>", "<|a|>b"]) == ["x", "<|a|>b", "<|a|>", "y"]
    assert split_specials("", ["<|a|>"]) == [] and split_specials("plain", []) == ["plain"]
    tok = byte_level(["<|a|>", "<|a|>b"])
    short, long = tok.special_tokens["<|a|>"], tok.special_tokens["<|a|>b"]
    assert tok.encode("<|a|>b<|a|>") == [long, short]
    assert tok.encode("<|a|>b", allowed_special={"<|a|>"}) == [short, *tok.encode_ordinary("b")]
    assert tok.encode("<|a|>b", allowed_special=set()) == tok.encode_ordinary("<|a|>b")
    simple = SimpleTokenizer.train(["a b"])
    assert simple.encode(f"a{ENDOFTEXT}{UNK}") == [simple.str_to_id["a"], simple.eot_token, simple.unk_token]
    assert simple.encode(f"a{ENDOFTEXT}", allowed_special={UNK}) == simple.encode_ordinary(f"a{ENDOFTEXT}")


def test_every_tokenizer_saves_and_loads_with_the_same_ids(tokenizers, tmp_path):
    for name, tok in tokenizers.items():
        tok.save(tmp_path / f"{name}.json")
        back = load_tokenizer(tmp_path / f"{name}.json")
        assert type(back) is type(tok) and back.encode(TEXT) == tok.encode(TEXT), name
        assert (back.stop_tokens, back.chat_template) == (tok.stop_tokens, tok.chat_template), name
