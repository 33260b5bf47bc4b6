"""POST /v1/feedback {request_id, score 0..1, correction?, comment?}: what a user thought of
an answer, kept beside its row in the prediction log."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from toolkit.serving.protocol import ERRORS, ApiError, FeedbackRequest, FeedbackResponse

router = APIRouter()


@router.post("/v1/feedback", response_model=FeedbackResponse, responses=ERRORS)
async def feedback(req: FeedbackRequest, request: Request):
    h = request.app.state.handler
    if h.log is None:
        raise ApiError(404, "this server keeps no prediction log", code="no_prediction_log")
    if req.score is None and not req.correction and not req.comment:
        raise ApiError(422, "feedback needs a score, a correction or a comment", param="score")
    arm = await run_in_threadpool(h.log.feedback, req.request_id, req.score, req.correction, req.comment)
    if arm is None:
        raise ApiError(404, f"no request '{req.request_id}' in the prediction log", param="request_id",
                       code="request_not_found")
    request.state.arm = arm
    if h.metrics is not None:
        h.metrics.feedback.labels(arm=arm).inc()
        if req.score is not None:
            h.metrics.feedback_score.labels(arm=arm).observe(req.score)
    return {"object": "feedback", "request_id": req.request_id, "arm": arm, "recorded": True}
