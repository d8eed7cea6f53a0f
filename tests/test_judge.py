import threading
import time

import httpx
import pytest
import torch
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from gptlab.checkpoint import save_model
from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.score.judge import DEFAULT_STRICT_SUFFIX, JudgeConfig, JudgeResult, check_reachable, judge_prompt, judge_records, parse_score
from gptlab.serve import build_app, running_server

RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris.", "response": "Paris"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "response": "six"},
    {"instruction": "Say hi.", "output": "Hi!", "model_response": "Hello."},
]
FAST = {"backoff_s": 0.01, "timeout_s": 10.0}


def test_parse_score():
    assert parse_score("I'd say 85 points") == 85
    assert parse_score("85") == 85 and parse_score("Score: 100.") == 100 and parse_score("0") == 0
    assert parse_score("In 2024 I give it 7/10") == 7  # out-of-range numbers are skipped
    assert parse_score("92.6") == 93
    assert parse_score("no number here") is None and parse_score("") is None and parse_score(None) is None
    assert parse_score("-5 or 250") == 5  # the sign is not part of the number; 250 is out of range


def test_default_prompt_is_the_books():
    text = judge_prompt(RECORDS[1])
    assert text.startswith("Given the input `Below is an instruction")
    assert "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3` and correct output `5`, score the model response `six` on a scale from 0 to 100" in text
    assert "### Response" not in text and text.endswith("Respond with the integer number only.")
    assert judge_prompt(RECORDS[2], "{instruction}|{output}|{response}") == "Say hi.|Hi!|Hello."


def test_config_checks():
    with pytest.raises(GptlabError, match=r"unknown placeholders \['answer'\]"):
        JudgeConfig(prompt="rate {answer}")
    with pytest.raises(GptlabError, match="api='claude' is unknown"):
        JudgeConfig(api="claude")
    with pytest.raises(GptlabError, match="not an http"):
        JudgeConfig(api="ollama", url="localhost:11434")
    assert JudgeConfig(api="openai", url="http://h:1/v1/").endpoint == "http://h:1/v1/chat/completions"
    assert JudgeConfig(api="ollama", url="http://h:1/").endpoint == "http://h:1/api/chat"


def test_judge_none_contacts_nobody():
    assert judge_records(RECORDS, JudgeConfig(api="none", url="http://127.0.0.1:9")) == [JudgeResult(None, "", 0)] * 3


def fake_judge(reply):
    """A judge speaking both APIs; ``reply(n, body) -> (status, text)`` for the n-th chat request."""
    app = FastAPI()
    app.state.seen = []
    lock = threading.Lock()

    def answer(body: dict) -> tuple[int, str]:
        with lock:
            app.state.seen.append(body)
            n = len(app.state.seen)
        return reply(n, body)

    @app.get("/api/tags")
    def tags():
        return {"models": [{"name": "judge:latest"}]}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "judge", "object": "model"}]}

    @app.post("/api/chat")
    def ollama(body: dict = Body(...)):
        status, text = answer(body)
        if status != 200:
            return JSONResponse({"error": text}, status_code=status)
        return {"model": body["model"], "message": {"role": "assistant", "content": text}, "done": True}

    @app.post("/v1/chat/completions")
    def openai(body: dict = Body(...)):
        status, text = answer(body)
        if status != 200:
            return JSONResponse({"error": {"message": text}}, status_code=status)
        return {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    return app


def test_ollama_judge_scores_and_sends_the_documented_request():
    app = fake_judge(lambda n, body: (200, "I'd say 85 points"))
    with running_server(app) as url:
        results = judge_records(RECORDS[:1], JudgeConfig(api="ollama", url=url, model="judge", seed=7, num_ctx=4096, **FAST))
    assert results == [JudgeResult(85, "I'd say 85 points", 1)]
    (body,) = app.state.seen
    assert body["model"] == "judge" and body["stream"] is False
    assert body["options"] == {"seed": 7, "temperature": 0.0, "num_ctx": 4096}
    assert body["messages"] == [{"role": "user", "content": judge_prompt(RECORDS[0])}]


def test_reply_without_number_is_retried_once_strictly_then_unscored():
    app = fake_judge(lambda n, body: (200, "A fine answer, well written."))
    with running_server(app) as url:
        results = judge_records(RECORDS[:1], JudgeConfig(api="openai", url=url + "/v1", model="judge", max_tokens=5, **FAST))
    assert results == [JudgeResult(None, "A fine answer, well written.", 2)]
    first, second = app.state.seen
    assert first["messages"][0]["content"] == judge_prompt(RECORDS[0])
    assert second["messages"][0]["content"] != first["messages"][0]["content"]
    assert second["messages"][0]["content"].endswith(DEFAULT_STRICT_SUFFIX)
    assert first["max_tokens"] == 5 and first["temperature"] == 0.0 and first["seed"] == 123


def test_strict_retry_can_score():
    app = fake_judge(lambda n, body: (200, "Good." if n == 1 else "70"))
    with running_server(app) as url:
        assert judge_records(RECORDS[:1], JudgeConfig(api="ollama", url=url, model="judge", **FAST)) == [JudgeResult(70, "70", 2)]


def test_5xx_is_retried_with_backoff_and_4xx_fails_at_once():
    app = fake_judge(lambda n, body: (503, "busy") if n == 1 else (200, "90"))
    with running_server(app) as url:
        assert judge_records(RECORDS[:1], JudgeConfig(api="openai", url=url, model="judge", **FAST)) == [JudgeResult(90, "90", 1)]
        assert len(app.state.seen) == 2
    down = fake_judge(lambda n, body: (500, "broken"))
    with running_server(down) as url:
        with pytest.raises(GptlabError, match=r"failed 3 times, last: HTTP 500"):
            judge_records(RECORDS[:1], JudgeConfig(api="openai", url=url, model="judge", retries=2, **FAST))
        assert len(down.state.seen) == 3
    refuse = fake_judge(lambda n, body: (400, "bad request"))
    with running_server(refuse) as url:
        with pytest.raises(GptlabError, match="refused the request: HTTP 400"):
            judge_records(RECORDS[:1], JudgeConfig(api="ollama", url=url, model="judge", **FAST))
        assert len(refuse.state.seen) == 1


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
        results = judge_records(records, JudgeConfig(api="ollama", url=url, model="judge", concurrency=3, **FAST))
    assert [r.score for r in results] == [len(judge_prompt(r)) % 101 for r in records]
    assert 1 < peak[0] <= 3


def test_unreachable_judge_fails_fast_with_one_line_naming_the_url():
    app = fake_judge(lambda n, body: (200, "50"))
    with running_server(app) as url:
        check_reachable(JudgeConfig(api="ollama", url=url, model="judge"))
    for api in ("ollama", "openai"):
        cfg = JudgeConfig(api=api, url=url, model="judge")
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
            check_reachable(JudgeConfig(api="ollama", url=url, model="llama3"))


# ------------------------------------------------- end to end against our own server


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, one_torch_thread):
    torch.manual_seed(0)
    folder = save_model(tmp_path_factory.mktemp("judge") / "tiny", GPT(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2)))
    with running_server(build_app(folder, model_name="tiny")) as url:
        yield url


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_judge_against_gptlab_serve_end_to_end(tiny_server, api):
    cfg = JudgeConfig(api=api, url=tiny_server, model="tiny", max_tokens=6, **FAST)
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
