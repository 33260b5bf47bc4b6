"""POST /v1/chat/completions: a conversation answered by a model or an arm (the arm answers
the last user message with its own prompt); `stream: true` sends server-sent events."""

from __future__ import annotations

from fastapi import APIRouter, Request

from toolkit.serving.handler import ClientGone, gone
from toolkit.serving.protocol import STREAMED, ChatRequest, ChatResponse

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatResponse, responses=STREAMED)
async def chat_completions(req: ChatRequest, request: Request):
    h = request.app.state.handler
    ctx = await h.context(request, req, "chat.completions")
    if req.stream:
        return h.stream(ctx, request, bool(req.stream_options and req.stream_options.include_usage))
    try:
        texts, _ = await h.answer(ctx, req.n, request)
    except ClientGone:
        return gone()
    pt, ct = texts[0][1], sum(c for _, _, c in texts)
    body = {"id": ctx.request_id, "object": "chat.completion", "created": ctx.created, "model": ctx.target.name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                         "finish_reason": h.finish_reason(ctx, c)} for i, (t, _, c) in enumerate(texts)],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}
    if (extra := ctx.extra()) is not None:
        body["adaptbench"] = extra
    return body
