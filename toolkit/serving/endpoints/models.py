"""GET /v1/models: every name the server answers to (DELETE of a fine-tuned model is with
the fine-tuning routes)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from toolkit.serving.protocol import ERRORS, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request):
    return {"object": "list", "data": request.app.state.handler.targets.cards()}
