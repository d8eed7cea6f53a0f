import json

import pytest
import torch

from gptlab.data.instruction_splits import split_instruction_files
from gptlab.data.instructions import (
    InstructionBatches,
    collate,
    drop_duplicates,
    encode_example,
    encode_records,
    eval_batches,
    load_records,
    split_records,
    write_splits,
)
from gptlab.data.prompts import format_example, format_prompt, response_text
from gptlab.errors import GptlabError
from gptlab.params import InstructionsParams
from gptlab.tokenizer import GPT2_EOT_ID, SimpleTokenizer, gpt2

RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Translate to German.", "input": "Good morning", "output": "Guten Morgen", "source": "demo"},
    {"instruction": "Add the numbers.", "input": None, "output": "7"},
]


def test_format_prompt_exact_text():
    assert format_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSay hi.\n\n### Response:\n"
    )
    assert format_prompt("Translate.", "Hallo") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nTranslate.\n\n### Input:\nHallo\n\n### Response:\n"
    )
    assert format_prompt("Say hi.", "   ") == format_prompt("Say hi.")
    with pytest.raises(GptlabError, match="unknown; choose one of alpaca, book"):
        format_prompt("x", style="chatml")


def test_load_records_json_and_jsonl(tmp_path):
    as_json = tmp_path / "data.json"
    as_json.write_text(json.dumps(RECORDS, indent=1), encoding="utf-8")
    as_jsonl = tmp_path / "data.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n", encoding="utf-8")
    for path in (as_json, as_jsonl):
        records = load_records(path)
        assert [r["instruction"] for r in records] == [r["instruction"] for r in RECORDS]
        assert [r["input"] for r in records] == ["", "Good morning", ""]  # None -> ""
        assert records[1]["source"] == "demo"  # extra keys kept
    missing_input = tmp_path / "m.json"
    missing_input.write_text('[{"instruction": "Hi", "output": "Hello"}]')
    assert load_records(missing_input) == [{"instruction": "Hi", "output": "Hello", "input": ""}]


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"instruction": "a", "output": "b"}, 3]', r"record 1 is a int, not an object"),
        ('[{"instruction": "a", "output": "b"}, {}]', r"record 1 is empty"),
        ('[{"output": "b"}]', r"record 0: field 'instruction' is missing"),
        ('[{"instruction": "  ", "output": "b"}]', r"record 0: field 'instruction' is empty"),
        ('[{"instruction": "a"}]', r"record 0: field 'output' is missing"),
        ('[{"instruction": "a", "output": 5}]', r"record 0: field 'output' is a int, not a string"),
        ('[{"instruction": "a", "output": "b", "input": ["x"]}]', r"record 0: field 'input' is a list, not a string"),
        ('[{"instruction": "a", "output": "b"},]', r"not valid JSON \(line 1"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": 1, "output": "b"}\n', r"record 1 \(line 2\): field 'instruction' is a int"),
        ('{"instruction": "a", "output": "b"}\nnot json\n', r"line 2 is not a JSON object"),
        ("  \n", r"holds no records"),
    ],
)
def test_load_records_errors_name_file_record_and_field(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GptlabError, match=message) as info:
        load_records(path)
    assert str(path) in str(info.value)
    if "record " in message:
        assert "each record needs a non-empty string 'instruction'" in str(info.value)


def test_load_records_missing_file(tmp_path):
    with pytest.raises(GptlabError, match="not found"):
        load_records(tmp_path / "nope.json")


def _many(n):
    return [{"instruction": f"task {i}", "input": "", "output": f"answer {i}"} for i in range(n)]


def test_split_records_sizes_deterministic_and_disjoint():
    records = _many(100)
    a = split_records(records, seed=1)
    assert {k: len(v) for k, v in a.items()} == {"train": 85, "val": 5, "test": 10}
    assert a == split_records(records, seed=1)
    assert a != split_records(records, seed=2)
    ids = [r["instruction"] for split in a.values() for r in split]
    assert sorted(ids) == sorted(r["instruction"] for r in records)
    assert [r["instruction"] for r in a["train"][:3]] != ["task 0", "task 1", "task 2"]  # shuffled


