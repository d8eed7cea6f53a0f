"""A corpus saved on Windows (byte-order mark, \\r\\n or lone \\r line endings) tokenizes as the same text saved elsewhere,
saying so once; an instruction file with a byte-order mark loads."""

import json

import pytest

from gptlab.data.corpus import is_blank, read_text, text_pieces
from gptlab.data.instructions import load_records
from gptlab.data.tokenize import tokenize_corpus
from gptlab.params import TokenizeParams

DOCS = {
    "a.txt": "ROMEO:\nBut soft, what light through yonder window breaks?\n\nIt is the east.\n" * 20,
    "b.txt": "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\nDeny thy father.\n" * 20,
    "c.txt": "MERCUTIO:\nA plague o' both your houses!\n" * 20,
    "d.txt": "NURSE:\nFaith, I can tell how to look sad.\n" * 20,
}


def windows(text: str) -> bytes:
    return b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode()


def write_corpus(folder, encode):
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_bytes(encode(name, text))


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_a_windows_corpus_gives_the_shards_of_the_same_text_and_says_so_once(tmp_path, capsys, tokenizer):
    params = TokenizeParams(tokenizer=tokenizer, vocab_size=300, val_fraction=0.25, workers=1)
    write_corpus(tmp_path / "unix", lambda name, text: text.encode())
    # a.txt: BOM + \r\n; b.txt: lone \r (old Mac); c.txt: a BOM alone; d.txt as it is
    variants = {"a.txt": windows, "b.txt": lambda t: t.replace("\n", "\r").encode(), "c.txt": lambda t: b"\xef\xbb\xbf" + t.encode()}
    write_corpus(tmp_path / "win", lambda name, text: variants.get(name, str.encode)(text))
    tokenize_corpus(params, tmp_path / "unix", tmp_path / "out_unix", seed=3)
    assert "normalised" not in capsys.readouterr().err  # a clean corpus is read as it is, silently
    tokenize_corpus(params, tmp_path / "win", tmp_path / "out_win", seed=3)
    err = capsys.readouterr().err
    assert err.count("tokenize: normalised 3 of 4 files (a leading byte-order mark dropped, \\r\\n and \\r line endings made \\n; e.g. a.txt)") == 1
    unix, win = sorted((tmp_path / "out_unix").iterdir()), sorted((tmp_path / "out_win").iterdir())
    assert [p.name for p in unix] == [p.name for p in win]
    for a, b in zip(unix, win):
        assert a.read_bytes() == b.read_bytes(), a.name  # the same ids, tokenizer and meta: no \r, no mark, as tokens


def test_text_pieces_clean_a_crlf_that_straddles_two_blocks(tmp_path):
    path = tmp_path / "w.txt"
    text = "one\ntwo\n\nthree\rfour\n" * 50
    path.write_bytes(windows(text))
    for block in (1, 2, 3, 7, 1 << 20):
        assert "".join(piece for piece, _ in text_pieces(path, 16, block_bytes=block)) == text.replace("\r", "\n")
    assert read_text(path) == text.replace("\r", "\n")


def test_a_file_holding_only_a_byte_order_mark_is_blank(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"\xef\xbb\xbf\r\n")
    assert is_blank(path)


def test_instruction_files_with_a_byte_order_mark_load(tmp_path):
    records = [{"instruction": "Say hi", "input": "", "output": "Hi"}, {"instruction": "Count", "input": "1", "output": "2"}]
    as_json = tmp_path / "data.json"
    as_json.write_bytes(b"\xef\xbb\xbf" + json.dumps(records).encode())
    as_jsonl = tmp_path / "data.jsonl"
    as_jsonl.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r) for r in records).encode())
    assert load_records(as_json) == records and load_records(as_jsonl) == records
