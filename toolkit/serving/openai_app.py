"""An OpenAI-compatible server (FastAPI) in front of a local model.

It is `adaptbench serve --model`, the HTTP path by which a local judge is called like any
hosted one, and what the `openai` backend's tests talk to on loopback:
  GET  /v1/models
  POST /v1/chat/completions   messages, n, temperature, max_tokens, stop, seed; usage counts
  POST /v1/completions        prompt (text or list), echo, logprobs (prompt log-probabilities,
                              as vLLM and llama.cpp return them), max_tokens (0 with echo)
Concurrent requests are answered together: the engine collects what arrives within 25 ms
(up to `max_batch`) into one left-padded batch. On a busy 2-core machine a client needs
that long to turn one answer into its next request: with a 5 ms window, 8 concurrent
clients made batches of 4 on average; with 25 ms, of 8 (benchmarks/generation_throughput.py).
"""

from __future__ import annotations

import hmac
import json
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

from pydantic import BaseModel, Field


class ServerClosing(RuntimeError):
    """The server is shutting down: a queued request is refused (HTTP 503)."""


class QueueFull(RuntimeError):
    """More requests wait than the server takes (HTTP 429)."""


LOGPROBS = "logprobs"     # the queue key's head of prompt log-probability requests
CALL = object()           # the queue key's head of work run on the engine's thread


