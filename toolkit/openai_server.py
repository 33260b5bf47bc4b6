"""A minimal OpenAI-compatible chat-completions server (FastAPI) over a local model.

It lets a local Hugging Face model act as the ragas judge through the same HTTP
path as any hosted endpoint, and it is what the judge tests talk to on loopback.
Only what an evaluation client needs: POST /v1/chat/completions (n, temperature,
max_tokens, stop; usage counts) and GET /v1/models.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Any, Callable

from pydantic import BaseModel

# (messages, n, temperature, max_tokens, stop) -> [(text, prompt_tokens, completion_tokens)]
Backend = Callable[[list[dict], int, float, int, list[str]], list[tuple[str, int, int]]]


class ServerClosing(RuntimeError):
    """The server is shutting down: a queued request is refused (HTTP 503)."""


class SerialBackend:
    """Runs one completion at a time (the model is not re-entrant). close() refuses queued
    requests and waits for the one in flight: a daemon thread still inside torch when the
    interpreter exits aborts the whole process ("terminate called without an active
    exception"), and a client that timed out leaves requests queued behind it."""

    def __init__(self, complete: Backend):
        self._complete, self._lock, self._closed = complete, threading.Lock(), threading.Event()

    def __call__(self, messages, n, temperature, max_tokens, stop):
        if self._closed.is_set():
            raise ServerClosing()
        with self._lock:
            if self._closed.is_set():
                raise ServerClosing()
            return self._complete(messages, n, temperature, max_tokens, stop)

    def close(self, timeout: float = 600) -> None:
        self._closed.set()
        if self._lock.acquire(timeout=timeout):
            self._lock.release()


def generator_backend(generator) -> SerialBackend:
    """Serve a toolkit.generation.Generator, one request at a time."""

    def complete(messages, n, temperature, max_tokens, stop):
        cfg = generator.cfg.model_copy(update={"temperature": temperature, "max_new_tokens": max_tokens,
                                               "stop": stop, "batch_size": max(1, n)})
        from toolkit.generation import Generator
        g = Generator(cfg, generator.model, generator.tokenizer, generator.ref, generator.device)
        outs = g.generate([messages] * n, description="judge")
        return [(o.text, o.prompt_tokens, o.completion_tokens) for o in outs]

    return SerialBackend(complete)


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[dict[str, Any]]
    n: int = 1
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None


def create_app(backend: Backend, model_name: str):
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="adaptbench local model")

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "adaptbench"}]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):  # a plain def: FastAPI runs it in a worker thread
        if not req.messages:
            raise HTTPException(400, "messages must not be empty")
        msgs = [{"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in req.messages]
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        try:
            outs = backend(msgs, max(1, min(req.n, 16)), float(req.temperature or 0.0),
                           int(req.max_completion_tokens or req.max_tokens or 256), stop)
        except ServerClosing:
            raise HTTPException(503, "the server is shutting down") from None
        prompt_tokens = outs[0][1] if outs else 0
        completion_tokens = sum(o[2] for o in outs)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": req.model or model_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                            for i, (text, _, _) in enumerate(outs)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    return app


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


class LoopbackServer:
    """Runs an app with uvicorn in a background thread on 127.0.0.1 and a free port."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the loopback model server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
