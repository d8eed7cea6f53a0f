import dataclasses
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gptlab.errors import GptlabError
from gptlab.params import JudgeParams
from gptlab.params.loader import from_dict
from gptlab.score import judge
from gptlab.score.judge import DEFAULT_STRICT_SUFFIX, JudgeResult, check_reachable, endpoint, judge_prompt, judge_records, parse_score
from gptlab.serve import build_app, running_server
from tests.score.fake_judge import fake_judge

RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris.", "response": "Paris"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "response": "six"},
    {"instruction": "Say hi.", "output": "Hi!", "model_response": "Hello."},
]
FAST = {"backoff_s": 0.01, "timeout_s": 10.0}


def test_parse_score():
    assert parse_score("I'd say 85 points") == 85
    assert parse_score("85") == 85 and parse_score("Score: 100.") == 100 and parse_score("0") == 0
    assert parse_score("92.6") == 93
    assert parse_score("no number here") is None and parse_score("") is None and parse_score(None) is None


@pytest.mark.parametrize(
    "reply, score",
    [
        ("-5", None),  # issue 13.8: the sign is part of the number; negative is unscored
        ("Score: -10", None),
        ("1. The response is poor. Score: 20", 20),  # an explicit score wins over a list marker
        ("SCORE: 45", 45),
        ("**Score:** 60", 60),
        ("I would give it a score of 70 because it is close.", 70),
        ("The final score is 55.", 55),
        ("3 points off for style: 88/100", 88),
        ("It earns 90 out of 100.", 90),
        ("Score: 20. On reflection, Score: 30", 30),  # the last explicit score is the verdict
        ("Score: 7/10", None),  # another scale is not a 0..100 score
        ("Score: 250", None),  # out of range
        ("-5 or 250", None),
        ("80 or 90", None),  # two numbers and no explicit score: ambiguous
        ("In 2024 I give it 7/10", None),
        ("85. I gave 85 because it is right.", 85),  # the same number twice is one number
        ("a top-10 answer", 10),  # a hyphen inside a word is not a sign
    ],
)
def test_parse_score_prefers_an_explicit_score_and_rejects_negatives(reply, score):
    assert parse_score(reply) == score


def test_default_prompt_is_the_books():
    text = judge_prompt(RECORDS[1])
    assert text.startswith("Given the input `Below is an instruction")
    assert "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3` and correct output `5`, score the model response `six` on a scale from 0 to 100" in text
    assert "### Response" not in text and text.endswith("Respond with the integer number only.")
    assert judge_prompt(RECORDS[2], "{instruction}|{output}|{response}") == "Say hi.|Hi!|Hello."


def test_one_config_type_with_the_params_yaml_defaults():
    assert not hasattr(judge, "JudgeConfig")  # issue 12.3: JudgeParams is the judge's config
    section = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text(encoding="utf-8"))["score"]["judge"]
    assert from_dict(JudgeParams, section) == JudgeParams() and JudgeParams().retries == 2
    with pytest.raises(GptlabError, match=r"unknown placeholders \['answer'\]"):
        JudgeParams(prompt="rate {answer}")
    with pytest.raises(GptlabError, match="api='claude' is unknown"):
        JudgeParams(api="claude")
    with pytest.raises(GptlabError, match="must start with http"):
        JudgeParams(api="ollama", url="localhost:11434")
    assert endpoint(JudgeParams(api="openai", url="http://h:1/v1/")) == "http://h:1/v1/chat/completions"
    assert endpoint(JudgeParams(api="ollama", url="http://h:1/")) == "http://h:1/api/chat"


def test_params_yaml_judge_errors_name_the_key(tmp_path):
    from gptlab.errors import ParamsError

    with pytest.raises(ParamsError, match=r"^params.yaml: score.judge.prompt uses unknown placeholders \['answer'\]"):
        from_dict(JudgeParams, {"prompt": "rate {answer}"}, "params.yaml", "score.judge")


def test_judge_none_contacts_nobody():
    assert judge_records(RECORDS, JudgeParams(api="none", url="http://127.0.0.1:9")) == [JudgeResult(None, "", 0)] * 3


def test_ollama_judge_scores_and_sends_the_documented_request():
    app = fake_judge(lambda n, body: (200, "I'd say 85 points"))
    with running_server(app) as url:
        results = judge_records(RECORDS[:1], JudgeParams(api="ollama", url=url, model="judge", seed=7, num_ctx=4096, **FAST))
    assert results == [JudgeResult(85, "I'd say 85 points", 1)]
    (body,) = app.state.seen
    assert body["model"] == "judge" and body["stream"] is False
    assert body["options"] == {"seed": 7, "temperature": 0.0, "num_ctx": 4096}
    assert body["messages"] == [{"role": "user", "content": judge_prompt(RECORDS[0])}]


def test_reply_without_number_is_retried_once_strictly_then_unscored():
    app = fake_judge(lambda n, body: (200, "A fine answer, well written."))
    with running_server(app) as url:
        results = judge_records(RECORDS[:1], JudgeParams(api="openai", url=url + "/v1", model="judge", max_tokens=5, **FAST))
    assert results == [JudgeResult(None, "A fine answer, well written.", 2)]
    first, second = app.state.seen
    assert first["messages"][0]["content"] == judge_prompt(RECORDS[0])
    assert second["messages"][0]["content"] != first["messages"][0]["content"]
    assert second["messages"][0]["content"].endswith(DEFAULT_STRICT_SUFFIX)
    assert first["max_tokens"] == 5 and first["temperature"] == 0.0 and first["seed"] == 123


