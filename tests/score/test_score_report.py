"""The score stage end to end: responses -> data/scores.csv + metrics/score.json, judged over HTTP."""

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pandas as pd
import pytest

from gptlab.errors import GptlabError
from gptlab.params import JudgeParams, ScoreParams
from gptlab.score.reference_loss import reference_loss_file
from gptlab.score.report import load_responses, score_responses
from gptlab.serve import build_app, running_server
from tests.helpers.records import INSTRUCTIONS
from tests.score.fake_judge import fake_judge

RESPONSES = [
    dict(INSTRUCTIONS[0], response="Red."),
    dict(INSTRUCTIONS[1], response="The sum is 5"),
    dict(INSTRUCTIONS[4], response=""),
]


def write(tmp_path, name, records):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


OFFLINE_KEYS = {
    "squad_token_f1",
    "squad_token_precision",
    "squad_token_recall",
    "rougeL_f1",
    "response_words",
    "length_ratio",
    "empty_share",
    "squad_token_f1_low",
    "squad_token_f1_high",
    "rougeL_f1_low",
    "rougeL_f1_high",
}
LOSS_KEYS = {"loss", "loss_low", "loss_high"}
JUDGE_KEYS = {"judge_mean", "judge_scored", "judge_unscored", "judge_failed", "judge_f1_spearman"}


def test_offline_scores_for_two_engines(tmp_path, model_dir):
    ours = write(tmp_path, "responses.json", RESPONSES)
    theirs = write(tmp_path, "responses_litgpt.json", [dict(r, response=r["output"]) for r in RESPONSES])
    test = write(tmp_path, "test.json", [{k: r[k] for k in ("instruction", "input", "output")} for r in RESPONSES])
    losses = reference_loss_file(model_dir, test, tmp_path / "reference_loss.json", "alpaca")
    engines = {"gptlab": (ours, tmp_path / "reference_loss.json"), "litgpt": (theirs, None)}
    m = score_responses(engines, ScoreParams(), tmp_path / "scores.csv", tmp_path / "score.json", provenance_path=tmp_path / "prov.json")
    assert json.loads((tmp_path / "score.json").read_text()) == m
    assert set(m) == {"gptlab", "litgpt"} and set(m["gptlab"]) == OFFLINE_KEYS | LOSS_KEYS and set(m["litgpt"]) == OFFLINE_KEYS
    assert m["gptlab"]["squad_token_f1"] < 1.0
    assert m["gptlab"]["empty_share"] == pytest.approx(1 / 3, abs=1e-5)
    assert m["litgpt"]["squad_token_f1"] == 1.0 and m["litgpt"]["rougeL_f1"] == 1.0
    assert m["litgpt"]["squad_token_f1_low"] == m["litgpt"]["squad_token_f1_high"] == 1.0  # no spread, no interval
    assert m["gptlab"]["loss"] == pytest.approx(sum(losses) / 3, abs=1e-5)
    assert m["gptlab"]["loss_low"] <= m["gptlab"]["loss"] <= m["gptlab"]["loss_high"]
    assert 9 < m["gptlab"]["loss"] < 12  # a random tiny model: about ln(50257) = 10.8 nats/token
    prov = json.loads((tmp_path / "prov.json").read_text())
    assert prov["judge"] == {"api": "none"} and prov["scores"] == str(tmp_path / "scores.csv")
    assert prov["engines"]["gptlab"] == {"responses": str(ours), "reference_loss": str(tmp_path / "reference_loss.json"), "records": 3}
    assert prov["engines"]["litgpt"]["reference_loss"] is None
    df = pd.read_csv(tmp_path / "scores.csv")
    assert list(df["engine"]) == ["gptlab"] * 3 + ["litgpt"] * 3
    assert {"squad_exact_match", "squad_token_f1", "squad_token_precision", "squad_token_recall", "rougeL_f1", "rouge1_f1", "rouge2_f1"} <= set(df.columns)
    assert {"response_words", "length_ratio", "loss"} <= set(df.columns)
    assert "judge_score" not in df.columns


def test_a_loss_file_of_another_split_is_refused(tmp_path):
    ours = write(tmp_path, "responses.json", RESPONSES)
    write(tmp_path, "loss.json", {"loss": [1.0, 2.0]})
    with pytest.raises(GptlabError, match=r"loss.json: 2 losses for 3 responses; .*dvc repro"):
        score_responses({"gptlab": (ours, tmp_path / "loss.json")}, ScoreParams(), tmp_path / "s.csv", tmp_path / "s.json")


