"""The arms of a run behind an OpenAI-compatible API: `adaptbench serve RUN_DIR --arm ...`.

  POST /v1/chat/completions   the last user message is the query; `stream: true` sends
                              server-sent events as OpenAI streams them
  POST /v1/completions        the prompt is the query (a guide's `completions.create(model=
                              "finetune", prompt=..., max_tokens=60)` works unchanged)
  GET  /v1/models             one entry per arm, plus the A/B router's name
  POST /v1/feedback           {request_id, score 0..1, correction?, comment?}
  GET  /healthz, GET /metrics (Prometheus)

Each arm builds its prompt exactly as in the run (instruction, few-shot selection, retrieval
from the same index) and answers with the run's generation settings and model (adapter
merged in); a request's own max_tokens, temperature, stop or seed override them. Every
answered request is a row in the prediction log, committed before the response is sent.
Responses carry an `adaptbench` field: request id, arm, whether the router chose it, and
the retrieved passages (document ids and scores).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass

from fastapi import Request  # module level: FastAPI resolves the handlers' annotations here
from pydantic import BaseModel, Field

from toolkit.serving.openai_app import (MAX_TOKENS_CAP, ChatRequest, CompletionRequest, QueueFull, ServerClosing,
                                        _error, _text, base_app, sse_stream, stops)


class Router:
    """Weighted A/B routing, sticky per user: a user id hashes to the same point of [0, 1)
    on every request and every restart, so a user keeps seeing one arm. Requests without a
    user id are spread by their request id."""

    def __init__(self, weights: dict[str, float]):
        self.weights = {a: w for a, w in weights.items() if w > 0}
        total = sum(self.weights.values())
        self.cuts, acc = [], 0.0
        for arm, w in self.weights.items():
            acc += w / total
            self.cuts.append((acc, arm))

    def pick(self, key: str) -> str:
        point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
        for cut, arm in self.cuts:
            if point < cut:
                return arm
        return self.cuts[-1][1]

    def shares(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {a: w / total for a, w in self.weights.items()}


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1)
    score: float | None = Field(None, ge=0, le=1, description="0 (bad) .. 1 (good); thumbs up/down is 1/0")
    correction: str | None = None
    comment: str | None = None


@dataclass
class Answer:
    texts: list[tuple[str, int, int]]  # (text, prompt tokens, completion tokens) per choice
    queue_s: float


class ArmService:
    """What answers: the rebuilt arms, the engine their local models share, the router."""

    def __init__(self, arms: list, weights: dict[str, float], *, engine, name: str, run: str | None = None,
                 log=None, metrics=None):
        self.arms = {a.name: a for a in arms}
        self.router = Router(weights)
        self.engine, self.name, self.run, self.log, self.metrics = engine, name, run, log, metrics
        self.keys = {a.name: engine.add(a.backend.generator) for a in arms if a.local}
        self._prompt_locks = {a.name: threading.Lock() for a in arms}

    def resolve(self, model: str | None, user: str | None, request_id: str):
        """(arm, routed) for the model a client asked for: an arm by name, or the router's
        name (or none) for weighted, sticky routing. None if unknown."""
        if model in self.arms:
            return self.arms[model], False
        if model in (None, "", self.name):
            return self.arms[self.router.pick(f"user:{user}" if user else request_id)], True
        return None, False

    def settings(self, arm, max_tokens, temperature, stop, seed):
        from toolkit.backends import Settings
        s = arm.settings
        return Settings(max_tokens if max_tokens is not None else s.max_tokens,
                        tuple(stop) if stop else s.stop,
                        float(temperature) if temperature is not None else s.temperature,
                        seed if seed is not None else s.seed)

    def prompt(self, arm, question: str, request_id: str):
        with self._prompt_locks[arm.name]:  # retrieval and few-shot selection: one at a time per arm
            return arm.prompt(question, request_id)

    def answer(self, arm, messages, passages, settings, n: int, on_text=None) -> Answer:
        """n answers to an arm's prompt (greedy answers repeat)."""
        from toolkit.backends import GenRequest
        if arm.likelihood:  # classification by the most likely label: scored on the engine's thread
            from toolkit.data import Query
            f = self.engine.call(lambda: arm.strategy.most_likely_label(
                arm.backend, [messages], [Query(id="q", input="")], [passages])[0])
            p = f.result()
            if on_text:
                on_text(p.output)
            return Answer([(p.output, p.prompt_tokens, 0)] * n, f.queue_s)
        if arm.local:
            futures = [self.engine.generate(self.keys[arm.name], messages, settings, on_text=on_text) for _ in range(n)]
            return Answer([f.result() for f in futures], max(f.queue_s for f in futures))
        comps = arm.backend.generate([GenRequest(messages, settings) for _ in range(n)], description=None)
        if on_text and comps:
            on_text(comps[0].text)
        return Answer([(c.text, c.prompt_tokens, c.completion_tokens) for c in comps], 0.0)