class Engine:
    """Answers requests for one toolkit.backends.generation.Generator from one worker thread (the
    model is not re-entrant), batching the requests that wait. close() refuses queued
    requests and waits for the batch in flight: a daemon thread still inside torch when the
    interpreter exits aborts the whole process ("terminate called without an active
    exception"), and a client that timed out leaves requests queued behind it.

    With `background=False` the caller runs the loop itself (`run`), on the main thread:
    torch's CPU kernels ran 25-40% slower from a second thread on a 2-core machine (OpenMP
    thread teams), so `adaptbench serve` answers on the main thread and serves HTTP from
    another."""

    def __init__(self, generator=None, *, max_batch: int = 16, max_wait_ms: float = 25.0, background: bool = True,
                 max_queue: int = 0, on_batch=None):
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_queue = max_queue  # > 0: more waiting requests than this are refused (HTTP 429)
        self.on_batch = on_batch    # called with each batch's size (Prometheus)
        self.generators: list = []
        self.generator = generator
        if generator is not None:
            self.add(generator)
        self._q: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._model = threading.Lock()
        self.batches: list[int] = []  # sizes of the batches run (tests, benchmarks)
        self._worker = None
        if background:
            self._worker = threading.Thread(target=self.run, daemon=True, name="engine")
            self._worker.start()

    def add(self, generator) -> int:
        """Answer for another model too (an arm's merged adapter); its key for requests.
        Arms that share a model share its key, so their requests batch together."""
        for i, g in enumerate(self.generators):
            if g is generator:
                return i
        self.generators.append(generator)
        return len(self.generators) - 1

    # requests
    def __call__(self, messages, n, temperature, max_tokens, stop, seed=None, key: int = 0) -> list[tuple[str, int, int]]:
        """Chat completions: n answers to one conversation (from model `key`, see add)."""
        from toolkit.backends import Settings
        settings = Settings(max_tokens, tuple(stop), temperature, seed)
        return self._wait([self.generate(key, messages, settings) for _ in range(n)])

    def complete(self, prompt: str, n, temperature, max_tokens, stop, seed=None, key: int = 0) -> list[tuple[str, int, int]]:
        """Text completions of a prompt that is already rendered."""
        if max_tokens == 0:
            return [("", self.count_tokens(prompt), 0)] * n
        return self(prompt, n, temperature, max_tokens, stop, seed, key)

    def generate(self, key: int, prompt, settings, on_text=None) -> Future:
        """One answer from model `key` (see add) with toolkit.backends.Settings; the future's
        result is (text, prompt tokens, completion tokens); its `queue_s` says how long it
        waited for its batch. `on_text(piece)` streams the answer as it is generated."""
        return self._submit(prompt, (key, settings.max_tokens, tuple(settings.stop), settings.temperature, settings.seed),
                            on_text=on_text)

    def call(self, fn) -> Future:
        """Run fn() on the engine's thread, between batches (work that needs the model alone,
        e.g. scoring every label of a likelihood classifier)."""
        return self._submit(fn, (CALL, id(fn)))

    def prompt_logprobs(self, text: str, key: int = 0) -> dict:
        """Token log-probabilities of a text and its greedy next token (batched with others)."""
        return self.prompt_logprobs_many([text], key)[0]

    def prompt_logprobs_many(self, texts: list[str], key: int = 0) -> list[dict]:
        return [f.result() for f in [self._submit(t, (LOGPROBS, key)) for t in texts]]

    def count_tokens(self, text: str) -> int:
        return len(self.generators[0].tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def waiting(self) -> int:
        return self._q.qsize()

    def _submit(self, prompt, settings, on_text=None) -> Future:
        if self._closed.is_set():
            raise ServerClosing()
        if self.max_queue and self._q.qsize() >= self.max_queue:
            raise QueueFull()
        f: Future = Future()
        f.queued_at = time.perf_counter()  # type: ignore[attr-defined]
        f.queue_s = 0.0  # type: ignore[attr-defined]
        f.on_text = on_text  # type: ignore[attr-defined]
        self._q.put((prompt, settings, f))
        return f

    @staticmethod
    def _wait(futures: list[Future]) -> list[tuple[str, int, int]]:
        return [f.result() for f in futures]

    # the worker
    def run(self, until=None) -> None:
        """Answer queued requests until close() (or until `until()` is true)."""
        from toolkit.backends import Settings
        while not self._closed.is_set() and not (until and until()):
            try:
                batch = [self._q.get(timeout=0.1)]
            except queue.Empty:
                continue
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - time.perf_counter()
                try:
                    batch.append(self._q.get(timeout=left) if left > 0 else self._q.get_nowait())
                except queue.Empty:
                    break
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault(item[1], []).append(item)
            for key, items in groups.items():
                started = time.perf_counter()
                for _, _, f in items:
                    f.queue_s = started - f.queued_at
                try:
                    with self._model:
                        if key[0] == LOGPROBS:
                            results = self.generators[key[1]].prompt_logprobs([p for p, _, _ in items])
                        elif key[0] is CALL:
                            results = [fn() for fn, _, _ in items]
                        else:
                            gen, max_tokens, stop, temperature, seed = key
                            streams = [getattr(f, "on_text", None) for _, _, f in items]
                            extra = {"streams": streams} if any(streams) else {}
                            results = [(g.text, g.prompt_tokens, g.completion_tokens) for g in self.generators[gen].generate(
                                [p for p, _, _ in items], description=None,
                                settings=Settings(max_tokens, stop, temperature, seed), **extra)]
                    if key[0] is not CALL:
                        self.batches.append(len(items))
                        if self.on_batch is not None:
                            self.on_batch(len(items))
                    for (_, _, f), r in zip(items, results):
                        f.set_result(r)
                except BaseException as e:  # the callers get the error; the worker goes on
                    for _, _, f in items:
                        if not f.done():
                            f.set_exception(e if isinstance(e, Exception) else ServerClosing())
                    if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit
                        raise
        if self._closed.is_set():
            self._refuse_queued()

    def _refuse_queued(self) -> None:
        while True:
            try:
                _, _, f = self._q.get_nowait()
            except queue.Empty:
                return
            f.set_exception(ServerClosing())

    def close(self, timeout: float = 600) -> None:
        self._closed.set()
        if self._worker is not None:
            self._worker.join(timeout)
        self._refuse_queued()


def generator_backend(generator, **kw) -> Engine:
    """Serve a toolkit.backends.generation.Generator."""
    return Engine(generator, **kw)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[dict[str, Any]]
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionRequest(BaseModel):
    model: str | None = None
    prompt: str | list[str]
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


MAX_TOKENS_CAP = 4096          # no request generates more than this
MAX_BODY_BYTES = 1 << 20       # a request body over 1 MiB is refused (413)
OPEN_PATHS = ("/healthz",)     # answered without the API key (load balancers, liveness probes)
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/feedback", "/metrics", "/healthz")


def error_body(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None, headers=None):
    from fastapi.responses import JSONResponse
    return JSONResponse(error_body(status, message, kind, param, code), status_code=status, headers=headers)


class Guard:
    """ASGI middleware in front of every route: bearer-token auth (constant-time compare),
    the body-size cap, and the Prometheus request counter by arm and status. Written as
    plain ASGI rather than a Starlette BaseHTTPMiddleware so an oversized body is refused
    without being read, and a chunked one without being read past the cap."""

    def __init__(self, app, *, api_key: str | None, max_body: int, metrics=None, model: str = ""):
        self.app, self.max_body, self.metrics, self.model = app, max_body, metrics, model
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_seen(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self._guarded(scope, receive, send_seen)
        finally:
            if self.metrics is not None and scope["path"].startswith("/v1/"):
                path = scope["path"] if scope["path"] in ENDPOINTS else "other"
                arm = (scope.get("state") or {}).get("arm", self.model)
                self.metrics.requests.labels(arm=arm, endpoint=path, status=str(status["code"])).inc()

    async def _guarded(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        if self.key is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.key):
                return await _send_json(send, 401, error_body(
                    401, "Incorrect API key provided: send `Authorization: Bearer KEY` with the server's key",
                    "invalid_request_error", None, "invalid_api_key"))
        declared = headers.get(b"content-length")
        too_big = error_body(413, f"the request body is over {self.max_body} bytes", "invalid_request_error",
                             None, "request_too_large")
        if declared is not None:
            try:
                if int(declared) > self.max_body:
                    return await _send_json(send, 413, too_big)
            except ValueError:
                return await _send_json(send, 400, error_body(400, "bad Content-Length", "invalid_request_error"))
            return await self.app(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # a chunked body: read it up to the cap, then hand it on
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            size += len(msg.get("body", b""))
            if size > self.max_body:
                return await _send_json(send, 413, too_big)
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        done = False

        async def replay():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _send_json(send, status: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def sse_stream(*, chat: bool, rid: str, model: str, answer, finish, include_usage: bool, extra: dict | None = None,
               on_done=None):
    """Server-sent events as OpenAI streams them: a first chunk (the role), a chunk per piece of
    answer as the batch generates it, a last chunk with the finish reason, usage if asked,
    then [DONE]. `answer(on_text)` runs on its own thread and returns its result, from which
    `finish(result)` gives (finish reason, prompt tokens, completion tokens); `on_done(result)`
    runs before the last chunk goes out (the prediction log's commit)."""
    from fastapi.responses import StreamingResponse

    pieces: queue.Queue = queue.Queue()
    created, obj = int(time.time()), "chat.completion.chunk" if chat else "text_completion"
    result: dict[str, Any] = {}

    def chunk(delta, finish_reason=None, usage=None, tagged=False) -> str:
        choice = ({"index": 0, "delta": delta or {}, "finish_reason": finish_reason} if chat else
                  {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish_reason})
        body: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model,
                                "choices": [] if usage else [choice]}
        if usage:
            body["usage"] = usage
        if tagged and extra is not None:
            body["adaptbench"] = extra
        return f"data: {json.dumps(body)}\n\n"

    def work():
        try:
            result["answer"] = answer(pieces.put)
        except BaseException as e:  # handed to the stream
            result["error"] = e
        pieces.put(None)

    def events():
        threading.Thread(target=work, daemon=True).start()
        yield chunk({"role": "assistant", "content": ""} if chat else "", tagged=True)
        while (piece := pieces.get()) is not None:
            yield chunk({"content": piece} if chat else piece)
        if "error" in result:
            err = result["error"]
            message = "the server is shutting down" if isinstance(err, ServerClosing) else type(err).__name__
            yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
            return
        if on_done is not None:
            on_done(result["answer"])
        reason, pt, ct = finish(result["answer"])
        yield chunk({} if chat else "", finish_reason=reason, tagged=True)
        if include_usage:
            yield chunk(None, usage={"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def base_app(*, title: str, description: str, api_key: str | None = None, metrics=None,
             max_body: int = MAX_BODY_BYTES, model: str = ""):
    """A FastAPI app whose every error is OpenAI's error JSON, with /healthz, /metrics (when
    `metrics` is given) and the Guard in front."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    app = FastAPI(title=title, description=description)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return _error(400, "We could not parse the JSON body of your request: it is not valid JSON",
                          "invalid_request_error")
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return _error(400, f"{param or 'request body'}: {first.get('msg', 'invalid request')}",
                      "invalid_request_error", param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        import traceback
        traceback.print_exc()
        return _error(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    if metrics is not None:
        @app.get("/metrics")
        def prometheus():
            from toolkit.serving.metrics import CONTENT_TYPE_LATEST
            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Guard, api_key=api_key, max_body=max_body, metrics=metrics, model=model)
    return app


def create_app(backend, model_name: str, *, api_key: str | None = None, metrics=None, models: dict | None = None,
               finetuning=None):
    """`backend` answers chat requests as `backend(messages, n, temperature, max_tokens, stop)`
    and, where it has them, `complete(...)` and `prompt_logprobs(text)` (an Engine has both).
    `models` maps further model names to Engine keys (fine-tuned models, added while it runs);
    `finetuning` (toolkit.serving.finetuning.FineTuning) adds OpenAI's files and fine-tuning
    routes. Errors come back as OpenAI's error JSON."""
    app = base_app(title="adaptbench", description="An OpenAI-compatible API in front of a local model.",
                   api_key=api_key, metrics=metrics, model=model_name)
    served = models if models is not None else {}
    if finetuning is not None:
        from toolkit.serving import finetuning as ft_routes
        ft_routes.install(app, finetuning)

    def kw(model):  # the Engine key of a fine-tuned model; the base model needs none
        return {"key": served[model]} if model in served else {}

    def limits(max_tokens, stream, n=1):
        if max_tokens is not None and max_tokens > MAX_TOKENS_CAP:
            return _error(400, f"max_tokens is {max_tokens}; this server generates at most {MAX_TOKENS_CAP}",
                          "invalid_request_error", "max_tokens")
        if stream and not hasattr(backend, "generate"):
            return _error(400, "this server does not stream", "invalid_request_error", "stream")
        if stream and n > 1:
            return _error(400, "stream: true answers with one choice (n: 1)", "invalid_request_error", "n")
        return None

    def streamed(chat: bool, model, prompt, max_tokens, req):
        from toolkit.backends import Settings
        settings = Settings(max_tokens, tuple(stops(req.stop)), float(req.temperature or 0.0), req.seed)
        key = served.get(model, 0)
        return sse_stream(chat=chat, rid=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}",
                          model=model or model_name, include_usage=bool(req.stream_options and
                                                                        req.stream_options.include_usage),
                          answer=lambda on_text: backend.generate(key, prompt, settings, on_text=on_text).result(),
                          finish=lambda r: ("length" if r[2] >= max_tokens else "stop", r[1], r[2]))

    def busy():
        return _error(429, "too many requests are waiting; retry shortly", "rate_limit_error", None,
                      "rate_limit_exceeded", headers={"Retry-After": "1"})

    def known(model: str | None):
        if model not in (None, model_name) and model not in served:
            names = ", ".join([model_name, *served])
            return _error(404, f"The model '{model}' does not exist (this server serves: {names})",
                          "invalid_request_error", "model", "model_not_found")
        return None

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "adaptbench"}
                                           for name in [model_name, *served]]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):  # a plain def: FastAPI runs it in a worker thread
        if (err := known(req.model)) is not None:
            return err
        if not req.messages:
            return _error(400, "messages must not be empty", "invalid_request_error", "messages")
        if (err := limits(req.max_completion_tokens or req.max_tokens, req.stream, req.n)) is not None:
            return err
        msgs = [{"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in req.messages]
        max_tokens = int(req.max_completion_tokens or req.max_tokens or 256)
        if req.stream:
            try:
                return streamed(True, req.model, msgs, max_tokens, req)
            except QueueFull:
                return busy()
        try:
            args = (msgs, req.n, float(req.temperature or 0.0), max_tokens, stops(req.stop))
            outs = backend(*args, req.seed, **kw(req.model)) if req.seed is not None or kw(req.model) \
                else backend(*args)
        except ServerClosing:
            return _error(503, "the server is shutting down", "server_error")
        except QueueFull:
            return busy()
        prompt_tokens = outs[0][1] if outs else 0
        completion_tokens = sum(o[2] for o in outs)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": req.model or model_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if ct >= max_tokens else "stop"}
                            for i, (text, _, ct) in enumerate(outs)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):
        if (err := known(req.model)) is not None:
            return err
        if not hasattr(backend, "complete"):
            return _error(404, "this server answers chat completions only", "invalid_request_error")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            return _error(400, "prompt must not be empty", "invalid_request_error", "prompt")
        if req.max_tokens == 0 and not req.echo:
            return _error(400, "max_tokens 0 needs echo: true", "invalid_request_error", "max_tokens")
        if (err := limits(req.max_tokens, req.stream, req.n)) is not None:
            return err
        max_tokens = req.max_tokens if req.max_tokens is not None else 16
        if req.stream:
            if len(prompts) != 1 or req.echo or req.logprobs is not None or max_tokens == 0:
                return _error(400, "stream: true takes one prompt, without echo or logprobs", "invalid_request_error",
                              "stream")
            return streamed(False, req.model, prompts[0], max_tokens, req)
        choices, usage = [], [0, 0]
        greedy = not req.temperature
        try:
            if req.echo and req.logprobs is not None and max_tokens <= 1 and greedy \
                    and hasattr(backend, "prompt_logprobs_many"):
                # a likelihood request (lm-evaluation-harness sends these): one forward pass gives the
                # prompt's log-probabilities and the greedy next token, batched with other requests
                for p, g in zip(prompts, backend.prompt_logprobs_many(prompts, **kw(req.model))):
                    add = max_tokens == 1
                    lp = {"tokens": g["tokens"] + ([g["next_token"]] if add else []),
                          "token_logprobs": g["token_logprobs"] + ([g["next_logprob"]] if add else []),
                          "text_offset": g["text_offset"] + ([len(p)] if add else []), "top_logprobs": None}
                    usage[0] += len(g["tokens"])
                    usage[1] += int(add)
                    for _ in range(req.n):
                        choices.append({"index": len(choices), "text": p + (g["next_token"] if add else ""),
                                        "logprobs": lp, "finish_reason": "length" if add else "stop"})
                prompts = []
            for p in prompts:
                outs = backend.complete(p, req.n, float(req.temperature or 0.0), max_tokens, stops(req.stop), req.seed,
                                        **kw(req.model))
                usage[0] += outs[0][1]
                for text, _, ct in outs:
                    usage[1] += ct
                    full = p + text if req.echo else text
                    lp = None
                    if req.logprobs is not None:
                        # log-probabilities of the whole text, then the part the caller sees
                        got = backend.prompt_logprobs(p + text, **kw(req.model))
                        start = 0 if req.echo else len(p)
                        keep = [i for i, off in enumerate(got["text_offset"]) if off >= start]
                        lp = {"tokens": [got["tokens"][i] for i in keep],
                              "token_logprobs": [got["token_logprobs"][i] for i in keep],
                              "text_offset": [got["text_offset"][i] - start for i in keep],
                              "top_logprobs": None}
                    choices.append({"index": len(choices), "text": full, "logprobs": lp,
                                    "finish_reason": "length" if max_tokens and ct >= max_tokens else "stop"})
        except ServerClosing:
            return _error(503, "the server is shutting down", "server_error")
        except QueueFull:
            return busy()
        return {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
                "model": req.model or model_name, "choices": choices,
                "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}

    return app


def stops(stop) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LoopbackServer:
    """Runs an app with uvicorn in a background thread on 127.0.0.1 and a free port."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
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
