"""Streaming tokenization: JSONL / parquet record streams, the hash split, bounded read-ahead."""

import gzip
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from gptlab.data.corpus import in_val, text_pieces
from gptlab.data.shards import TokenShards, read_shard
from gptlab.data.stream import encode_units
from gptlab.data.tokenize import tokenize_corpus
from gptlab.errors import GptlabError
from gptlab.params import TokenizeParams
from gptlab.tokenizer import gpt2

WORDS = ["the", "King", "'s", "don't", "--", "café", "東京", "!", "x_y", "<|endoftext|>", "2026"]


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(rng.randint(1, 6))) for _ in range(n)]


def write_jsonl(path, docs, field="text", compress=None):
    raw = "".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(docs)).encode()
    if compress == "gz":
        raw = gzip.compress(raw)
    elif compress == "zst":
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)


def write_parquet(path, docs, field="text", row_group_size=7):
    pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path, row_group_size=row_group_size)


def expected_ids(docs, seed, val_fraction):
    enc = gpt2()
    out = {"train": [], "val": []}
    for d in docs:
        if d.strip():
            out["val" if in_val(d, seed, val_fraction) else "train"] += enc.encode_ordinary(d) + [enc.eot_token]
    return out


def split_tokens(out, split):
    meta = json.loads((out / "meta.json").read_text())
    return np.concatenate([read_shard(out / n) for n in meta["splits"][split]["shards"]]).tolist()


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_record_streams_encode_every_document_into_its_hashed_split(tmp_path, kind):
    docs = make_docs(60) + ["   \n"]  # a blank record is skipped, as a blank .txt file is
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    half = len(docs) // 2
    for i, part in enumerate((docs[:half], docs[half:])):
        path = corpus / f"part{i}.{kind}"
        write_parquet(path, part) if kind == "parquet" else write_jsonl(path, part, compress=kind.split(".")[-1] if "." in kind else None)
    params = TokenizeParams(corpus_glob=f"*.{kind}", val_fraction=0.25, shard_tokens=1024, workers=2, chunk_chars=1024)
    summary = tokenize_corpus(params, corpus, tmp_path / "shards", seed=5)
    want = expected_ids(docs, 5, 0.25)
    assert split_tokens(tmp_path / "shards", "train") == want["train"]
    assert split_tokens(tmp_path / "shards", "val") == want["val"]
    assert summary["split_rule"] == "hash" and sum(summary["documents"].values()) == 60
    assert 5 <= summary["documents"]["val"] <= 25 and summary["shards"]["train"] > 1
    assert TokenShards.from_folder(tmp_path / "shards", "train").n_tokens == len(want["train"])


def test_the_hash_split_follows_the_document_not_its_position_or_the_worker_count(tmp_path):
    docs = make_docs(40, seed=1)
    for name, order in (("a", docs), ("b", docs[::-1])):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "x.jsonl", order)
    params = TokenizeParams(corpus_glob="*.jsonl", workers=1)
    tokenize_corpus(params, tmp_path / "a", tmp_path / "sa", seed=3)
    tokenize_corpus(TokenizeParams(corpus_glob="*.jsonl", workers=3, chunk_chars=1024), tmp_path / "a", tmp_path / "sa3", seed=3)
    tokenize_corpus(params, tmp_path / "b", tmp_path / "sb", seed=3)
    assert (tmp_path / "sa" / "val-00000.bin").read_bytes() == (tmp_path / "sa3" / "val-00000.bin").read_bytes()
    enc = gpt2()
    val_a = enc.decode(split_tokens(tmp_path / "sa", "val")).split("<|endoftext|>")
    val_b = enc.decode(split_tokens(tmp_path / "sb", "val")).split("<|endoftext|>")
    assert sorted(val_a) == sorted(val_b) and len(val_a) > 2  # the same documents, in reverse order


