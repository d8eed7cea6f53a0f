import json
import os
import random

import numpy as np
import pytest

from gptlab.data.corpus import Document, chunk_bounds, clean_text, read_corpus, split_documents
from gptlab.data.shards import TokenShards, read_shard
from gptlab.data.tokenize import encode_documents, tokenize_corpus
from gptlab.errors import GptlabError
from gptlab.params import TokenizeParams
from gptlab.tokenizer import SimpleTokenizer, gpt2


def random_text(rng: random.Random, n_lines: int) -> str:
    words = ["the", "King", "'s", "don't", "I'll", "--", "...", "2026", "café", "東京", "!", "?", "x_y", "", "   ", "\t"]
    seps = ["\n", "\n\n", " \n", "\n ", "\r\n", "\n\n\n", " "]
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) + rng.choice(seps) for _ in range(n_lines))


@pytest.mark.parametrize("seed", range(5))
def test_chunks_encode_exactly_like_the_whole_text(seed):
    rng = random.Random(seed)
    text = random_text(rng, 400)
    enc = gpt2()
    simple = SimpleTokenizer.train([text])
    spans = chunk_bounds(text, 200)
    assert len(spans) > 5
    assert "".join(text[a:b] for a, b in spans) == text
    for tok in (enc, simple):
        pieces = [i for a, b in spans for i in tok.encode_ordinary(text[a:b])]
        assert pieces == tok.encode_ordinary(text)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_encoding_equals_serial(workers):
    rng = random.Random(7)
    docs = [Document(f"d{i}", random_text(rng, rng.randint(1, 300))) for i in range(6)]
    enc = gpt2()
    out = list(encode_documents(docs, enc, workers=workers, chunk_chars=1024))
    assert len(out) == len(docs)
    for doc, ids in zip(docs, out):
        assert ids.dtype == np.uint16
        assert ids.tolist() == enc.encode_ordinary(doc.text) + [enc.eot_token]


def test_special_token_text_in_the_corpus_stays_ordinary():
    enc = gpt2()
    (ids,) = encode_documents([Document("x", "a <|endoftext|> b")], enc, workers=1)
    assert ids.tolist().count(enc.eot_token) == 1 and ids[-1] == enc.eot_token


