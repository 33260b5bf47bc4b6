"""POST /v1/completions. A served arm answers one prompt (the question) with its own prompt
around it. A plain model (`serve --model`) takes up to MAX_PROMPTS prompts, `n` each,
answered in one batch; `echo` with `logprobs` returns the prompt's token log-probabilities
(as vLLM and llama.cpp do), and `max_tokens` 0 or 1 with them is a likelihood request
(lm-evaluation-harness sends those): one forward pass, batched with others."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from toolkit.serving.engine import QueueFull, ServerClosing
from toolkit.serving.handler import ClientGone, gone
from toolkit.serving.protocol import (
    MAX_PROMPTS,
    STREAMED,
    ApiError,
    CompletionRequest,
    CompletionResponse,
    ServeContext,
    busy,
    closing,
)

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse, responses=STREAMED)
async def completions(req: CompletionRequest, request: Request):
    h = request.app.state.handler
    target, _ = h.targets.resolve(req.model, req.user, "")
    if not target.is_arm and not getattr(target.generator, "can_complete", True):
        raise ApiError(404, "this server answers chat completions only", code="unsupported_endpoint")
    plain = not target.is_arm and (len(req.prompts()) > 1 or req.echo or req.logprobs is not None
                                   or req.max_tokens == 0)
    if plain:
        return await _plain(h, req, request, target)
    ctx = await h.context(request, req, "completions")
    if req.stream:
        return h.stream(ctx, request, bool(req.stream_options and req.stream_options.include_usage))
    try:
        texts, _ = await h.answer(ctx, req.n, request)
    except ClientGone:
        return gone()
    pt, ct = texts[0][1], sum(c for _, _, c in texts)
    body = {"id": ctx.request_id, "object": "text_completion", "created": ctx.created, "model": ctx.target.name,
            "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": h.finish_reason(ctx, c)}
                        for i, (t, _, c) in enumerate(texts)],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}
    if (extra := ctx.extra()) is not None:
        body["adaptbench"] = extra
    return body


def _logprobs(got: dict, start: int, next_at: int | None = None) -> dict:
    """The part of a text's log-probabilities the caller sees (from character `start`)."""
    keep = [i for i, off in enumerate(got["text_offset"]) if off >= start]
    tops = got.get("top_logprobs")
    lp = {"tokens": [got["tokens"][i] for i in keep], "token_logprobs": [got["token_logprobs"][i] for i in keep],
          "text_offset": [got["text_offset"][i] - start for i in keep],
          "top_logprobs": [tops[i] for i in keep] if tops is not None else None}
    if next_at is not None:  # the greedy next token (max_tokens 1)
        lp["tokens"].append(got["next_token"])
        lp["token_logprobs"].append(got["next_logprob"])
        lp["text_offset"].append(next_at)
        if tops is not None:
            lp["top_logprobs"].append(got["next_top_logprobs"])
    return lp


def _submit_all(h, make) -> list:
    """Queue every future `make()` yields; a full queue (429) or shutdown (503) cancels the ones
    already queued, so none is computed for nobody."""
    futures: list = []
    try:
        for f in make():
            futures.append(f)
    except (QueueFull, ServerClosing) as e:
        for f in futures:
            h.engine.cancel(f)
        raise (busy() if isinstance(e, QueueFull) else closing()) from None
    return futures


