"""A fake LLM judge for the score tests: a FastAPI app speaking the Ollama and OpenAI chat APIs."""

import threading

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse


def fake_judge(reply):
    """A judge speaking both APIs; ``reply(n, body) -> (status, text)`` for the n-th chat request."""
    app = FastAPI()
    app.state.seen = []
    app.state.auth = []
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
    def openai(request: Request, body: dict = Body(...)):
        app.state.auth.append(request.headers.get("authorization"))
        status, text = answer(body)
        if status != 200:
            return JSONResponse({"error": {"message": text}}, status_code=status)
        return {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    return app