def test_split_records_gives_each_positive_split_a_record():
    # floors of 4.25 / 0.25 / 0.5 are 4/0/0; the remainder goes to test, then val takes one from train
    assert {k: len(v) for k, v in split_records(_many(5), seed=0).items()} == {"train": 3, "val": 1, "test": 1}
    assert {k: len(v) for k, v in split_records(_many(5), (0.8, 0.0, 0.2)).items()} == {"train": 4, "val": 0, "test": 1}
    assert {k: len(v) for k, v in split_records(_many(2), seed=0).items()} == {"train": 2, "val": 0, "test": 0}  # too few records
    assert {k: len(v) for k, v in split_records([], seed=0).items()} == {"train": 0, "val": 0, "test": 0}


@pytest.mark.parametrize(
    "fractions, message",
    [((0.9, 0.05, 0.1), "sum to 1.05, not 1"), ((1.1, -0.1, 0.0), "each >= 0|give three numbers >= 0"), ((0.5, 0.5), "three numbers")],
)
def test_split_records_rejects_bad_fractions(fractions, message):
    with pytest.raises(GptlabError, match=message):
        split_records(_many(10), fractions)


def test_write_splits_round_trip(tmp_path):
    records = _many(20) + [{"instruction": "Übersetze «Haus»", "input": "", "output": "house", "extra": 1}]
    splits = split_records(records, seed=3)
    out = write_splits(splits, tmp_path / "instructions")
    assert sorted(p.name for p in out.iterdir()) == ["test.json", "train.json", "val.json"]
    for name, split in splits.items():
        text = (out / f"{name}.json").read_text(encoding="utf-8")
        assert json.loads(text) == split
        if split:
            assert text.startswith('[\n  {\n    "instruction"')  # indent 2
    assert "«Haus»" in "".join((out / f).read_text(encoding="utf-8") for f in ("train.json", "val.json", "test.json"))
    assert load_records(out / "train.json") == splits["train"]
    with pytest.raises(GptlabError, match="splits must be exactly train, val, test"):
        write_splits({"train": [], "val": []}, tmp_path / "x")


def test_format_and_encode_example_gpt2():
    enc = gpt2()
    prompt, response = format_example(RECORDS[1])
    assert prompt == format_prompt("Translate to German.", "Good morning") and response == "Guten Morgen"
    ids, n_prompt = encode_example(RECORDS[1], enc)
    assert ids[:n_prompt] == enc.encode_ordinary(prompt)
    assert ids[-1] == GPT2_EOT_ID and ids[n_prompt:-1] == enc.encode_ordinary(response)
    assert enc.decode(ids) == prompt + response + "<|endoftext|>"
    # the special-token text inside a record stays ordinary text
    ids, _ = encode_example({"instruction": "say <|endoftext|>", "input": "", "output": "ok"}, enc)
    assert ids.count(GPT2_EOT_ID) == 1


def test_encode_records_simple_tokenizer():
    texts = [p + r for p, r in map(format_example, RECORDS)]
    tok = SimpleTokenizer.train(texts)
    examples = encode_records(RECORDS, tok)
    assert len(examples) == 3
    for (ids, n_prompt), rec in zip(examples, RECORDS):
        prompt, response = format_example(rec)
        assert tok.decode(ids[:n_prompt]) == prompt and tok.decode(ids[n_prompt:-1]) == response
        assert ids[-1] == tok.eot_token
    assert encode_example(RECORDS[0], tok, eot_id=99)[0][-1] == 99


EOT = 50256
BOOK = [([0, 1, 2, 3, 4, EOT], 2), ([5, 6, EOT], 1), ([7, 8, 9, EOT], 2)]


def test_collate_matches_llms_from_scratch():
    inputs, targets = collate(BOOK)
    assert inputs.dtype == torch.int64 and targets.dtype == torch.int64
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, EOT, EOT, EOT], [7, 8, 9, EOT, EOT]]
    assert targets.tolist() == [[1, 2, 3, 4, EOT], [6, EOT, -100, -100, -100], [8, 9, EOT, -100, -100]]
    # bare id lists work the same
    assert torch.equal(collate([ids for ids, _ in BOOK])[1], targets)