def test_strict_retry_can_score():
    app = fake_judge(lambda n, body: (200, "Good." if n == 1 else "70"))
    with running_server(app) as url:
        assert judge_records(RECORDS[:1], JudgeParams(api="ollama", url=url, model="judge", **FAST)) == [JudgeResult(70, "70", 2)]


def test_5xx_is_retried_with_backoff_and_4xx_fails_at_once():
    app = fake_judge(lambda n, body: (503, "busy") if n == 1 else (200, "90"))
    with running_server(app) as url:
        assert judge_records(RECORDS[:1], JudgeParams(api="openai", url=url, model="judge", **FAST)) == [JudgeResult(90, "90", 1)]
        assert len(app.state.seen) == 2
    down = fake_judge(lambda n, body: (500, "broken"))
    with running_server(down) as url:
        (result,) = judge_records(RECORDS[:1], JudgeParams(api="openai", url=url, model="judge", retries=2, **FAST))
        assert result.score is None and result.attempts == 0
        assert "failed 3 times, last: HTTP 500" in result.error and "\n" not in result.error
        assert len(down.state.seen) == 3
    refuse = fake_judge(lambda n, body: (400, "bad request"))
    with running_server(refuse) as url:
        (result,) = judge_records(RECORDS[:1], JudgeParams(api="ollama", url=url, model="judge", **FAST))
        assert result.score is None and "refused the request: HTTP 400" in result.error
        assert len(refuse.state.seen) == 1


def test_one_failing_request_keeps_every_other_verdict():
    """issue 13.9: a request that fails leaves its record unscored with the reason; the rest are judged."""

    def reply(n, body):
        content = body["messages"][0]["content"]
        return (400, "context too long") if "six" in content else (200, "Score: 80")

    app = fake_judge(reply)
    with running_server(app) as url:
        results = judge_records(RECORDS, JudgeParams(api="ollama", url=url, model="judge", concurrency=1, **FAST))
    assert [r.score for r in results] == [80, None, 80]
    assert results[1].error.startswith(f"judge {url}/api/chat refused the request: HTTP 400") and results[0].error == results[2].error == ""


def test_api_key_is_read_from_the_environment_at_request_time(monkeypatch):
    cfg = JudgeParams(api="openai", model="judge", **FAST)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    app = fake_judge(lambda n, body: (200, "50"))
    with running_server(app) as url:
        judge_records(RECORDS[:1], dataclasses.replace(cfg, url=url))
    assert app.state.auth == ["Bearer sk-test"]
    assert "sk-test" not in repr(cfg)


def test_requests_run_concurrently_and_results_keep_their_order():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def reply(n, body):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.1)
        with lock:
            in_flight[0] -= 1
        return 200, str(len(body["messages"][0]["content"]) % 101)

    app = fake_judge(reply)
    records = [dict(RECORDS[0], response="x" * i) for i in range(6)]
    with running_server(app) as url:
        results = judge_records(records, JudgeParams(api="ollama", url=url, model="judge", concurrency=3, **FAST))
    assert [r.score for r in results] == [len(judge_prompt(r)) % 101 for r in records]
    assert 1 < peak[0] <= 3


def test_unreachable_judge_fails_fast_with_one_line_naming_the_url():
    app = fake_judge(lambda n, body: (200, "50"))
    with running_server(app) as url:
        check_reachable(JudgeParams(api="ollama", url=url, model="judge"))
    for api in ("ollama", "openai"):
        cfg = JudgeParams(api=api, url=url, model="judge")
        start = time.monotonic()
        with pytest.raises(GptlabError) as err:
            judge_records(RECORDS, cfg)
        assert time.monotonic() - start < 5
        message = str(err.value)
        assert url in message and "unreachable" in message and "\n" not in message


def test_ollama_without_the_model_says_how_to_pull_it():
    app = fake_judge(lambda n, body: (200, "50"))
    with running_server(app) as url:
        with pytest.raises(GptlabError, match=r"has no model 'llama3' \(it has judge:latest\); run `ollama pull llama3`"):
            check_reachable(JudgeParams(api="ollama", url=url, model="llama3"))


# ------------------------------------------------- end to end against our own server


@pytest.fixture(scope="module")
def tiny_server(model_dir, one_torch_thread):
    with running_server(build_app(model_dir, model_name="tiny")) as url:
        yield url


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_judge_against_gptlab_serve_end_to_end(tiny_server, api):
    cfg = JudgeParams(api=api, url=tiny_server, model="tiny", max_tokens=6, **FAST)
    results = judge_records(RECORDS, cfg)
    assert len(results) == 3
    assert any(r.score is None for r in results)  # a random tiny model rarely says a number
    for record, result in zip(RECORDS, results):
        assert isinstance(result.reply, str)
        if result.score is None:
            assert result.attempts == 2 and parse_score(result.reply) is None
            # the reply captured is what the server says to the strict prompt (greedy: reproducible)
            prompt = judge_prompt(record) + DEFAULT_STRICT_SUFFIX
            if api == "ollama":
                body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "stream": False, "options": {"temperature": 0, "num_predict": 6}}
                assert httpx.post(f"{tiny_server}/api/chat", json=body).json()["message"]["content"] == result.reply
            else:
                body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 6}
                assert httpx.post(f"{tiny_server}/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == result.reply
        else:
            assert 0 <= result.score <= 100 and parse_score(result.reply) == result.score
