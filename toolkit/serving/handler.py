"""The request path every answering endpoint shares (vLLM's OpenAIServing): resolve the target,
build and check the prompt alone (in a worker thread: retrieval and tokenising are not the
event loop's work), submit to the engine, await the answer while watching for the client
to leave, log the row, count the metrics; or stream it.

Every request that reaches a target leaves exactly one row in the prediction log, whatever
became of it: `ok`, `cancelled` (the client left; the text delivered so far), or `error`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from toolkit.backends import GenRequest
from toolkit.data import Query
from toolkit.serving.engine import Cancelled, QueueFull, ServerClosing
from toolkit.serving.log import Prediction
from toolkit.serving.protocol import ApiError, ServeContext, busy, closing

CLIENT_GONE = 499  # nginx's "client closed request": what /metrics counts for an abandoned request
DONE = object()


class Upstream(RuntimeError):
    """An arm's remote endpoint failed (HTTP 502)."""


class ClientGone(Exception):
    pass


class Handler:
    """What the chat and completion endpoints call. `targets` is a toolkit.serving.targets
    Targets; `log` a PredictionLog (or None); `metrics` a Metrics (or None)."""

    def __init__(self, targets, engine, *, limits, log=None, metrics=None, run: str | None = None):
        self.targets, self.engine, self.limits = targets, engine, limits
        self.log, self.metrics, self.run = log, metrics, run
        self._remote = ThreadPoolExecutor(8, thread_name_prefix="remote-arm")  # arms on an API: 8 calls at once
        self._remote_waiting = 0  # ... and at most limits.max_queue more waiting (429 past it)
        self._remote_lock = threading.Lock()
        if metrics is not None:
            metrics.waiting.set_function(lambda: engine.waiting)  # read at each scrape

    def close(self) -> None:
        self._remote.shutdown(wait=False, cancel_futures=True)

    # the path
    async def context(self, request: Request, req, endpoint: str) -> ServeContext:
        """Resolve and prepare a request: the target, its prompt and settings, every limit
        checked. Raises ApiError."""
        rid = f"{'chatcmpl' if endpoint == 'chat.completions' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        user = req.user or request.headers.get("x-user") or None
        target, routed = self.targets.resolve(req.model, user, rid)
        request.state.arm = target.name
        if req.stream and req.n > 1:
            raise ApiError(400, "stream: true answers with one choice (n: 1)", param="n")
        ctx = ServeContext(request_id=rid, endpoint=endpoint, asked=req.model, target=target, routed=routed,
                           user=user[:256] if user else None)
        await run_in_threadpool(target.prepare, ctx, req, self.limits)
        return ctx

    def submit(self, ctx: ServeContext, n: int, on_text=None) -> list[Future]:
        """Futures whose results are (text, prompt tokens, completion tokens) or a list of them."""
        t = ctx.target
        try:
            if t.likelihood:  # classification by the most likely label: scored on the engine's thread
                return [self.engine.call(lambda: self._most_likely(ctx, on_text))]
            if t.key is not None:
                cost = ctx.prompt_tokens + ctx.settings.max_tokens
                futures = []
                try:
                    for _ in range(n):
                        futures.append(self.engine.generate(t.key, ctx.prompt, ctx.settings, on_text=on_text,
                                                            cost=cost))
                except BaseException:
                    for f in futures:
                        self.engine.cancel(f)
                    raise
                return futures
            with self._remote_lock:
                if self.limits.max_queue and self._remote_waiting >= self.limits.max_queue:
                    raise QueueFull()
                self._remote_waiting += 1
            f = self._remote.submit(self._ask_remote, ctx, n, on_text)
            f.add_done_callback(lambda _: self._remote_done())
            return [f]
        except QueueFull:
            raise busy() from None
        except (ServerClosing, RuntimeError) as e:
            if isinstance(e, ServerClosing) or "shutdown" in str(e):
                raise closing() from None
            raise

    def _remote_done(self) -> None:
        with self._remote_lock:
            self._remote_waiting -= 1

    def _most_likely(self, ctx, on_text):
        arm = ctx.target.arm
        p = arm.strategy.most_likely_label(arm.backend, [ctx.prompt], [Query(id=ctx.request_id, input="")],
                                           [ctx.passages])[0]
        if on_text:
            on_text(p.output)
        return p.output, p.prompt_tokens, 0

    @staticmethod
    def _ask_remote(ctx, n, on_text):
        arm = ctx.target.arm
        try:
            comps = arm.backend.generate([GenRequest(ctx.prompt, ctx.settings) for _ in range(n)], description=None)
        except Exception as e:  # noqa: BLE001 -- whatever the endpoint did, it is the endpoint's failure
            raise Upstream(f"the arm's endpoint failed: {type(e).__name__}: {str(e)[:200]}") from None
        if on_text and comps:
            on_text(comps[0].text)
        return [(c.text, c.prompt_tokens, c.completion_tokens) for c in comps]

    async def wait(self, futures: list[Future], request: Request | None) -> list:
        """The futures' results, or ClientGone (each cancelled) when the client disconnects."""
        gathered = asyncio.gather(*[asyncio.wrap_future(f) for f in futures])
        while True:
            done, _ = await asyncio.wait({gathered}, timeout=0.25)
            if done:
                try:
                    return gathered.result()
                except ServerClosing:
                    raise closing() from None
                except Upstream as e:
                    raise ApiError(502, str(e), "upstream_error", None, "upstream_error") from None
            if request is not None and await request.is_disconnected():
                gathered.add_done_callback(lambda g: g.cancelled() or g.exception())  # retrieved: nobody waits
                for f in futures:
                    self.engine.cancel(f)
                raise ClientGone()

    @staticmethod
    def texts(results: list, n: int) -> list[tuple[str, int, int]]:
        flat = [x for r in results for x in (r if isinstance(r, list) else [r])]
        return (flat * n)[:n] if len(flat) < n else flat

    @staticmethod
    def queue_s(futures: list[Future]) -> float:
        return max((getattr(f, "queue_s", 0.0) for f in futures), default=0.0)

    async def answer(self, ctx: ServeContext, n: int, request: Request) -> tuple[list[tuple[str, int, int]], float]:
        """n answers, logged; ClientGone and errors are logged too, then raised."""
        futures = self.submit(ctx, n)
        try:
            texts = self.texts(await self.wait(futures, request), n)
        except ClientGone:
            request.state.status = CLIENT_GONE
            await self.arecord(ctx, "cancelled", [("", ctx.prompt_tokens, 0)], self.queue_s(futures))
            raise
        except BaseException as e:
            await self.arecord(ctx, "error", [("", ctx.prompt_tokens, 0)], self.queue_s(futures), error=e)
            raise
        await self.arecord(ctx, "ok", texts, self.queue_s(futures))
        return texts, self.queue_s(futures)

    async def arecord(self, *args, **kw) -> None:
        """`record` on a worker thread: a row is an fsync, which must not stall the event loop."""
        await run_in_threadpool(self.record, *args, **kw)

    # the record
    def record(self, ctx: ServeContext, status: str, texts: list[tuple[str, int, int]], queue_s: float,
               error: BaseException | None = None) -> None:
        """The log row (committed before the response goes out) and the metrics."""
        latency = time.perf_counter() - ctx.t0
        name = ctx.target.name
        completion = sum(c for _, _, c in texts)
        if self.log is not None:
            extra = ctx.extra()
            self.log.add(Prediction(
                request_id=ctx.request_id, arm=name, model=ctx.asked, routed=ctx.routed, user_id=ctx.user,
                endpoint=ctx.endpoint, input=ctx.question, output=texts[0][0] if texts else "",
                passages=extra["passages"] if extra else [], prompt_tokens=ctx.prompt_tokens,
                completion_tokens=completion, latency_s=round(latency, 4), queue_s=round(queue_s, 4),
                run=ctx.target.run or self.run, status=status,
                error=None if error is None else _error_text(error)))
        m = self.metrics
        if m is not None and status == "ok":
            m.latency.labels(arm=name, endpoint="/v1/" + ctx.endpoint.replace(".", "/")).observe(latency)
            m.queue.labels(arm=name).observe(queue_s)
            m.tokens.labels(arm=name, kind="prompt").inc(ctx.prompt_tokens)
            m.tokens.labels(arm=name, kind="completion").inc(completion)

    def finish_reason(self, ctx: ServeContext, ct: int) -> str:
        return "length" if ct >= ctx.settings.max_tokens else "stop"

    # streaming
    def stream(self, ctx: ServeContext, request: Request, include_usage: bool) -> StreamingResponse:
        """Server-sent events as OpenAI streams them: a first chunk (the role), a chunk per
        piece of answer as the batch generates it, a last chunk with the finish reason, usage
        if asked, then [DONE]. One generator on purpose: its `finally` is what guarantees
        the row whichever way the stream ends. The row is committed before the last chunk; a client that
        leaves mid-stream gets a `cancelled` row with the text sent so far, and a failure
        mid-stream is an `error` row, counted as a 500 in /metrics."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def on_text(piece):
            loop.call_soon_threadsafe(pieces.put_nowait, piece)
        [future] = self.submit(ctx, 1, on_text)  # a full queue is a 429 here, before any byte is sent
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(pieces.put_nowait, DONE))
        chat = ctx.endpoint == "chat.completions"
        obj = "chat.completion.chunk" if chat else "text_completion"
        extra = ctx.extra()

        def chunk(delta, finish_reason=None, usage=None, tagged=False) -> str:
            choice = ({"index": 0, "delta": delta or {}, "finish_reason": finish_reason} if chat else
                      {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish_reason})
            body: dict = {"id": ctx.request_id, "object": obj, "created": ctx.created, "model": ctx.target.name,
                          "choices": [] if usage else [choice]}
            if usage:
                body["usage"] = usage
            if tagged and extra is not None:
                body["adaptbench"] = extra
            return f"data: {json.dumps(body)}\n\n"

        sent: list[str] = []
        logged = [False]

        def left() -> None:
            """The client left (the stream was cancelled, a send failed or timed out, or it
            never started): stop the generation, log what it was sent. Runs once."""
            if logged[0]:
                return
            logged[0] = True
            self.engine.cancel(future)
            request.state.status = CLIENT_GONE
            # synchronous: a cancelled task cannot await (anyio cancels every later await)
            self.record(ctx, "cancelled", [("".join(sent), ctx.prompt_tokens, 0)], self.queue_s([future]))

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""} if chat else "", tagged=True)
                while (piece := await pieces.get()) is not DONE:
                    sent.append(piece)
                    yield chunk({"content": piece} if chat else piece)
                err = future.exception()
                if err is not None:
                    logged[0] = True
                    request.state.status = 503 if isinstance(err, ServerClosing) else 502 if isinstance(
                        err, Upstream) else 500
                    await self.arecord(ctx, "error", [("".join(sent), ctx.prompt_tokens, 0)], self.queue_s([future]),
                                       err)
                    message = "the server is shutting down" if isinstance(err, ServerClosing) else _error_text(err)
                    yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
                    return
                [(text, pt, ct)] = self.texts([future.result()], 1)
                logged[0] = True  # before the await: the row is written even if the client leaves meanwhile
                await self.arecord(ctx, "ok", [(text, pt, ct)], self.queue_s([future]))
                yield chunk({} if chat else "", finish_reason=self.finish_reason(ctx, ct), tagged=True)
                if include_usage:
                    yield chunk(None, usage={"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct})
                yield "data: [DONE]\n\n"
            finally:
                left()

        return _Stream(events(), media_type="text/event-stream", on_close=left)


class _Stream(StreamingResponse):
    """A StreamingResponse that tells its handler when it ends, however it ends: Starlette may
    cancel a stream whose client left before its body iterator ever started, and then the
    iterator's own `finally` never runs."""

    def __init__(self, *args, on_close, **kw):
        super().__init__(*args, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _error_text(e: BaseException) -> str:
    if isinstance(e, (Upstream, ApiError)):
        return str(e)[:500]
    if isinstance(e, Cancelled):
        return "cancelled"
    return type(e).__name__


def gone() -> Response:
    """What a request whose client left gets (nobody reads it)."""
    return Response(status_code=CLIENT_GONE)