def test_collate_mask_prompt_truncation_and_pad_id():
    inputs, targets = collate(BOOK, mask_prompt=True)
    # prompt lengths 2, 1, 2: targets predicting prompt tokens 1.. are masked, the first response token stays
    assert targets.tolist() == [[-100, 2, 3, 4, EOT], [6, EOT, -100, -100, -100], [-100, 9, EOT, -100, -100]]
    inputs, targets = collate(BOOK, allowed_max_length=3, ignore_index=-1)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, EOT], [7, 8, 9]]
    assert targets.tolist() == [[1, 2, 3], [6, EOT, -1], [8, 9, EOT]]
    inputs, targets = collate([([3, 0, 7], 1), ([4, 7], 1)], pad_id=0)
    # pad 0 equals token 0 inside the first text: it is not masked (masking is by position)
    assert inputs.tolist() == [[3, 0], [4, 0]] and targets.tolist() == [[0, 7], [7, -100]]
    with pytest.raises(GptlabError, match="example 1 has 1 token"):
        collate([([1, 2], 0), ([EOT], 0)])
    with pytest.raises(GptlabError, match="no examples"):
        collate([])


def _examples(n):
    return [([i, i + 1, EOT][: 2 + i % 2], 1) for i in range(n)]


def test_instruction_batches_epochs_and_determinism():
    examples = _examples(10)
    a = InstructionBatches(examples, batch_size=4, seed=5)
    assert a.batches_per_epoch == 3
    seen = []
    for _ in range(3):
        x, _ = next(a)
        seen += x[:, 0].tolist()
    assert sorted(seen) == list(range(10))  # one epoch covers each example once
    epoch2 = []
    for _ in range(3):
        epoch2 += next(a)[0][:, 0].tolist()
    assert sorted(epoch2) == list(range(10)) and epoch2 != seen and a.epoch == 1
    b = InstructionBatches(examples, batch_size=4, seed=5)
    assert [next(b)[0][:, 0].tolist() for _ in range(6)] == [seen[0:4], seen[4:8], seen[8:], epoch2[0:4], epoch2[4:8], epoch2[8:]]
    c = InstructionBatches(examples, batch_size=4, seed=5, drop_last=True)
    assert c.batches_per_epoch == 2 and all(len(next(c)[0]) == 4 for _ in range(5))


