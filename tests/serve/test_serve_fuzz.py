"""A seeded fuzz of `gptlab serve` over loopback: 200 requests built from a grammar of JSON values
(wrong types, huge numbers, NaN/Infinity literals, lone surrogates, deep nesting, cut bodies)
on the four generation routes; every answer is below 500 and the server answers afterwards."""

import json
import random
import time

import httpx

PATHS = ["/v1/completions", "/v1/chat/completions", "/api/generate", "/api/chat"]
KEYS = ["prompt", "messages", "model", "stream", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "options", "raw", "system", "n"]
KEYS += ["min_p", "truncate", "truncate_prompt_tokens", "logit_bias", "user", "stream_options", "format", "tools"]
OPTIONS = ["num_predict", "temperature", "top_k", "top_p", "seed", "stop", "min_p", "num_ctx", "repeat_penalty"]
N_REQUESTS = 200


def scalar(rng: random.Random) -> object:
    """A JSON scalar a client might send, or should not."""
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            1,
            -1,
            3,
            2**63,
            -(2**70),
            10**300,
            0.5,
            -0.0,
            1e308,
            2.0,
            "",
            "x",
            "hi \ud800",
            "\udfff",
            "\U0001f600",
            " x" * 80,
            "<|endoftext|>",
            "\x00",
            "5",
            "tiny",
        ]
    )


def value(rng: random.Random, depth: int = 0) -> object:
    """A JSON value: a scalar, a message, a list or an object, nested a little."""
    roll = rng.random()
    if depth > 3 or roll < 0.55:
        return scalar(rng)
    if roll < 0.7:
        return {"role": rng.choice(["user", "system", "assistant", 3]), "content": value(rng, depth + 1)}
    if roll < 0.85:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(OPTIONS): value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


VALID = {
    "/v1/completions": {"prompt": "Once upon", "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/api/generate": {"prompt": "Once upon", "options": {"num_predict": 2}},
    "/api/chat": {"messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 2}},
}


def mutant(rng: random.Random, path: str) -> bytes:
    """A valid body of ``path`` with one or two keys (top-level or an option) set to random values."""
    data = json.loads(json.dumps(VALID[path]))
    for _ in range(rng.randint(1, 2)):
        if rng.random() < 0.5 and isinstance(data.get("options", {}), dict):
            data["options"] = {**data.get("options", {}), rng.choice(OPTIONS): scalar(rng)}
        else:
            data[rng.choice(KEYS)] = value(rng)
    data["stream"] = rng.random() < 0.3
    return json.dumps(data).encode()


def body(rng: random.Random, path: str) -> bytes:
    """One request body: half valid ones with a key or two mutated, else an object of known keys
    with random values, or raw junk."""
    if rng.random() < 0.5:
        return mutant(rng, path)
    roll = rng.random()
    if roll < 0.05:
        return b"[" * rng.randint(10, 60_000)
    if roll < 0.1:
        return rng.choice([b"", b"{", b"null", b"[1, 2]", b'{"prompt": NaN}', b'{"temperature": Infinity}', b"\xff\xfe", b'{"a": 1e99999}'])
    data = {key: value(rng) for key in rng.sample(KEYS, rng.randint(1, 6))}
    if rng.random() < 0.5:
        data["options"] = {k: scalar(rng) for k in rng.sample(OPTIONS, rng.randint(0, 4))}
    if rng.random() < 0.7:  # keep most answers short
        data.setdefault("max_tokens", 2)
        data.setdefault("options", {})
        if isinstance(data["options"], dict):
            data["options"].setdefault("num_predict", 2)
    text = json.dumps(data)  # ASCII: lone surrogates stay \ud800 escapes
    if rng.random() < 0.1:
        text = text.replace("1e+308", "Infinity").replace("0.5", "NaN")
    return text.encode()


def test_two_hundred_random_requests_are_all_answered_below_500(url):
    rng = random.Random(24)
    statuses: dict[int, int] = {}
    start = time.monotonic()
    with httpx.Client(timeout=60) as client:
        for i in range(N_REQUESTS):
            path = rng.choice(PATHS)
            content = body(rng, path)
            r = client.post(url + path, content=content)
            assert r.status_code < 500, f"request {i}: POST {path} {content[:300]!r} -> {r.status_code} {r.text[:300]}"
            if r.status_code != 200:
                assert "error" in r.json(), r.text
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert time.monotonic() - start < 240, "the fuzz ran past its time bound"
    assert httpx.get(f"{url}/api/version").status_code == 200
    assert statuses.get(200, 0) > 5 and statuses.get(400, 0) > 50, statuses
    print(f"fuzz: {statuses} in {time.monotonic() - start:.1f} s")
