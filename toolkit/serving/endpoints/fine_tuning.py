"""OpenAI's files and fine-tuning routes on `adaptbench serve --model`, so the same `openai`
client code that works against OpenAI trains and calls a model here:

  POST /v1/files                          purpose "fine-tune"; chat or prompt/completion JSONL,
                                          checked with OpenAI's rules
  GET  /v1/files, /v1/files/{id}          DELETE /v1/files/{id}
  POST /v1/fine_tuning/jobs               training_file, validation_file, model, suffix, seed,
                                          hyperparameters {n_epochs, learning_rate_multiplier, batch_size}
  GET  /v1/fine_tuning/jobs, /v1/fine_tuning/jobs/{id}, /v1/fine_tuning/jobs/{id}/events
  POST /v1/fine_tuning/jobs/{id}/cancel
  DELETE /v1/models/{fine-tuned model}
"""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from toolkit.serving.ft_formats import FormatError
from toolkit.serving.ft_jobs import QuotaExceeded
from toolkit.serving.protocol import (
    ERRORS,
    ApiError,
    Deleted,
    EventList,
    FileList,
    FileObject,
    JobList,
    JobObject,
    JobRequest,
)

router = APIRouter()


def _ft(request: Request):
    return request.app.state.finetuning


def not_found(what: str, ident: str, param: str) -> ApiError:
    return ApiError(404, f"No such {what}: '{str(ident)[:80]}'", param=param, code=f"{what}_not_found")


def quota(e: QuotaExceeded) -> ApiError:
    return ApiError(400, str(e), code="quota_exceeded")


@router.post("/v1/files", response_model=FileObject, responses=ERRORS)
async def upload(request: Request, file: UploadFile = File(...), purpose: str = Form(..., max_length=64)):  # noqa: B008
    if purpose != "fine-tune":
        raise ApiError(400, f"purpose '{purpose}' is not served here: upload with purpose 'fine-tune'", param="purpose")
    data = await file.read()
    try:
        return await run_in_threadpool(_ft(request).add_file, file.filename or "upload.jsonl", data, purpose)
    except FormatError as e:
        raise ApiError(400, f"Invalid file format for fine-tuning: {e}", param="file", code="invalid_file_format") \
            from None
    except QuotaExceeded as e:
        raise quota(e) from None


@router.get("/v1/files", response_model=FileList, responses=ERRORS)
async def list_files(request: Request):
    return {"object": "list", "data": await run_in_threadpool(_ft(request).files)}


@router.get("/v1/files/{fid}", response_model=FileObject, responses=ERRORS)
async def get_file(fid: str, request: Request):
    return await run_in_threadpool(_ft(request).file, fid) or _raise(not_found("file", fid, "file_id"))


@router.delete("/v1/files/{fid}", response_model=Deleted, responses=ERRORS)
async def delete_file(fid: str, request: Request):
    if not await run_in_threadpool(_ft(request).delete_file, fid):
        raise not_found("file", fid, "file_id")
    return {"id": fid, "object": "file", "deleted": True}


@router.post("/v1/fine_tuning/jobs", response_model=JobObject, responses=ERRORS)
async def create_job(req: JobRequest, request: Request):
    ft = _ft(request)
    if ft.base(req.model) is None:  # the same answer whatever the name is: no path is ever looked at
        raise ApiError(400, f"the model '{req.model[:80]}' is not trained by this server (it trains: "
                       f"{ft.served_name})", param="model", code="model_not_available")
    for field in ("training_file", "validation_file"):
        fid = getattr(req, field)
        if fid is not None and await run_in_threadpool(ft.file, fid) is None:
            raise not_found("file", fid, field)
    hp, q = req.hyperparameters, ft.quotas
    if hp.n_epochs != "auto" and hp.n_epochs > q.max_epochs:
        raise ApiError(400, f"hyperparameters.n_epochs is {hp.n_epochs}; this server trains at most {q.max_epochs}",
                       param="hyperparameters.n_epochs")
    if hp.batch_size != "auto" and hp.batch_size > q.max_batch_size:
        raise ApiError(400, f"hyperparameters.batch_size is {hp.batch_size}; this server takes at most "
                       f"{q.max_batch_size}", param="hyperparameters.batch_size")
    try:
        return await run_in_threadpool(ft.create, req)
    except QuotaExceeded as e:
        raise quota(e) from None


@router.get("/v1/fine_tuning/jobs", response_model=JobList, responses=ERRORS)
async def list_jobs(request: Request, limit: int = Query(20, ge=1, le=100), after: str | None = Query(None, max_length=64)):
    jobs = (await run_in_threadpool(_ft(request).jobs))[::-1]
    if after:
        ids = [j["id"] for j in jobs]
        jobs = jobs[ids.index(after) + 1:] if after in ids else []
    return {"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit}


@router.get("/v1/fine_tuning/jobs/{jid}", response_model=JobObject, responses=ERRORS)
async def get_job(jid: str, request: Request):
    return await run_in_threadpool(_ft(request).job, jid) or _raise(not_found("fine_tuning_job", jid, "fine_tuning_job_id"))


@router.get("/v1/fine_tuning/jobs/{jid}/events", response_model=EventList, responses=ERRORS)
async def job_events(jid: str, request: Request, limit: int = Query(20, ge=1, le=100)):
    ft = _ft(request)
    if await run_in_threadpool(ft.job, jid) is None:
        raise not_found("fine_tuning_job", jid, "fine_tuning_job_id")
    ev = await run_in_threadpool(ft.events, jid)
    return {"object": "list", "data": ev[:limit], "has_more": len(ev) > limit}


@router.post("/v1/fine_tuning/jobs/{jid}/cancel", response_model=JobObject, responses=ERRORS)
async def cancel_job(jid: str, request: Request):
    return await run_in_threadpool(_ft(request).cancel, jid) or _raise(
        not_found("fine_tuning_job", jid, "fine_tuning_job_id"))


@router.delete("/v1/models/{model:path}", response_model=Deleted, responses=ERRORS)
async def delete_model(model: str, request: Request):
    if not await run_in_threadpool(_ft(request).delete_model, model):
        raise ApiError(404, f"The model '{model[:128]}' is not a fine-tuned model of this server", param="model",
                       code="model_not_found")
    return {"id": model, "object": "model", "deleted": True}


def _raise(e: ApiError):
    raise e