def test_read_corpus_errors(tmp_path):
    with pytest.raises(GptlabError, match=r"no corpus files match '\*.txt'"):
        read_corpus(tmp_path)
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(GptlabError, match="the corpus is empty"):
        read_corpus(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(GptlabError, match=r"latin1.txt: not UTF-8 \(byte 0xe9 at offset 3\); convert it"):
        read_corpus(tmp_path)


def test_split_is_seeded_by_document(corpus_dir):
    docs = read_corpus(corpus_dir)
    train, val = split_documents(docs, 0.4, seed=3)
    assert len(val) == 2 and len(train) == 3
    assert {d.name for d in train} | {d.name for d in val} == {d.name for d in docs}
    again = split_documents(docs, 0.4, seed=3)
    assert [d.name for d in again[1]] == [d.name for d in val]
    assert any([d.name for d in split_documents(docs, 0.4, seed=s)[1]] != [d.name for d in val] for s in range(4, 10))


def test_single_document_is_cut_at_a_line_break():
    text = "".join(f"Line {i} of the only play.\n" for i in range(100))
    train, val = split_documents([Document("one.txt", text)], 0.1, seed=0)
    assert train[0].text + val[0].text == text
    assert 0.05 < len(val[0].text) / len(text) < 0.15 and val[0].text.startswith("Line ")


def test_tokenize_corpus_end_to_end(corpus_dir, tmp_path):
    out, metrics = tmp_path / "shards", tmp_path / "metrics.json"
    params = TokenizeParams(val_fraction=0.2, shard_tokens=1024, workers=2)
    summary = tokenize_corpus(params, corpus_dir, out, seed=1, metrics_path=metrics)
    meta = json.loads((out / "meta.json").read_text())
    enc = gpt2()
    for split in ("train", "val"):
        texts = [clean_text((corpus_dir / n).read_bytes().decode()) for n in meta["splits"][split]["documents"]]  # c.txt ends in \r\n
        expected = [i for t in texts for i in enc.encode_ordinary(t) + [enc.eot_token]]
        got = np.concatenate([read_shard(out / n) for n in meta["splits"][split]["shards"]])
        assert got.tolist() == expected
        assert summary["tokens"][split] == len(expected)
        assert summary["bytes"][split] == sum(len(t.encode()) for t in texts)
    assert summary["documents"] == {"train": 4, "val": 1}
    saved = json.loads(metrics.read_text())
    # metrics hold comparable figures only (tokens/s is the machine's: in the summary); file names, checksums and the tokenizer are in meta.json
    assert set(saved) == {"tokens", "vocab_size"} and saved["vocab_size"] == 50257 and summary["tokens_per_s"] > 0
    assert all(saved[k] == summary[k] for k in saved)
    assert set(meta["files"]) == {n for s in meta["splits"].values() for n in s["shards"]}
    assert all(len(f["crc32"]) == 8 for f in meta["files"].values())
    assert TokenShards.from_folder(out, "train").vocab_size == 50257


def test_tokenize_with_the_simple_tokenizer(corpus_dir, tmp_path):
    out = tmp_path / "shards"
    tokenize_corpus(TokenizeParams(tokenizer="simple", val_fraction=0.2, workers=2), corpus_dir, out, seed=1)
    tok = SimpleTokenizer.load(out / "tokenizer.json")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == "tokenizer.json" and meta["vocab_size"] == tok.n_vocab
    train_text = "".join(clean_text((corpus_dir / n).read_bytes().decode()) + "<|endoftext|>" for n in meta["splits"]["train"]["documents"])
    assert tok.decode(read_shard(out / "train-00000.bin").tolist()) == train_text


def test_a_bad_file_leaves_no_output(corpus_dir, tmp_path):
    (corpus_dir / "zz.txt").write_bytes(b"\xff\xfe bad")
    out = tmp_path / "shards"
    with pytest.raises(GptlabError, match="zz.txt: not UTF-8"):
        tokenize_corpus(TokenizeParams(), corpus_dir, out, seed=1)
    assert sorted(os.listdir(tmp_path)) == ["corpus"]


def short_story(n_paragraphs: int = 82) -> str:
    """~20 KB of prose: one-line paragraphs separated by blank lines (no newline between two non-space characters)."""
    rng = random.Random(0)
    words = ["the", "old", "house", "stood", "on", "a", "hill", "and", "she", "walked", "slowly", "towards", "it,", "thinking."]
    return "".join(" ".join(rng.choice(words) for _ in range(45)).capitalize() + ".\n\n" for _ in range(n_paragraphs))


def test_a_short_story_of_paragraphs_splits_at_a_blank_line(tmp_path):
    story = short_story()
    assert 15_000 < len(story) < 25_000 and story.count("\n") == 164
    train, val = split_documents([Document("story.txt", story)], 0.1, seed=0)
    assert train[0].text + val[0].text == story
    assert train[0].text.endswith(".\n\n") and val[0].text[0].isupper()  # cut at a paragraph break
    assert 0.05 < len(val[0].text) / len(story) < 0.15
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "story.txt").write_text(story)
    summary = tokenize_corpus(TokenizeParams(workers=1), tmp_path / "corpus", tmp_path / "shards", seed=0)
    assert summary["documents"] == {"train": 1, "val": 1} and summary["tokens"]["val"] > 100


def test_one_document_without_an_inner_line_break_names_the_problem():
    with pytest.raises(GptlabError, match=r"one.txt: one document with no line break inside its text to split train from val"):
        split_documents([Document("one.txt", "\n\nJust one long line of text.\n\n")], 0.1, seed=0)