async def _plain(h, req: CompletionRequest, request: Request, target):
    """/v1/completions on a base model: a prompt list × n, streamed or not, with echo and
    logprobs as lm-evaluation-harness reads them. Kept whole: the branches share the
    validated prompts and the engine work submitted for them, and each maps to one of
    OpenAI's answer shapes."""
    prompts = req.prompts()
    if req.stream and (len(prompts) != 1 or req.echo or req.logprobs is not None or req.max_tokens == 0):
        raise ApiError(400, "stream: true takes one prompt, without echo or logprobs", param="stream")
    if len(prompts) * req.n > MAX_PROMPTS * 2:
        raise ApiError(400, f"{len(prompts)} prompts × n {req.n} is more than the {MAX_PROMPTS * 2} answers one "
                       f"request may ask for", param="n")
    if req.max_tokens == 0 and not req.echo:
        raise ApiError(400, "max_tokens 0 needs echo: true", param="max_tokens")
    wanted = req.max_tokens if req.max_tokens is not None else 16
    likelihood = req.echo and req.logprobs is not None and wanted <= 1 and (not req.temperature or wanted == 0)
    scored = likelihood or req.max_tokens == 0  # nothing generated: the prompt is scored as given
    rid = f"cmpl-{uuid.uuid4().hex[:24]}"
    request.state.arm = target.name
    ctxs = []
    for p in prompts:
        c = ServeContext(request_id=rid, endpoint="completions", asked=req.model, target=target, user=req.user)
        await run_in_threadpool(target.prepare, c, req.model_copy(update={"max_tokens": 1}) if scored else req,
                                h.limits, p, scored)
        # log-probabilities come from full-vocabulary logits: the scored text is bounded apart
        if req.logprobs is not None and c.prompt_tokens + (0 if scored else wanted) > h.limits.max_logprob_tokens:
            raise ApiError(400, f"logprobs score at most {h.limits.max_logprob_tokens} tokens of prompt and "
                           f"completion; this prompt has {c.prompt_tokens}", param="prompt",
                           code="context_length_exceeded")
        ctxs.append(c)
    head = ctxs[0]
    head.prompt_tokens = sum(c.prompt_tokens for c in ctxs)  # the request's row counts all its prompts
    engine = h.engine
    try:
        if scored:
            futures = _submit_all(h, lambda: (engine.prompt_logprobs(target.key, c.prompt, cost=c.prompt_tokens,
                                                                     top_k=req.logprobs or 0) for c in ctxs))
            got = await h.wait(futures, request)
            choices, usage = [], [0, 0]
            for p, g in zip(prompts, got):
                add = req.max_tokens == 1
                lp = _logprobs(g, 0, len(p) if add else None) if req.logprobs is not None else None
                usage[0] += len(g["tokens"])
                usage[1] += int(add)
                for _ in range(req.n):
                    choices.append({"index": len(choices), "text": p + (g["next_token"] if add else ""),
                                    "logprobs": lp, "finish_reason": "length" if add else "stop"})
            queue_s = h.queue_s(futures)
        else:
            per = [_submit_all(h, lambda c=c: (h.submit(c, 1)[0] for _ in range(req.n))) for c in ctxs]
            results = await h.wait([f for fs in per for f in fs], request)
            queue_s = h.queue_s([f for fs in per for f in fs])
            choices, usage, k, outs = [], [0, 0], 0, []
            for c, fs in zip(ctxs, per):
                texts = h.texts(results[k:k + len(fs)], req.n)
                k += len(fs)
                usage[0] += texts[0][1]
                outs.append((c, texts))
            lps = {}
            if req.logprobs is not None:  # log-probabilities of the whole text, then the part the caller sees
                todo = [(c, t) for c, texts in outs for t, _, _ in texts]
                fs = _submit_all(h, lambda: (engine.prompt_logprobs(target.key, c.prompt + t, cost=c.prompt_tokens + wanted,
                                                                    top_k=req.logprobs) for c, t in todo))
                lps = dict(enumerate(await h.wait(fs, request)))
            i = 0
            for (c, texts), p in zip(outs, prompts):
                for text, _, ct in texts:
                    usage[1] += ct
                    lp = _logprobs(lps[i], 0 if req.echo else len(c.prompt)) if i in lps else None
                    choices.append({"index": len(choices), "text": p + text if req.echo else text, "logprobs": lp,
                                    "finish_reason": h.finish_reason(c, ct)})
                    i += 1
    except ClientGone:
        request.state.status = 499
        await h.arecord(head, "cancelled", [("", head.prompt_tokens, 0)], 0.0)
        return gone()
    except BaseException as e:
        await h.arecord(head, "error", [("", head.prompt_tokens, 0)], 0.0, error=e)
        raise
    await h.arecord(head, "ok", [(choices[0]["text"], usage[0], usage[1])], queue_s)
    return {"id": rid, "object": "text_completion", "created": head.created, "model": target.name,
            "choices": choices, "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                          "total_tokens": sum(usage)}}
