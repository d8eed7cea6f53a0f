"""An LLM judge over HTTP: score each response 0..100 against the reference output.

Configured by :class:`gptlab.params.JudgeParams` (the ``score.judge`` params). Two APIs:

- ``ollama``: ``POST {url}/api/chat`` with ``model``, ``messages``, ``stream: false`` and
  ``options`` ``{seed, temperature, num_ctx[, num_predict]}``; the reply is ``message.content``;
- ``openai``: ``POST {url}/v1/chat/completions`` (vLLM, llama.cpp server, ``gptlab serve``);
  the reply is ``choices[0].message.content``.

The score is read by :func:`parse_score`. A reply without one is asked again once with a
stricter prompt; if that fails too the record is *unscored* (``score`` None, never 0).
Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; other 4xx fail
at once. A request that still fails leaves its record unscored with the reason in
``JudgeResult.error``; the other records are judged all the same. :func:`check_reachable`
runs first, so an absent judge fails in a second with one line naming its URL.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import httpx

from gptlab.data.prompts import format_prompt
from gptlab.errors import GptlabError
from gptlab.params import JudgeParams
from gptlab.progress import progress
from gptlab.score.metrics import response_of

DEFAULT_PROMPT = (
    "Given the input `{prompt}` and correct output `{output}`, score the model response `{response}` "
    "on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
)
DEFAULT_STRICT_SUFFIX = "\n\nYour previous answer contained no number. Reply with a single integer from 0 to 100 and nothing else: no words, no punctuation."
API_KEY_ENV = "OPENAI_API_KEY"
_RESPONSE_MARK = "\n\n### Response:\n"
# a number with its sign; a hyphen inside a word ("top-10") is not a sign
_NUM = r"(?<![\w.])[-+\u2212]?\d+(?:\.\d+)?(?![\d.]*\d)"
_NUMBER = re.compile(_NUM)
# "Score: 85", "**Score:** 85", "score of 85", "final score is 85"; an optional "/ N" after it
_EXPLICIT = re.compile(rf"\bscore\b[\s*:=]*(?:(?:is|of)\b[\s*:=]*)?(?P<n>{_NUM})(?:\s*/\s*(?P<d>\d+))?", re.IGNORECASE)
# "85/100", "85 out of 100"
_OUT_OF_100 = re.compile(rf"(?P<n>{_NUM})\s*(?:/|out\s+of)\s*100\b", re.IGNORECASE)


@dataclass(frozen=True)
class JudgeResult:
    """One record's verdict: ``score`` 0..100 or None (unscored), the judge's last ``reply``
    verbatim, ``attempts`` (prompts the judge answered: 1, or 2 after the stricter retry; 0 with
    no judge) and ``error`` (why a request failed, one line; "" if none did)."""

    score: int | None
    reply: str
    attempts: int
    error: str = ""


def _in_range(text: str) -> int | None:
    value = float(text.replace("\u2212", "-"))
    return int(round(value)) if 0 <= value <= 100 else None


def parse_score(text: str | None) -> int | None:
    """Return the score 0..100 the judge gave in ``text`` (decimals rounded), or None (unscored).

    An explicit score wins, the last one if several: ``"Score: N"`` (any case, also
    ``"score of N"``, ``"score is N"``) or ``"N/100"`` / ``"N out of 100"``. Otherwise the reply
    must hold one number (repeats of the same number count once). A negative number, one above
    100 or a score on another scale (``"Score: 7/10"``) is unscored:
    ``"1. The response is poor. Score: 20" -> 20``, ``"I'd say 85 points" -> 85``,
    ``"-5" -> None``, ``"Score: -10" -> None``, ``"80 or 90" -> None``.
    """
    text = text or ""
    explicit = [(m.start(), m.group("n"), m.group("d")) for m in _EXPLICIT.finditer(text)]
    explicit += [(m.start(), m.group("n"), None) for m in _OUT_OF_100.finditer(text)]
    if explicit:
        _, number, scale = max(explicit, key=lambda e: e[0])
        return _in_range(number) if scale in (None, "100") else None
    numbers = {float(n.replace("\u2212", "-")) for n in _NUMBER.findall(text)}
    if len(numbers) != 1:
        return None
    return _in_range(str(numbers.pop()))


def base_url(cfg: JudgeParams) -> str:
    """Return the judge's URL without a trailing slash (and without ``/v1`` for the OpenAI API)."""
    url = cfg.url.rstrip("/")
    return url.removesuffix("/v1") if cfg.api == "openai" else url