def create_arm_app(service: ArmService, *, api_key: str | None = None, max_body: int | None = None):
    from toolkit.serving.log import Prediction
    from toolkit.serving.openai_app import MAX_BODY_BYTES

    m = service.metrics
    app = base_app(title="adaptbench", description="The arms of an adaptbench run behind an OpenAI-compatible API.",
                   api_key=api_key, metrics=m, max_body=max_body or MAX_BODY_BYTES)

    def unknown(model):
        names = ", ".join([service.name, *service.arms])
        return _error(404, f"The model '{model}' does not exist (this server serves: {names})",
                      "invalid_request_error", "model", "model_not_found")

    def too_many(max_tokens):
        if max_tokens is not None and max_tokens > MAX_TOKENS_CAP:
            return _error(400, f"max_tokens is {max_tokens}; this server generates at most {MAX_TOKENS_CAP}",
                          "invalid_request_error", "max_tokens")
        return None

    def extra(ctx) -> dict:
        """The `adaptbench` field of a response (its passages are also what the log keeps)."""
        return {"request_id": ctx["rid"], "arm": ctx["arm"].name, "routed": ctx["routed"],
                "passages": [{"doc_id": p.doc_id, "score": round(float(p.score), 4)} for p in ctx["passages"]]}

    def record(ctx, endpoint: str, ans: Answer) -> None:
        """The log row (committed before the response goes out) and the metrics."""
        arm, latency = ctx["arm"], time.perf_counter() - ctx["t0"]
        text, pt, ct = ans.texts[0]
        if service.log is not None:
            service.log.add(Prediction(
                request_id=ctx["rid"], arm=arm.name, model=ctx["model"], routed=ctx["routed"], user_id=ctx["user"],
                endpoint=endpoint, input=ctx["question"], output=text, passages=ctx["extra"]["passages"],
                prompt_tokens=pt, completion_tokens=sum(c for _, _, c in ans.texts), latency_s=round(latency, 4),
                queue_s=round(ans.queue_s, 4), run=arm.run or service.run))
        if m is not None:
            m.latency.labels(arm=arm.name, endpoint="/v1/" + endpoint.replace(".", "/")).observe(latency)
            m.queue.labels(arm=arm.name).observe(ans.queue_s)
            m.tokens.labels(arm=arm.name, kind="prompt").inc(pt)
            m.tokens.labels(arm=arm.name, kind="completion").inc(sum(c for _, _, c in ans.texts))

    def run(request: Request, req, endpoint: str, question: str):
        """Route, build the prompt, answer; a response object or an error."""
        t0 = time.perf_counter()
        rid = f"{'chatcmpl' if endpoint == 'chat.completions' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        user = req.user or request.headers.get("x-user") or None
        arm, routed = service.resolve(req.model, user, rid)
        if arm is None:
            return None, unknown(req.model)
        request.state.arm = arm.name
        max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if (err := too_many(max_tokens)) is not None:
            return None, err
        if endpoint == "completions" and max_tokens == 0:
            return None, _error(400, "max_tokens must be at least 1", "invalid_request_error", "max_tokens")
        if req.stream and req.n > 1:
            return None, _error(400, "stream: true answers with one choice (n: 1)", "invalid_request_error", "n")
        settings = service.settings(arm, max_tokens, req.temperature, stops(req.stop), req.seed)
        messages, passages = service.prompt(arm, question, rid)
        ctx = dict(rid=rid, arm=arm, routed=routed, user=user, settings=settings, messages=messages,
                   passages=passages, t0=t0, question=question, model=req.model)
        ctx["extra"] = extra(ctx)
        return ctx, None

    def finish_reason(ct, settings):
        return "length" if ct >= settings.max_tokens else "stop"

    def respond(req, endpoint: str, ctx) -> dict:
        ans = service.answer(ctx["arm"], ctx["messages"], ctx["passages"], ctx["settings"], req.n)
        record(ctx, endpoint, ans)
        pt = ans.texts[0][1]
        ct = sum(c for _, _, c in ans.texts)
        if endpoint == "chat.completions":
            choices = [{"index": i, "message": {"role": "assistant", "content": t},
                        "finish_reason": finish_reason(c, ctx["settings"])} for i, (t, _, c) in enumerate(ans.texts)]
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": finish_reason(c, ctx["settings"])}
                       for i, (t, _, c) in enumerate(ans.texts)]
        return {"id": ctx["rid"], "object": "chat.completion" if endpoint == "chat.completions" else "text_completion",
                "created": int(time.time()), "model": ctx["arm"].name, "choices": choices,
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
                "adaptbench": ctx["extra"]}

    def stream(endpoint: str, ctx, include_usage: bool):
        """Server-sent events; the log row is committed before the last chunk goes out."""
        arm = ctx["arm"]
        return sse_stream(
            chat=endpoint == "chat.completions", rid=ctx["rid"], model=arm.name, include_usage=include_usage,
            extra=ctx["extra"],
            answer=lambda on_text: service.answer(arm, ctx["messages"], ctx["passages"], ctx["settings"], 1,
                                                  on_text=on_text),
            finish=lambda ans: (finish_reason(ans.texts[0][2], ctx["settings"]), ans.texts[0][1], ans.texts[0][2]),
            on_done=lambda ans: record(ctx, endpoint, ans))

    def handle(request: Request, req, endpoint: str, question: str):
        """One answered request, by either endpoint: route, prompt, answer (or stream), log."""
        def go():
            ctx, err = run(request, req, endpoint, question)
            if err is not None:
                return err
            if req.stream:
                return stream(endpoint, ctx, bool(req.stream_options and req.stream_options.include_usage))
            return respond(req, endpoint, ctx)
        return guarded(go)

    def guarded(fn):
        if m is not None:
            m.in_flight.inc()
            m.waiting.set(service.engine.waiting)
        try:
            return fn()
        except QueueFull:
            return _error(429, "too many requests are waiting; retry shortly", "rate_limit_error", None,
                          "rate_limit_exceeded", headers={"Retry-After": "1"})
        except ServerClosing:
            return _error(503, "the server is shutting down", "server_error")
        finally:
            if m is not None:
                m.in_flight.dec()

    @app.get("/v1/models")
    def models():
        data = [{"id": a.name, "object": "model", "created": 0, "owned_by": "adaptbench",
                 "adaptbench": {"type": a.type, "model": a.describe.get("model"), "where": a.describe.get("where"),
                                "weight": service.router.shares().get(a.name, 0.0)}}
                for a in service.arms.values()]
        if service.name not in service.arms:
            data.insert(0, {"id": service.name, "object": "model", "created": 0, "owned_by": "adaptbench",
                            "adaptbench": {"routes": service.router.shares()}})
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest, request: Request):  # a plain def: FastAPI runs it in a worker thread
        users = [m for m in req.messages if m.get("role") == "user"]
        if not users or not _text(users[-1].get("content")).strip():
            return _error(422, "a served arm answers the last user message, and there is none (or it is empty)",
                          "invalid_request_error", "messages")
        return handle(request, req, "chat.completions", _text(users[-1].get("content")))

    @app.post("/v1/completions")
    def completions(req: CompletionRequest, request: Request):
        if req.echo or req.logprobs is not None:
            return _error(400, "echo and logprobs are for a base model (adaptbench serve --model); a served arm "
                          "answers its prompt", "invalid_request_error", "echo" if req.echo else "logprobs")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1 or not prompts[0].strip():
            return _error(422, "a served arm answers one question: `prompt` must be one non-empty string",
                          "invalid_request_error", "prompt")
        return handle(request, req, "completions", prompts[0])

    @app.post("/v1/feedback")
    def feedback(req: FeedbackRequest, request: Request):
        if service.log is None:
            return _error(404, "this server keeps no prediction log", "invalid_request_error")
        if req.score is None and not req.correction and not req.comment:
            return _error(422, "feedback needs a score, a correction or a comment", "invalid_request_error", "score")
        arm = service.log.feedback(req.request_id, req.score, req.correction, req.comment)
        if arm is None:
            return _error(404, f"no request '{req.request_id}' in the prediction log", "invalid_request_error",
                          "request_id", "request_not_found")
        request.state.arm = arm
        if m is not None:
            m.feedback.labels(arm=arm).inc()
            if req.score is not None:
                m.feedback_score.labels(arm=arm).observe(req.score)
        return {"object": "feedback", "request_id": req.request_id, "arm": arm, "recorded": True}

    return app
