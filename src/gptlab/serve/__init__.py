"""HTTP server for a gptlab model, speaking Ollama's and OpenAI's APIs (FastAPI + uvicorn).

Modules: :mod:`~gptlab.serve.engine` (model, tokenizer, the batching scheduler; no HTTP),
:mod:`~gptlab.serve.prompts` (chat messages -> prompt: the tokenizer's chat template or the
instruction style), :mod:`~gptlab.serve.ollama` and :mod:`~gptlab.serve.openai` (one router
per API dialect, typed request models), :mod:`~gptlab.serve.guard` (Host/Origin checks),
:mod:`~gptlab.serve.app` (``create_app``, ``build_app``, ``running_server``, ``serve``).

FastAPI and uvicorn are the ``serve`` extra: without them, importing this package raises
:class:`~gptlab.errors.GptlabError` saying ``pip install 'gptlab[serve]'``.
"""

from gptlab.errors import GptlabError

try:  # the optional dependencies of the server (the `serve` extra)
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:
    raise GptlabError(f"gptlab serve needs {e.name or 'fastapi and uvicorn'}, which is not installed; install it with: pip install 'gptlab[serve]'") from None

from gptlab.serve.app import build_app, create_app, running_server, serve
from gptlab.serve.common import DEFAULT_MAX_BODY_BYTES
from gptlab.serve.engine import DEFAULT_MAX_TOKENS_LIMIT, Completion, Engine
from gptlab.serve.errors import ApiError
from gptlab.serve.prompts import ChatMessage, Prompt, chat_prompt, prompt_builder

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_TOKENS_LIMIT",
    "ApiError",
    "ChatMessage",
    "Completion",
    "Engine",
    "Prompt",
    "build_app",
    "chat_prompt",
    "create_app",
    "prompt_builder",
    "running_server",
    "serve",
]