def test_instruction_batches_resume_exactly():
    examples = _examples(7)
    kw = dict(mask_prompt=True, allowed_max_length=8)
    ref = InstructionBatches(examples, 3, seed=11, **kw)
    expected = [next(ref) for _ in range(8)]
    run = InstructionBatches(examples, 3, seed=11, **kw)
    for _ in range(4):  # mid-epoch of epoch 1
        next(run)
    state = json.loads(json.dumps(run.state_dict()))
    resumed = InstructionBatches(examples, 3, seed=999, **kw)
    resumed.load_state_dict(state)
    for want in expected[4:]:
        got = next(resumed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(GptlabError, match="cannot fill a batch of 8"):
        InstructionBatches(examples, 8, drop_last=True)


def test_eval_batches_in_order():
    batches = list(eval_batches(BOOK, 2))
    assert [len(x) for x, _ in batches] == [2, 1]
    assert torch.equal(batches[0][1], collate(BOOK[:2])[1]) and torch.equal(batches[1][0], collate(BOOK[2:])[0])
    with pytest.raises(GptlabError, match="batch_size=0 is impossible"):
        list(eval_batches(BOOK, 0))


def book_format_input(entry):
    """``format_input`` of "Build a Large Language Model (From Scratch)", ch. 7, verbatim."""
    instruction_text = (
        f"Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


@pytest.mark.parametrize("record", RECORDS + [{"instruction": "Echo.", "input": "  ", "output": "ok"}])
def test_book_style_is_the_books_format(record):
    entry = {**record, "input": record["input"] or ""}
    assert format_prompt(entry["instruction"], entry["input"], style="book") == book_format_input(entry)
    prompt, response = format_example(entry, style="book")
    assert prompt == book_format_input(entry)
    assert prompt + response == book_format_input(entry) + f"\n\n### Response:\n{entry['output']}"  # the book's training text
    assert "paired with an input" not in prompt  # one header for every record
    ids, prompt_len = encode_example(entry, gpt2(), style="book")
    assert gpt2().decode(ids[:prompt_len]) == prompt


def test_response_text_removes_the_books_marker():
    assert response_text("\n\n### Response:\nParis.\n", style="book") == "Paris."
    assert response_text(" Paris. ", style="alpaca") == "Paris."


@pytest.mark.parametrize("content", ['{"instruction": "a", "output": "b"}', '{\n  "instruction": "a",\n  "output": "b"\n}\n'])
def test_a_single_json_object_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "one.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GptlabError, match=r"one.json: holds one JSON object, not a list of records; wrap the record\(s\) in a JSON array") as info:
        load_records(path)
    assert "\n" not in str(info.value)
    jsonl = tmp_path / "one.jsonl"  # one record a line: a JSONL file of one line is fine
    jsonl.write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    assert load_records(jsonl) == [{"instruction": "a", "output": "b", "input": ""}]


def test_duplicates_are_dropped_before_splitting_and_counted(tmp_path):
    records = _many(40)
    dupes = [dict(records[3]), dict(records[3]), {**records[5], "input": None}]  # None input == ""
    near = {**records[7], "output": "another answer"}  # a different output is not a duplicate
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.json").write_text(json.dumps(records + dupes + [near]), encoding="utf-8")
    unique, dropped = drop_duplicates(load_records(raw / "a.json"))
    assert dropped == 3 and len(unique) == 41
    metrics = tmp_path / "metrics.json"
    counts = split_instruction_files(InstructionsParams(dedupe="report"), raw, tmp_path / "splits", seed=1, metrics_path=metrics)
    near_found = counts["near_duplicates_val"] + counts["near_duplicates_test"]  # `near` asks what records[7] asks: 1 if they were split apart
    assert counts == {"records": 41, "duplicates_dropped": 3, "train": 35, "val": 2, "test": 4, **counts} and near_found <= 1
    assert json.loads(metrics.read_text()) == {k: v for k, v in counts.items() if k != "records"}
    seen = [json.dumps(r, sort_keys=True) for split in ("train", "val", "test") for r in json.loads((tmp_path / "splits" / f"{split}.json").read_text())]
    assert len(seen) == len(set(seen)) == 41  # no record in two splits


def test_near_duplicates_of_train_records_leave_val_and_test_and_are_counted(tmp_path):
    """Records that differ only by case, punctuation or whitespace of instruction and input ask the
    same thing: under dedupe: drop they leave val/test; under report they stay; both count them."""
    records = _many(60)
    variants = []
    for i, rec in enumerate(records[:20]):  # one variant of each of the first 20, with another answer
        instruction = rec["instruction"].upper() + "?!" if i % 2 else "  " + rec["instruction"].replace(" ", " \t ") + "."
        variants.append({"instruction": instruction, "input": ",,," if i % 3 == 0 else "", "output": f"another answer {i}"})
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.json").write_text(json.dumps(records + variants + [{"instruction": "task 1 2", "input": "", "output": "not a variant"}]), encoding="utf-8")

    def split(mode):
        metrics = tmp_path / f"{mode}.json"
        counts = split_instruction_files(InstructionsParams(dedupe=mode), raw, tmp_path / mode, seed=3, metrics_path=metrics)
        out = {name: json.loads((tmp_path / mode / f"{name}.json").read_text()) for name in ("train", "val", "test")}
        return counts, json.loads(metrics.read_text()), out

    report, report_metrics, kept = split("report")
    dropped, drop_metrics, cleaned = split("drop")
    key = lambda r: " ".join("".join(c if c.isalnum() else " " for c in (r["instruction"] + " " + r["input"]).lower()).split())  # noqa: E731
    train_keys = {key(r) for r in kept["train"]}
    for name in ("val", "test"):
        found = sum(key(r) in train_keys for r in kept[name])  # an independent count of what the module should find
        assert report[f"near_duplicates_{name}"] == report_metrics[f"near_duplicates_{name}"] == dropped[f"near_duplicates_{name}"] == found
        assert len(cleaned[name]) == len(kept[name]) - found and not any(key(r) in train_keys for r in cleaned[name])
        assert drop_metrics[name] == len(cleaned[name]) and report_metrics[name] == len(kept[name])
    assert report["near_duplicates_val"] + report["near_duplicates_test"] > 0  # the seed splits some pairs apart
    assert cleaned["train"] == kept["train"]
    with pytest.raises(GptlabError, match="dedupe='keep' is unknown; choose drop"):
        InstructionsParams(dedupe="keep")