RECORDS = RESPONSES + [
    {"instruction": "Name a fruit.", "input": "", "output": "An apple.", "response": "A pear."},
    {"instruction": "Spell cat.", "input": "", "output": "c a t", "response": "c a t"},
]
VERDICTS = {"Red.": "Score: 85", "The sum is 5": "I'd say 60", "": "score of 10", "A pear.": "The response is wrong. Score: 30"}


def verdict_of(n, body):
    """The fake judge's reply: keyed by the response shown in the prompt."""
    content = body["messages"][0]["content"]
    for response, reply in VERDICTS.items():
        if f"score the model response `{response}`" in content:
            return 200, reply
    return 400, "prompt too long for this model"


def test_judged_stage_finishes_with_rank_correlation(tmp_path):
    """issue 13.1: with 3+ scored records the stage used to need scipy; issue 13.9: a failed request is counted."""
    responses = write(tmp_path, "responses.json", RECORDS)
    app = fake_judge(verdict_of)
    with running_server(app) as url:
        p = ScoreParams(judge=JudgeParams(api="ollama", url=url, model="judge", retries=0, concurrency=2))
        m = score_responses({"gptlab": (responses, None)}, p, tmp_path / "scores.csv", tmp_path / "score.json", provenance_path=tmp_path / "prov.json")
    s = m["gptlab"]
    assert set(s) == OFFLINE_KEYS | JUDGE_KEYS
    assert (s["judge_scored"], s["judge_unscored"], s["judge_failed"]) == (4, 1, 1)
    assert s["judge_mean"] == pytest.approx((85 + 60 + 10 + 30) / 4)
    # judge [85, 60, 10, 30] vs SQuAD F1 [1, 2/3 ("sum 5" in "sum is 5"), 0, 0]: Pearson of ranks [4,3,1,2] and [4,3,1.5,1.5]
    f1_ranks, judge_ranks = pd.Series([4, 3, 1.5, 1.5]), pd.Series([4, 3, 1, 2])
    assert s["judge_f1_spearman"] == pytest.approx(judge_ranks.corr(f1_ranks), abs=1e-5)
    assert json.loads((tmp_path / "prov.json").read_text())["judge"] == {"api": "ollama", "model": "judge", "url": url}
    df = pd.read_csv(tmp_path / "scores.csv", keep_default_na=False)
    assert list(df["judge_score"].astype(str)) == ["85", "60", "10", "30", ""]
    assert df["judge_error"].iloc[4].startswith(f"judge {url}/api/chat refused the request: HTTP 400") and set(df["judge_error"].iloc[:4]) == {""}


def test_judge_that_scores_nothing_fails_the_stage_but_keeps_its_replies(tmp_path):
    responses = write(tmp_path, "responses.json", RESPONSES)
    app = fake_judge(lambda n, body: (500, "out of memory"))
    with running_server(app) as url:
        p = ScoreParams(judge=JudgeParams(api="openai", url=url, model="judge", retries=1, backoff_s=0.01))
        with pytest.raises(GptlabError, match=rf"^judge {url} scored none of 3 records \(3 requests failed, first: .*HTTP 500.*scores.csv") as e:
            score_responses({"gptlab": (responses, None)}, p, tmp_path / "scores.csv", tmp_path / "score.json")
    assert "\n" not in str(e.value)
    assert json.loads((tmp_path / "score.json").read_text())["gptlab"]["judge_failed"] == 3
    assert pd.read_csv(tmp_path / "scores.csv")["judge_error"].str.contains("HTTP 500").all()


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_judged_by_gptlab_serve_over_both_apis(tmp_path, model_dir, api, one_torch_thread):
    ours = write(tmp_path, "responses.json", RESPONSES)
    with running_server(build_app(model_dir, model_name="judge")) as url:
        p = ScoreParams(judge=JudgeParams(api=api, url=url, model="judge", timeout_s=30, retries=0, concurrency=2, max_tokens=4))
        try:
            m = score_responses({"gptlab": (ours, None)}, p, tmp_path / "scores.csv", tmp_path / "score.json")
        except GptlabError as e:  # a random tiny model rarely says a number
            assert "scored none of 3 records (no reply held a score 0..100)" in str(e)
        else:
            assert m["gptlab"]["judge_scored"] + m["gptlab"]["judge_unscored"] == 3 and m["gptlab"]["judge_failed"] == 0
    df = pd.read_csv(tmp_path / "scores.csv")
    assert df["judge_reply"].notna().all() and set(df["judge_attempts"]) <= {1, 2} and df["judge_error"].isna().all()


