"""An LLM judge over HTTP: score each response 0..100 against the reference output.

Two APIs, chosen by :attr:`JudgeConfig.api`:

- ``ollama``: ``POST {url}/api/chat`` with ``model``, ``messages``, ``stream: false`` and
  ``options`` ``{seed, temperature, num_ctx[, num_predict]}``; the reply is ``message.content``;
- ``openai``: ``POST {url}/v1/chat/completions`` (vLLM, llama.cpp server, ``gptlab serve``);
  the reply is ``choices[0].message.content``.

The score is the first integer 0..100 in the reply (:func:`parse_score`). A reply without one
is asked again once with a stricter prompt; if that fails too the record is *unscored*
(``score`` None, never 0). Connection errors, timeouts, 429 and 5xx are retried with
exponential backoff; other 4xx fail at once. :func:`check_reachable` runs first, so an absent
judge fails in a second with one line naming its URL.
"""

from __future__ import annotations

import os
import re
import string
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Literal

import httpx

from gptlab.data.instructions import format_prompt
from gptlab.errors import GptlabError
from gptlab.progress import progress
from gptlab.score.metrics import response_of

DEFAULT_PROMPT = (
    "Given the input `{prompt}` and correct output `{output}`, score the model response `{response}` "
    "on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
)
DEFAULT_STRICT_SUFFIX = "\n\nYour previous answer contained no number. Reply with a single integer from 0 to 100 and nothing else: no words, no punctuation."
PLACEHOLDERS = ("prompt", "instruction", "input", "output", "response")
_RESPONSE_MARK = "\n\n### Response:\n"
_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge lives and how to ask it.

    ``prompt`` is a ``str.format`` template over ``{prompt}`` (the instruction and input as the
    model saw them, without the response marker), ``{instruction}``, ``{input}``, ``{output}``
    (the reference) and ``{response}``. ``strict_suffix`` is appended for the one retry of a
    reply without a number. ``timeout_s``: per request, seconds. ``retries``: extra tries of a
    request after a connection error, timeout, 429 or 5xx, waiting ``backoff_s * 2**n`` seconds.
    ``concurrency``: requests in flight at once. ``max_tokens``: cap on the reply length (None:
    the server's default). ``api_key_env``: environment variable whose value, when set, is sent
    as ``Authorization: Bearer`` (OpenAI-compatible servers that need a key).
    """

    api: Literal["ollama", "openai", "none"] = "none"
    url: str = "http://127.0.0.1:11434"
    model: str = "llama3"
    prompt: str = DEFAULT_PROMPT
    strict_suffix: str = DEFAULT_STRICT_SUFFIX
    temperature: float = 0.0
    seed: int = 123
    num_ctx: int = 2048
    max_tokens: int | None = None
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0
    concurrency: int = 4
    api_key_env: str = "OPENAI_API_KEY"

    def __post_init__(self) -> None:
        if self.api not in ("ollama", "openai", "none"):
            raise GptlabError(f"judge api={self.api!r} is unknown; choose ollama, openai or none")
        if self.api != "none" and not self.url.startswith(("http://", "https://")):
            raise GptlabError(f"judge url={self.url!r} is not an http(s) URL; e.g. http://127.0.0.1:11434")
        for name in ("timeout_s", "concurrency"):
            if getattr(self, name) <= 0:
                raise GptlabError(f"judge {name}={getattr(self, name)} is impossible: must be > 0")
        if self.retries < 0 or self.backoff_s < 0 or self.temperature < 0:
            raise GptlabError("judge retries, backoff_s and temperature must be >= 0")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise GptlabError(f"judge max_tokens={self.max_tokens} is impossible: must be >= 1 (or None)")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f is not None}
        except ValueError as e:
            raise GptlabError(f"judge prompt is not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
        unknown = sorted(fields - set(PLACEHOLDERS))
        if unknown:
            raise GptlabError(f"judge prompt uses unknown placeholders {unknown}; allowed: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")

    @property
    def base_url(self) -> str:
        """The URL without a trailing slash (and without ``/v1`` for the OpenAI API)."""
        url = self.url.rstrip("/")
        return url.removesuffix("/v1") if self.api == "openai" else url

    @property
    def endpoint(self) -> str:
        """The chat endpoint the judge is asked at."""
        return f"{self.base_url}/api/chat" if self.api == "ollama" else f"{self.base_url}/v1/chat/completions"


@dataclass(frozen=True)
class JudgeResult:
    """One record's verdict: ``score`` 0..100 or None (unscored), the judge's last ``reply``
    verbatim, and ``attempts`` (prompts sent: 1, or 2 after the stricter retry; 0 with no judge)."""

    score: int | None
    reply: str
    attempts: int


def parse_score(text: str | None) -> int | None:
    """Return the first number 0..100 in ``text`` as an int (decimals rounded), or None.

    Numbers outside 0..100 (``2024``) are skipped: ``"I'd say 85 points" -> 85``,
    ``"Score: 7/10"`` -> 7, ``"none"`` -> None.
    """
    for match in _NUMBER.finditer(text or ""):
        value = float(match.group())
        if 0 <= value <= 100:
            return int(round(value))
    return None


def judge_prompt(record: dict, template: str = DEFAULT_PROMPT, index: int | None = None) -> str:
    """Return the judge prompt of one record: ``template`` filled from the record."""
    instruction, input_ = str(record.get("instruction", "")), str(record.get("input", "") or "")
    shown = format_prompt(instruction, input_).removesuffix(_RESPONSE_MARK)
    return template.format(prompt=shown, instruction=instruction, input=input_, output=str(record.get("output", "")), response=response_of(record, index))


def _payload(cfg: JudgeConfig, content: str) -> dict:
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


def _reply_text(cfg: JudgeConfig, data: object) -> str:
    try:
        if cfg.api == "ollama":
            return str(data["message"]["content"] or "")  # type: ignore[index]
        return str(data["choices"][0]["message"]["content"] or "")  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        shape = "message.content" if cfg.api == "ollama" else "choices[0].message.content"
        raise GptlabError(f"judge {cfg.endpoint} answered JSON without {shape}: {str(data)[:200]!r}; is api={cfg.api} right for this server?") from None


def _headers(cfg: JudgeConfig) -> dict[str, str]:
    key = os.environ.get(cfg.api_key_env, "") if cfg.api == "openai" and cfg.api_key_env else ""
    return {"Authorization": f"Bearer {key}"} if key else {}


def _client(cfg: JudgeConfig) -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 10.0)), headers=_headers(cfg))


def ask(client: httpx.Client, cfg: JudgeConfig, content: str) -> str:
    """Return the judge's reply text to one user message, retrying transient failures.

    Connection errors, timeouts, 429 and 5xx are retried ``cfg.retries`` times with backoff
    ``cfg.backoff_s * 2**n`` seconds; anything else, or the last failure, raises GptlabError.
    """
    problem = ""
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        try:
            resp = client.post(cfg.endpoint, json=_payload(cfg, content))
        except httpx.TransportError as e:
            problem = f"{type(e).__name__}: {e}"
            continue
        if resp.status_code == 429 or resp.status_code >= 500:
            problem = f"HTTP {resp.status_code}: {resp.text[:200]}"
            continue
        if resp.status_code >= 400:
            raise GptlabError(
                f"judge {cfg.endpoint} refused the request: HTTP {resp.status_code}: {resp.text[:300]}; check judge model={cfg.model!r} and api={cfg.api}"
            )
        try:
            data = resp.json()
        except ValueError:
            raise GptlabError(f"judge {cfg.endpoint} answered HTTP {resp.status_code} without JSON: {resp.text[:200]!r}") from None
        return _reply_text(cfg, data)
    raise GptlabError(f"judge {cfg.endpoint} failed {cfg.retries + 1} times, last: {problem}; is the judge overloaded or down?")


def judge_one(client: httpx.Client, cfg: JudgeConfig, record: dict, index: int | None = None) -> JudgeResult:
    """Return the verdict on one record: one prompt, plus one stricter prompt if no number came back."""
    prompt = judge_prompt(record, cfg.prompt, index)
    reply = ask(client, cfg, prompt)
    score = parse_score(reply)
    if score is not None:
        return JudgeResult(score, reply, 1)
    reply = ask(client, cfg, prompt + cfg.strict_suffix)
    return JudgeResult(parse_score(reply), reply, 2)


def _names(data: object, key: str, field: str) -> list[str]:
    try:
        return [str(m[field]) for m in data[key]]  # type: ignore[index]
    except (KeyError, TypeError):
        return []


def check_reachable(cfg: JudgeConfig, timeout_s: float = 5.0) -> None:
    """Return None if the judge answers; else raise GptlabError with one line naming its URL.

    Ollama: ``GET {url}/api/tags`` must answer and list ``cfg.model`` (``name`` or
    ``name:latest``). OpenAI-compatible: ``GET {url}/v1/models`` must answer at all (its list is
    not checked: llama.cpp names models by file). With ``api: none`` nothing is checked.
    """
    if cfg.api == "none":
        return
    path = "/api/tags" if cfg.api == "ollama" else "/v1/models"
    url = cfg.base_url + path
    hint = "start it (`ollama serve`)" if cfg.api == "ollama" else "start it (e.g. `gptlab serve --model DIR`)"
    try:
        resp = httpx.get(url, timeout=min(timeout_s, cfg.timeout_s), headers=_headers(cfg))
    except httpx.TransportError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GptlabError(f"judge {cfg.base_url} is unreachable ({reason}); {hint}, correct the judge URL, or set the judge to none") from None
    if cfg.api == "openai":
        return
    if resp.status_code != 200:
        raise GptlabError(f"judge {url} answered HTTP {resp.status_code}; is {cfg.base_url} an Ollama server? otherwise set api: openai")
    try:
        names = _names(resp.json(), "models", "name")
    except ValueError:
        names = []
    wanted = {cfg.model, f"{cfg.model}:latest"}
    if not wanted & set(names) and not wanted & {n.removesuffix(":latest") for n in names}:
        raise GptlabError(
            f"judge {cfg.base_url} has no model {cfg.model!r} (it has {', '.join(names) or 'none'}); run `ollama pull {cfg.model}` or name one of those as the judge model"
        )


def judge_records(records: list[dict], cfg: JudgeConfig, check: bool = True) -> list[JudgeResult]:
    """Return one :class:`JudgeResult` per record, in order.

    With ``api: none`` every result is unscored with ``attempts`` 0 and nothing is contacted.
    Otherwise :func:`check_reachable` runs first (unless ``check`` is False), then up to
    ``cfg.concurrency`` requests are in flight at once, under a progress bar. A request that
    still fails after its retries raises GptlabError (the remaining ones are cancelled).
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
