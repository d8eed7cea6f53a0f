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
import torch

from gptlab.checkpoint import save_model
from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.params import JudgeParams, ScoreParams
from gptlab.score.report import load_responses, score_responses
from gptlab.serve import build_app, running_server

RESPONSES = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red.", "response": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "response": "The sum is 5"},
    {"instruction": "Say hello.", "input": "", "output": "Hello!", "response": ""},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("score") / "tiny", GPT(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2)))


def write(tmp_path, name, records):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_offline_scores_for_two_engines(tmp_path, model_dir):
    ours = write(tmp_path, "responses.json", RESPONSES)
    theirs = write(tmp_path, "responses_litgpt.json", [dict(r, response=r["output"]) for r in RESPONSES])
    m = score_responses({"gptlab": (ours, model_dir), "litgpt": (theirs, None)}, ScoreParams(), tmp_path / "scores.csv", tmp_path / "score.json")
    assert json.loads((tmp_path / "score.json").read_text()) == m
    assert m["judge"] == {"api": "none"}
    assert m["gptlab"]["records"] == 3 and m["gptlab"]["exact_match"] == pytest.approx(1 / 3, abs=1e-5)
    assert m["gptlab"]["empty_share"] == pytest.approx(1 / 3, abs=1e-5)
    assert m["litgpt"]["exact_match"] == 1.0 and "loss" not in m["litgpt"]
    assert 9 < m["gptlab"]["loss"] < 12  # a random tiny model: about ln(50257) = 10.8 nats/token
    df = pd.read_csv(tmp_path / "scores.csv")
    assert list(df["engine"]) == ["gptlab"] * 3 + ["litgpt"] * 3
    assert {"exact_match", "token_f1", "rouge_l_f1", "response_words", "loss"} <= set(df.columns)
    assert "judge_score" not in df.columns


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_judged_by_gptlab_serve_over_both_apis(tmp_path, model_dir, api, one_torch_thread):
    ours = write(tmp_path, "responses.json", RESPONSES)
    with running_server(build_app(model_dir, model_name="judge")) as url:
        p = ScoreParams(judge=JudgeParams(api=api, url=url, model="judge", timeout_s=30, retries=0, concurrency=2))
        m = score_responses({"gptlab": (ours, None)}, p, tmp_path / "scores.csv", tmp_path / "score.json")
    assert m["judge"] == {"api": api, "model": "judge", "url": url}
    assert m["gptlab"]["judge_scored"] + m["gptlab"]["judge_unscored"] == 3
    df = pd.read_csv(tmp_path / "scores.csv")
    assert df["judge_reply"].notna().all() and set(df["judge_attempts"]) <= {1, 2}


def test_unreachable_judge_fails_at_once(tmp_path):
    ours = write(tmp_path, "responses.json", RESPONSES)
    p = ScoreParams(judge=JudgeParams(api="ollama", url="http://127.0.0.1:9", timeout_s=2))
    start = time.perf_counter()
    with pytest.raises(GptlabError, match="127.0.0.1:9") as e:
        score_responses({"gptlab": (ours, None)}, p, tmp_path / "scores.csv", tmp_path / "score.json")
    assert "\n" not in str(e.value) and time.perf_counter() - start < 10


def test_bad_responses_file_is_named(tmp_path):
    with pytest.raises(GptlabError, match="run `dvc repro generate` first"):
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