def test_unreachable_judge_fails_at_once(tmp_path):
    ours = write(tmp_path, "responses.json", RESPONSES)
    p = ScoreParams(judge=JudgeParams(api="ollama", url="http://127.0.0.1:9", timeout_s=2))
    start = time.perf_counter()
    with pytest.raises(GptlabError, match="127.0.0.1:9") as e:
        score_responses({"gptlab": (ours, None)}, p, tmp_path / "scores.csv", tmp_path / "score.json")
    assert "\n" not in str(e.value) and time.perf_counter() - start < 10


def test_bad_responses_file_is_named(tmp_path):
    with pytest.raises(GptlabError, match="missing.json: no such file .*dvc repro generate"):
        load_responses(tmp_path / "missing.json")
    bad = write(tmp_path, "bad.json", [{"instruction": "x"}])
    with pytest.raises(GptlabError, match="record 0 lacks"):
        load_responses(bad)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_gptlab_serve_command(model_dir):
    """The `gptlab serve` command itself: starts, answers both APIs on loopback, stops on SIGTERM."""
    port = free_port()
    env = dict(os.environ, GPTLAB_QUIET="1")
    cmd = [sys.executable, "-m", "gptlab.cli", "serve", "--model", str(model_dir), "--port", str(port), "--name", "tiny", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                tags = httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=2).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not start in 60 s"
                time.sleep(0.3)
        assert [m["name"] for m in tags["models"]][0].startswith("tiny")
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30).json()
        assert reply["choices"][0]["message"]["role"] == "assistant"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_pair_gets_a_paired_difference_and_a_table_that_says_which_is_better(tmp_path):
    """Fine-tuned answers with the reference's first words, base with the whole reference and
    more: fine-tuned wins F1 and ROUGE-L by being shorter alone; at matched length they tie."""
    refs = [f"the answer to question {i} is {i} and nothing more than {i}" for i in range(30)]
    base_ = [
        dict(
            instruction=f"Q{i}",
            input="",
            output=r,
            response=f"{r} and then some words that are not in it, said at length to fill the answer with more than was asked for {i}",
        )
        for i, r in enumerate(refs)
    ]
    tuned = [dict(r, response=" ".join(r["output"].split()[: 6 + i % 3])) for i, r in enumerate(base_)]
    write(tmp_path, "loss.json", {"loss": [1.0 + i / 100 for i in range(30)]})
    write(tmp_path, "loss_base.json", {"loss": [1.2 + i / 100 for i in range(30)]})
    engines = {
        "finetuned": (write(tmp_path, "ft.json", tuned), tmp_path / "loss.json"),
        "base": (write(tmp_path, "base.json", base_), tmp_path / "loss_base.json"),
    }
    m = score_responses(engines, ScoreParams(), tmp_path / "s.csv", tmp_path / "s.json", pair=("finetuned", "base"), table_path=tmp_path / "score.md")
    d = m["diff"]
    assert d["squad_token_f1"] > 0 and d["squad_token_f1_significant"] is True
    assert d["squad_token_f1_matched"] == 0.0 and d["squad_token_f1_matched_significant"] is False
    assert d["loss"] == pytest.approx(-0.2) and d["loss_high"] < 0 and d["loss_significant"] is True
    assert m["finetuned"]["squad_token_precision"] == 1.0 and m["base"]["squad_token_recall"] == 1.0
    assert m["finetuned"]["length_ratio"] < 1 < m["base"]["length_ratio"]
    assert json.loads((tmp_path / "s.json").read_text())["diff"] == d
    table = (tmp_path / "score.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    assert rows["token F1 (higher is better)"][1] == "**fine-tuned**" and rows["token F1 (higher is better)"][5] == "yes |"
    assert rows["token F1 at matched length (higher is better)"][1] == "neither" and rows["token F1 at matched length (higher is better)"][5] == "no |"
    assert rows["reference loss, nats/token (lower is better)"][1] == "**fine-tuned**"
    assert "30 test records" in table and "2,000 resamples, seed 1337" in table
    assert list(pd.read_csv(tmp_path / "s.csv")["squad_token_f1_matched"][:30]) == list(pd.read_csv(tmp_path / "s.csv")["squad_token_f1_matched"][30:])


def test_a_pair_of_different_splits_is_refused(tmp_path):
    other = [dict(r, instruction=r["instruction"] + "?") for r in RESPONSES]
    engines = {"finetuned": (write(tmp_path, "a.json", RESPONSES), None), "base": (write(tmp_path, "b.json", other), None)}
    with pytest.raises(GptlabError, match="record 0 differs between finetuned and base responses"):
        score_responses(engines, ScoreParams(), tmp_path / "s.csv", tmp_path / "s.json", pair=("finetuned", "base"))