def endpoint(cfg: JudgeParams) -> str:
    """Return the chat endpoint the judge is asked at."""
    return f"{base_url(cfg)}/api/chat" if cfg.api == "ollama" else f"{base_url(cfg)}/v1/chat/completions"


def judge_prompt(record: dict, template: str | None = None, index: int | None = None) -> str:
    """Return the judge prompt of one record: ``template`` (None: :data:`DEFAULT_PROMPT`) filled from the record."""
    template = DEFAULT_PROMPT if template is None else template
    instruction, input_ = str(record.get("instruction", "")), str(record.get("input", "") or "")
    shown = format_prompt(instruction, input_).removesuffix(_RESPONSE_MARK)
    return template.format(prompt=shown, instruction=instruction, input=input_, output=str(record.get("output", "")), response=response_of(record, index))


def _payload(cfg: JudgeParams, content: str) -> dict:
    messages = [{"role": "user", "content": content}]
    if cfg.api == "ollama":
        options: dict = {"seed": cfg.seed, "temperature": cfg.temperature, "num_ctx": cfg.num_ctx}
        if cfg.max_tokens is not None:
            options["num_predict"] = cfg.max_tokens
        return {"model": cfg.model, "messages": messages, "stream": False, "options": options}
    payload: dict = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature, "seed": cfg.seed, "stream": False}
    if cfg.max_tokens is not None:  # the newer name too: litgpt serve reads only max_completion_tokens
        payload["max_tokens"] = payload["max_completion_tokens"] = cfg.max_tokens
    return payload


def _reply_text(cfg: JudgeParams, data: object) -> str:
    try:
        if cfg.api == "ollama":
            return str(data["message"]["content"] or "")  # type: ignore[index]
        return str(data["choices"][0]["message"]["content"] or "")  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        shape = "message.content" if cfg.api == "ollama" else "choices[0].message.content"
        raise GptlabError(f"judge {endpoint(cfg)} answered JSON without {shape}: {str(data)[:200]!r}; is api={cfg.api} right for this server?") from None


def _headers(cfg: JudgeParams) -> dict[str, str]:
    key = os.environ.get(API_KEY_ENV, "") if cfg.api == "openai" else ""  # read at request time, never stored
    return {"Authorization": f"Bearer {key}"} if key else {}


def _client(cfg: JudgeParams) -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 10.0)), headers=_headers(cfg))


def ask(client: httpx.Client, cfg: JudgeParams, content: str) -> str:
    """Return the judge's reply text to one user message, retrying transient failures.

    Connection errors, timeouts, 429 and 5xx are retried ``cfg.retries`` times with backoff
    ``cfg.backoff_s * 2**n`` seconds; anything else, or the last failure, raises GptlabError.
    """
    problem = ""
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        try:
            resp = client.post(endpoint(cfg), json=_payload(cfg, content))
        except httpx.HTTPError as e:  # connection errors, timeouts, broken replies
            problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        if resp.status_code == 429 or resp.status_code >= 500:
            problem = f"HTTP {resp.status_code}: {resp.text[:200]}"
            continue
        if resp.status_code >= 400:
            raise GptlabError(
                f"judge {endpoint(cfg)} refused the request: HTTP {resp.status_code}: {resp.text[:300]}; check judge model={cfg.model!r} and api={cfg.api}"
            )
        try:
            data = resp.json()
        except ValueError:
            raise GptlabError(f"judge {endpoint(cfg)} answered HTTP {resp.status_code} without JSON: {resp.text[:200]!r}") from None
        return _reply_text(cfg, data)
    raise GptlabError(f"judge {endpoint(cfg)} failed {cfg.retries + 1} times, last: {problem}; is the judge overloaded or down?")