def test_a_mixed_corpus_of_text_files_and_records_splits_every_document_by_hash(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = make_docs(20, seed=2)
    (corpus / "a.txt").write_text(docs[0])
    write_parquet(corpus / "b.parquet", docs[1:])
    summary = tokenize_corpus(TokenizeParams(corpus_glob="*", val_fraction=0.3, workers=2), corpus, tmp_path / "shards", seed=9)
    want = expected_ids(docs, 9, 0.3)
    assert split_tokens(tmp_path / "shards", "train") == want["train"] and split_tokens(tmp_path / "shards", "val") == want["val"]
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["split_rule"]["sources"] == ["a.txt", "b.parquet"] and summary["documents"]["val"] == meta["splits"]["val"]["documents"]


def test_the_text_field_is_configurable_and_a_missing_one_is_named(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "x.jsonl.zst", make_docs(30), field="content", compress="zst")
    with pytest.raises(GptlabError, match=r"x.jsonl.zst:1: no 'text' field \(record has: content, id\); set tokenize.text_field"):
        tokenize_corpus(TokenizeParams(corpus_glob="*.jsonl.zst"), corpus, tmp_path / "shards", seed=0)
    assert not (tmp_path / "shards").exists()
    summary = tokenize_corpus(TokenizeParams(corpus_glob="*.jsonl.zst", text_field="content", val_fraction=0.3), corpus, tmp_path / "shards", seed=0)
    assert sum(summary["documents"].values()) == 30
    write_parquet(corpus / "y.parquet", ["a b c"] * 3, field="body")
    with pytest.raises(GptlabError, match=r"y.parquet: no column 'text' \(columns: id, body\); set tokenize.text_field"):
        tokenize_corpus(TokenizeParams(corpus_glob="*.parquet"), corpus, tmp_path / "s2", seed=0)


def test_bad_records_are_named_by_file_and_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "x.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(GptlabError, match=r"x.jsonl:2: field 'text' holds int, not text"):
        tokenize_corpus(TokenizeParams(corpus_glob="*.jsonl"), corpus, tmp_path / "s", seed=0)
    (corpus / "x.jsonl").write_text('{"text": "fine"}\n\n{"text": "oops"\n')
    with pytest.raises(GptlabError, match=r"x.jsonl:3: not a JSON record"):
        tokenize_corpus(TokenizeParams(corpus_glob="*.jsonl"), corpus, tmp_path / "s", seed=0)


def test_a_split_the_hash_leaves_empty_is_named(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "x.jsonl", ["only one document"])
    with pytest.raises(GptlabError, match="the (train|val) split is empty .*; add documents or change tokenize.val_fraction"):
        tokenize_corpus(TokenizeParams(corpus_glob="*.jsonl"), corpus, tmp_path / "s", seed=0)


def test_text_files_stream_in_pieces_and_bad_bytes_are_located(tmp_path):
    text = "\n".join(make_docs(50, seed=4))
    path = tmp_path / "a.txt"
    path.write_text(text)
    pieces = list(text_pieces(path, 1024, block_bytes=1500))
    assert "".join(p for p, _ in pieces) == text and len(pieces) > 3
    assert pieces[-1][1] == path.stat().st_size
    enc = gpt2()
    assert [i for p, _ in pieces for i in enc.encode_ordinary(p)] == enc.encode_ordinary(text)
    raw = text.encode()
    bad = raw[:4000] + b"\xff" + raw[4000:]
    path.write_bytes(bad)
    with pytest.raises(GptlabError, match=r"a.txt: not UTF-8 \(byte 0xff at offset 4000\)"):
        list(text_pieces(path, 1024, block_bytes=1500))


def test_the_parent_reads_only_a_few_units_ahead_of_the_workers():
    enc = gpt2()
    read, ahead = [0], []

    def units():
        for i in range(50):
            read[0] += 1
            yield ("text", [(0, f"document {i}\n" * 200, True)]), 0

    got = 0
    for _ in encode_units(units(), enc, "text", 0, 0.1, workers=2):
        got += 1
        ahead.append(read[0] - got)
    assert got == 50 and max(ahead) <= 4  # 2 * workers in flight: the corpus is never held


def test_parquet_pieces_sent_to_workers_stay_small(tmp_path):
    import pickle

    from gptlab.data.records import parquet_batches

    docs = make_docs(400, seed=6)
    write_parquet(tmp_path / "x.parquet", docs, row_group_size=400)  # one big row group
    pieces = list(parquet_batches(tmp_path / "x.parquet", "text", target_bytes=4096))
    assert len(pieces) > 10 and sum(len(a) for _, a, _ in pieces) == 400
    assert max(len(pickle.dumps(a)) for _, a, _ in pieces) < 3 * 4096 + max(len(d.encode()) for d in docs)
    assert [t for _, a, _ in pieces for t in a.to_pylist()] == docs and pieces[-1][2] == 1.0


def test_an_empty_text_field_is_refused():
    with pytest.raises(GptlabError, match="text_field is empty: name the JSONL field / parquet column"):
        TokenizeParams(text_field=" ")


def test_units_too_big_for_the_shared_slots_take_the_pipe_and_give_the_same_ids():
    enc = gpt2()
    docs = make_docs(60, seed=3)
    blob = lambda ds: "".join(json.dumps({"text": d}) + "\n" for d in ds).encode()  # noqa: E731
    units = [
        (("jsonl", "small.jsonl", 1, blob(docs[:5])), 0),  # fits the slot's 2 KiB input
        (("jsonl", "big.jsonl", 1, blob(docs * 3)), 0),  # a blob over the slot: sent through the pipe
        (("text", [(0, "東京🙂" * 1500, True), (1, "café\n" * 10, False)]), 0),  # 6,000+ ids: over the slot's output
        (("jsonl", "blank.jsonl", 7, b'{"text": "a"}\n\n{"text": null}\n{"text": " "}\n{"text": "b c"}\n'), 0),
    ]
    got = [
        [(train.copy(), val.copy(), d, b) for (train, val, d, b), _ in encode_units(iter(units), enc, "text", 0, 0.3, workers=w, unit_bytes=1024)]
        for w in (1, 2)
    ]
    assert len(got[0]) == len(got[1]) == 4
    for (t1, v1, d1, b1), (t2, v2, d2, b2) in zip(*got):
        assert t1.dtype == t2.dtype == np.uint16 and np.array_equal(t1, t2) and np.array_equal(v1, v2) and (d1, b1) == (d2, b2)
    emoji = got[1][2][0]
    assert emoji.tolist() == enc.encode_ordinary("東京🙂" * 1500) + [enc.eot_token] and len(emoji) > 2048
    big_texts = [d for d in docs * 3 if d.strip()]
    assert sum(got[1][1][2]) == len(big_texts) and sum(got[1][1][3]) == sum(len(d.encode()) for d in big_texts)
    assert sum(got[1][3][2]) == 2  # the blank line, the null and the blank text are skipped, as line by line


def test_a_blob_parses_as_one_array_or_line_by_line_to_the_same_texts():
    from gptlab.data.records import jsonl_texts

    clean = b'{"text": "a\\nb"}\r\n{"text": null, "x": 1}\n{"text": "  "}\n{"text": "c"}\n'
    assert jsonl_texts("x.jsonl", 1, clean, "text") == ["a\nb", "c"]
    assert jsonl_texts("x.jsonl", 1, clean.replace(b"\r\n", b"\n\n  \n"), "text") == ["a\nb", "c"]  # blank lines: line by line
    with pytest.raises(GptlabError, match=r"x.jsonl:14: field 'text' holds int"):
        jsonl_texts("x.jsonl", 10, clean + b'{"text": 3}\n', "text")
    with pytest.raises(GptlabError, match=r"x.jsonl:11: not a JSON record"):
        jsonl_texts("x.jsonl", 10, b'{"text": "a"}\n{"text": "b"} {"text": "c"}\n', "text")
