"""OpenAI's fine-tuning API, answered locally by `adaptbench serve --model`: upload a chat-format
JSONL file, create a job, poll it, then call the new model by its name, with the same `openai`
client code that works against OpenAI.

  POST /v1/files                          purpose "fine-tune"; checked with OpenAI's chat-format rules
  GET  /v1/files, /v1/files/{id}
  POST /v1/fine_tuning/jobs               training_file, validation_file, model, suffix, seed,
                                          hyperparameters {n_epochs, learning_rate_multiplier, batch_size}
  GET  /v1/fine_tuning/jobs, /v1/fine_tuning/jobs/{id}, /v1/fine_tuning/jobs/{id}/events
  POST /v1/fine_tuning/jobs/{id}/cancel

A job goes validating_files -> queued -> running -> succeeded | failed | cancelled. Jobs train one
at a time with adaptbench's LoRA trainer, each in a child process (`toolkit.serving.ft_worker`),
so cancelling one stops it at once; the trainer writes its adapter to a temporary folder and
renames it only when complete, so a cancelled job leaves no model behind and its name is never
served. A succeeded job's model, `ft:BASE:adaptbench:SUFFIX:ID`, is served by the same server at
once (the base model with the adapter merged in), and again after a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import File, Form, UploadFile  # module level: FastAPI resolves the handlers' annotations here
from pydantic import BaseModel, Field

MIN_EXAMPLES = 10           # OpenAI's minimum for a training file
ROLES = ("system", "user", "assistant", "tool", "function")
MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id"}
DEFAULT_EPOCHS, DEFAULT_BATCH, BASE_LR = 3, 8, 1e-3  # "auto" hyperparameters; lr = BASE_LR × multiplier
TERMINAL = ("succeeded", "failed", "cancelled")


class FormatError(ValueError):
    def __init__(self, line: int | None, message: str):
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


def check_chat_jsonl(data: bytes) -> int:
    """OpenAI's chat fine-tuning format, line by line; the number of examples. Raises
    FormatError naming the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(None, "the file is not UTF-8 text") from None
    n = 0
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(i, f"not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
            raise FormatError(i, "each line must be a JSON object with a non-empty `messages` list")
        for j, m in enumerate(row["messages"]):
            if not isinstance(m, dict) or "role" not in m:
                raise FormatError(i, f"messages[{j}] needs a `role` and `content`")
            if m["role"] not in ROLES:
                raise FormatError(i, f"messages[{j}].role '{m['role']}' is not one of {', '.join(ROLES)}")
            if extra := set(m) - MESSAGE_KEYS:
                raise FormatError(i, f"messages[{j}] has an unrecognised key '{sorted(extra)[0]}'")
            if not isinstance(m.get("content"), str) and not m.get("function_call") and not m.get("tool_calls"):
                raise FormatError(i, f"messages[{j}].content must be a string")
        if not any(m["role"] == "assistant" for m in row["messages"]):
            raise FormatError(i, "no assistant message: every example needs the answer to learn")
        n += 1
    if n == 0:
        raise FormatError(None, "the file holds no examples")
    return n


def train_items(path: Path) -> list:
    """Chat examples as toolkit.chat.TrainItem: the conversation up to its last assistant
    message is the prompt, that message the answer the model learns."""
    from toolkit.chat import TrainItem
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            msgs = json.loads(line)["messages"]
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            items.append(TrainItem([{"role": m["role"], "content": m.get("content") or ""} for m in msgs[:last]],
                                   msgs[last]["content"]))
    return items


class Hyper(BaseModel):
    n_epochs: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    batch_size: int | str = "auto"


class JobRequest(BaseModel):
    training_file: str
    model: str
    validation_file: str | None = None
    hyperparameters: Hyper = Field(default_factory=Hyper)
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = None


def _now() -> int:
    return int(time.time())


class FineTuning:
    """Files and jobs, kept in `root` (JSON files, so they outlive the server), and the one
    thread that runs jobs in order. `register(name, base, adapter)` is called for every
    succeeded job's model (at start too)."""

    def __init__(self, root: Path, *, base_model: str, register, dtype: str = "auto", name: str | None = None):
        self.root = Path(root)
        self.files_dir, self.jobs_dir = self.root / "files", self.root / "jobs"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.base_model, self.register, self.dtype = base_model, register, dtype
        self.aliases = {name: base_model} if name and name != base_model else {}  # the served name -> its model
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._cancelled: set[str] = set()
        for job in self.jobs():  # a server stopped mid-job: the job did not finish
            if job["status"] not in TERMINAL:
                self._update(job, status="failed", finished_at=_now(),
                             error={"code": "server_restarted", "param": None,
                                    "message": "the server stopped before the job finished; create it again"})
            elif job["status"] == "succeeded":
                self._serve(job)
        self._thread = threading.Thread(target=self._run, daemon=True, name="fine-tuning")
        self._thread.start()

    # files
    def add_file(self, filename: str, data: bytes, purpose: str) -> dict:
        n = check_chat_jsonl(data)
        fid = f"file-{uuid.uuid4().hex[:24]}"
        (self.files_dir / f"{fid}.jsonl").write_bytes(data)
        meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": _now(), "filename": filename,
                "purpose": purpose, "status": "processed", "examples": n}
        _write_json(self.files_dir / f"{fid}.json", meta)
        return meta

    def file(self, fid: str) -> dict | None:
        p = self.files_dir / f"{Path(fid).name}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def files(self) -> list[dict]:
        return sorted((json.loads(p.read_text()) for p in self.files_dir.glob("*.json")), key=lambda f: f["created_at"])

    # jobs
    def create(self, req: JobRequest) -> dict:
        hp = req.hyperparameters
        job = {"id": f"ftjob-{uuid.uuid4().hex[:24]}", "object": "fine_tuning.job", "created_at": _now(),
               "finished_at": None, "model": req.model, "fine_tuned_model": None, "organization_id": "adaptbench",
               "status": "validating_files", "training_file": req.training_file,
               "validation_file": req.validation_file, "result_files": [], "trained_tokens": None, "error": None,
               "seed": req.seed if req.seed is not None else 0, "suffix": req.suffix,
               "hyperparameters": {"n_epochs": hp.n_epochs, "learning_rate_multiplier": hp.learning_rate_multiplier,
                                   "batch_size": hp.batch_size}}
        (self.jobs_dir / job["id"]).mkdir()
        self._save(job)
        self.event(job["id"], "info", f"Validating training file: {req.training_file}")
        self._wake.set()
        return job

    def job(self, jid: str) -> dict | None:
        p = self.jobs_dir / Path(jid).name / "job.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def jobs(self) -> list[dict]:
        return sorted((json.loads(p.read_text()) for p in self.jobs_dir.glob("*/job.json")),
                      key=lambda j: j["created_at"])

    def events(self, jid: str) -> list[dict]:
        p = self.jobs_dir / Path(jid).name / "events.jsonl"
        rows = [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []
        return rows[::-1]  # newest first, as OpenAI lists them

    def event(self, jid: str, level: str, message: str) -> None:
        row = {"object": "fine_tuning.job.event", "id": f"ftevent-{uuid.uuid4().hex[:24]}", "created_at": _now(),
               "level": level, "message": message, "type": "message"}
        with (self.jobs_dir / jid / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def cancel(self, jid: str) -> dict | None:
        with self._lock:
            job = self.job(jid)
            if job is None or job["status"] in TERMINAL:
                return job
            self._cancelled.add(jid)
            if job["status"] == "running" and self._proc is not None:
                self._proc.terminate()  # the trainer renames its folder only when complete: nothing half-written
            job = self._update(job, status="cancelled", finished_at=_now())
        self.event(jid, "info", "Job cancelled")
        return job

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            if self._proc is not None:
                self._proc.terminate()
        self._thread.join(30)

    # internals
    def _save(self, job: dict) -> None:
        _write_json(self.jobs_dir / job["id"] / "job.json", job)

    def _update(self, job: dict, **kw) -> dict:
        job = {**job, **kw}
        self._save(job)
        return job

    def _fail(self, job: dict, code: str, message: str, param: str | None = None) -> None:
        self._update(job, status="failed", finished_at=_now(), error={"code": code, "message": message, "param": param})
        self.event(job["id"], "error", message)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()  # set by create() and close(): nothing else makes a job runnable
            self._wake.clear()
            for job in self.jobs():
                if self._stop.is_set():
                    return
                if job["status"] in ("validating_files", "queued") and job["id"] not in self._cancelled:
                    try:
                        self._one(job)
                    except Exception as e:  # a job's failure never stops the queue
                        self._fail(self.job(job["id"]) or job, "internal_error", f"{type(e).__name__}: {e}")

    def _one(self, job: dict) -> None:
        jid = job["id"]
        if job["status"] == "validating_files":
            for field in ("training_file", "validation_file"):
                fid = job[field]
                if fid is None:
                    continue
                meta = self.file(fid)
                if meta is None:
                    return self._fail(job, "invalid_file", f"{field} '{fid}' is not an uploaded file", field)
                if field == "training_file" and meta["examples"] < MIN_EXAMPLES:
                    return self._fail(job, "invalid_training_file",
                                      f"Training file has {meta['examples']} example(s), but must have at least "
                                      f"{MIN_EXAMPLES} examples", field)
            from toolkit.errors import UserError
            from toolkit.models import resolve_generator
            try:
                resolve_generator(self.base(job["model"]))
            except (UserError, OSError, ValueError) as e:
                return self._fail(job, "invalid_model", f"the base model '{job['model']}' cannot be fine-tuned "
                                  f"here: {e}", "model")
            with self._lock:
                if jid in self._cancelled:
                    return
                job = self._update(job, status="queued")
            self.event(jid, "info", "Files validated, moving job to queued state")
        with self._lock:
            if jid in self._cancelled:
                return
            job = self._update(job, status="running")
            spec = {"model": self.base(job["model"]), "dtype": self.dtype, "seed": job["seed"],
                    "training_file": str(self.files_dir / f"{job['training_file']}.jsonl"),
                    "validation_file": str(self.files_dir / f"{job['validation_file']}.jsonl")
                    if job["validation_file"] else None,
                    "hyperparameters": job["hyperparameters"], "out": str(self.jobs_dir / jid / "result.json")}
            _write_json(self.jobs_dir / jid / "spec.json", spec)
            self._proc = subprocess.Popen([sys.executable, "-m", "toolkit.serving.ft_worker",
                                           str(self.jobs_dir / jid / "spec.json")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                          env={**os.environ, "ADAPTBENCH_QUIET": "1"})
        self.event(jid, "info", "Fine-tuning job started")
        _, err = self._proc.communicate()
        with self._lock:
            code, self._proc = self._proc.returncode, None
            if jid in self._cancelled:
                return
            result = self.jobs_dir / jid / "result.json"
            if code != 0 or not result.is_file():
                last = (err or "").strip().splitlines()[-1:] or [f"exit code {code}"]
                return self._fail(job, "training_failed", f"training failed: {last[0]}")
            out = json.loads(result.read_text())
            name = f"ft:{job['model']}:adaptbench:{job['suffix'] or 'model'}:{jid.removeprefix('ftjob-')[:8]}"
            done = {**job, "fine_tuned_model": name, "adapter": out["adapter"]}
            self._serve(done)  # served before the job says it succeeded: a client that polls can call it at once
            job = self._update(done, status="succeeded", finished_at=_now(),
                               trained_tokens=out["info"].get("train_tokens"),
                               hyperparameters={**job["hyperparameters"], **out["hyperparameters"]})
        self.event(jid, "info", f"{out['info'].get('train_examples')} examples, {out['info'].get('epochs_run')} epochs, "
                                f"{out['info'].get('train_s', 0):.1f} s of training")
        self.event(jid, "info", f"New fine-tuned model created: {name}")
        self.event(jid, "info", "The job has successfully completed")

    def _serve(self, job: dict) -> None:
        if job.get("adapter") and Path(job["adapter"]).exists():
            self.register(job["fine_tuned_model"], self.base(job["model"]), Path(job["adapter"]))

    def base(self, model: str) -> str:
        return self.aliases.get(model, model)


def _write_json(path: Path, obj: Any) -> None:
    from toolkit.runs import atomic_write
    atomic_write(path, json.dumps(obj, indent=1))


def install(app, ft: FineTuning) -> None:
    """The fine-tuning routes on an app made by openai_app.base_app."""
    from toolkit.serving.openai_app import _error

    def not_found(what: str, ident: str, param: str):
        return _error(404, f"No such {what}: '{ident}'", "invalid_request_error", param, f"{what}_not_found")

    @app.post("/v1/files")
    async def upload(file: UploadFile = File(...), purpose: str = Form(...)):  # noqa: B008 (FastAPI's way)
        if purpose != "fine-tune":
            return _error(400, f"purpose '{purpose}' is not served here: upload with purpose 'fine-tune'",
                          "invalid_request_error", "purpose")
        data = await file.read()
        try:
            return ft.add_file(file.filename or "upload.jsonl", data, purpose)
        except FormatError as e:
            return _error(400, f"Invalid file format for fine-tuning: {e}", "invalid_request_error", "file",
                          "invalid_file_format")

    @app.get("/v1/files")
    def list_files():
        return {"object": "list", "data": ft.files()}

    @app.get("/v1/files/{fid}")
    def get_file(fid: str):
        return ft.file(fid) or not_found("file", fid, "file_id")

    @app.post("/v1/fine_tuning/jobs")
    def create_job(req: JobRequest):
        if ft.file(req.training_file) is None:
            return not_found("file", req.training_file, "training_file")
        if req.validation_file and ft.file(req.validation_file) is None:
            return not_found("file", req.validation_file, "validation_file")
        for k, v in req.hyperparameters.model_dump().items():
            if isinstance(v, str) and v != "auto":
                return _error(400, f"hyperparameters.{k} must be a number or 'auto'", "invalid_request_error",
                              f"hyperparameters.{k}")
            if not isinstance(v, str) and v <= 0:
                return _error(400, f"hyperparameters.{k} must be positive", "invalid_request_error",
                              f"hyperparameters.{k}")
        return ft.create(req)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(limit: int = 20, after: str | None = None):
        jobs = ft.jobs()[::-1]
        if after:
            ids = [j["id"] for j in jobs]
            jobs = jobs[ids.index(after) + 1:] if after in ids else []
        return {"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit}

    @app.get("/v1/fine_tuning/jobs/{jid}")
    def get_job(jid: str):
        return ft.job(jid) or not_found("fine_tuning_job", jid, "fine_tuning_job_id")

    @app.get("/v1/fine_tuning/jobs/{jid}/events")
    def job_events(jid: str, limit: int = 20):
        if ft.job(jid) is None:
            return not_found("fine_tuning_job", jid, "fine_tuning_job_id")
        ev = ft.events(jid)
        return {"object": "list", "data": ev[:limit], "has_more": len(ev) > limit}

    @app.post("/v1/fine_tuning/jobs/{jid}/cancel")
    def cancel_job(jid: str):
        return ft.cancel(jid) or not_found("fine_tuning_job", jid, "fine_tuning_job_id")