def judge_one(client: httpx.Client, cfg: JudgeParams, record: dict, index: int | None = None) -> JudgeResult:
    """Return the verdict on one record: one prompt, plus one stricter prompt if no score came back.

    A request that fails (after its retries) gives an unscored result whose ``error`` says why.
    """
    prompt = judge_prompt(record, cfg.prompt, index)
    reply, attempts = "", 0
    try:
        reply, attempts = ask(client, cfg, prompt), 1
        score = parse_score(reply)
        if score is not None:
            return JudgeResult(score, reply, 1)
        reply, attempts = ask(client, cfg, prompt + DEFAULT_STRICT_SUFFIX), 2
    except GptlabError as e:
        return JudgeResult(None, reply, attempts, str(e).replace("\n", " "))
    return JudgeResult(parse_score(reply), reply, 2)


def _names(data: object, key: str, field: str) -> list[str]:
    try:
        return [str(m[field]) for m in data[key]]  # type: ignore[index]
    except (KeyError, TypeError):
        return []


def check_reachable(cfg: JudgeParams, timeout_s: float = 5.0) -> None:
    """Return None if the judge answers; else raise GptlabError with one line naming its URL.

    Ollama: ``GET {url}/api/tags`` must answer and list ``cfg.model`` (``name`` or
    ``name:latest``). OpenAI-compatible: ``GET {url}/v1/models`` must answer at all (its list is
    not checked: llama.cpp names models by file). With ``api: none`` nothing is checked.
    """
    if cfg.api == "none":
        return
    path = "/api/tags" if cfg.api == "ollama" else "/v1/models"
    url = base_url(cfg) + path
    hint = "start it (`ollama serve`)" if cfg.api == "ollama" else "start it (e.g. `gptlab serve --model DIR`)"
    try:
        resp = httpx.get(url, timeout=min(timeout_s, cfg.timeout_s), headers=_headers(cfg))
    except httpx.TransportError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GptlabError(f"judge {base_url(cfg)} is unreachable ({reason}); {hint}, correct the judge URL, or set the judge to none") from None
    if cfg.api == "openai":
        return
    if resp.status_code != 200:
        raise GptlabError(f"judge {url} answered HTTP {resp.status_code}; is {base_url(cfg)} an Ollama server? otherwise set api: openai")
    try:
        names = _names(resp.json(), "models", "name")
    except ValueError:
        names = []
    wanted = {cfg.model, f"{cfg.model}:latest"}
    if not wanted & set(names) and not wanted & {n.removesuffix(":latest") for n in names}:
        raise GptlabError(
            f"judge {base_url(cfg)} has no model {cfg.model!r} (it has {', '.join(names) or 'none'}); run `ollama pull {cfg.model}` or name one of those as the judge model"
        )


def judge_records(records: list[dict], cfg: JudgeParams, check: bool = True) -> list[JudgeResult]:
    """Return one :class:`JudgeResult` per record, in order.

    With ``api: none`` every result is unscored with ``attempts`` 0 and nothing is contacted.
    Otherwise :func:`check_reachable` runs first (unless ``check`` is False), then up to
    ``cfg.concurrency`` requests are in flight at once, under a progress bar. A request that
    still fails after its retries leaves its record unscored with ``error`` set; the others go on.
    """
    if cfg.api == "none":
        return [JudgeResult(None, "", 0) for _ in records]
    for i, record in enumerate(records):
        judge_prompt(record, cfg.prompt, i)  # fail on a malformed record before any request
    if check:
        check_reachable(cfg)
    results: list[JudgeResult | None] = [None] * len(records)
    with _client(cfg) as client, ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="judge") as pool:
        futures = {pool.submit(judge_one, client, cfg, r, i): i for i, r in enumerate(records)}
        try:
            with progress(total=len(records), desc=f"judge {cfg.model}", unit="record") as bar:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results  # type: ignore[return-value]
