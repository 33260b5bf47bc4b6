"""OpenAI's fine-tuning jobs, answered locally by `adaptbench serve --model`: the files and
jobs on disk, the quotas, and the one thread that trains them in order.

A job goes validating_files -> queued -> running -> succeeded | failed | cancelled. Jobs train
one at a time with adaptbench's LoRA trainer, each in a child process
(`toolkit.serving.ft_worker`) that dies with the server, so cancelling one stops it at once;
the trainer writes its adapter to a temporary folder and renames it only when complete, so
a cancelled job leaves no model behind and its name is never served. A succeeded job's model,
`ft:BASE:adaptbench:SUFFIX:ID`, is announced to `register` (at start too, for the jobs of
earlier runs), which serves it as a LoRA adapter over the base model, loaded on first use.

The client never names a server path: a job's base model is one of those the server was
started with, file and job ids are checked against their pattern before any path is built
from them, and an error says what went wrong without the server's paths. Files and state are
written 0600 in a 0700 folder.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.serving.ft_formats import check_training_file

MIN_EXAMPLES = 10           # OpenAI's minimum for a training file
DEFAULT_EPOCHS, DEFAULT_BATCH, BASE_LR = 3, 8, 1e-3  # "auto" hyperparameters; lr = BASE_LR × multiplier
TERMINAL = ("succeeded", "failed", "cancelled")
FILE_ID = re.compile(r"file-[0-9a-f]{24}")
JOB_ID = re.compile(r"ftjob-[0-9a-f]{24}")


@dataclass
class Quotas:
    """What the fine-tuning API may take of the server."""
    max_files: int = 100
    max_stored_bytes: int = 1 << 30     # all uploaded files together
    max_pending_jobs: int = 4           # validating, queued or running
    max_jobs: int = 1000                # kept in all (their state is read on every listing)
    max_epochs: int = 20
    max_batch_size: int = 64


class QuotaExceeded(ValueError):
    pass


def _now() -> int:
    return int(time.time())


def private_write(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (a rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    private_write(path, json.dumps(obj, indent=1).encode())


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The training child gets SIGKILL when the server goes, even by kill -9 (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def scrub(message: str, *roots: Path) -> str:
    """An error for a client: the server's folders replaced by '…'."""
    for r in roots:
        message = message.replace(str(r), "…")
    return re.sub(r"(/[\w.\-]+){2,}", "…", message)[:300]


class FineTuning:
    """Files and jobs, kept in `root` (JSON files, so they outlive the server), and the one
    thread that runs jobs in order. `bases` maps the names a job may give as `model` to the
    base model it trains; `register(name, base, adapter)` is called for every succeeded job's
    model, `unregister(name)` when one is deleted."""

    def __init__(self, root: Path, *, bases: dict[str, str], register, unregister=None, dtype: str = "auto",
                 quotas: Quotas | None = None):
        self.root = Path(root)
        self.files_dir, self.jobs_dir = self.root / "files", self.root / "jobs"
        for d in (self.root, self.files_dir, self.jobs_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        self.bases, self.register, self.unregister, self.dtype = dict(bases), register, unregister, dtype
        self.served_name = next(iter(self.bases), "")  # what errors name (never a path the server loaded)
        self.quotas = quotas or Quotas()
        self.skipped: list[str] = []  # state files that could not be read (reported at start)
        self._lock = threading.RLock()  # _fail re-takes it inside locked sections
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._cancelled: set[str] = set()
        for job in self.jobs():  # a server stopped mid-job: the job did not finish
            if job["status"] not in TERMINAL:
                self._update(job, status="failed", finished_at=_now(),
                             error={"code": "server_restarted", "param": None,
                                    "message": "the server stopped before the job finished; create it again"})
            elif job["status"] == "succeeded" and not job.get("deleted"):
                self._serve(job)
        if self.skipped:
            print(f"fine-tuning: skipped {len(self.skipped)} unreadable state file(s): {', '.join(self.skipped[:5])}",
                  file=sys.stderr, flush=True)
        self._thread = threading.Thread(target=self._run, daemon=True, name="fine-tuning")
        self._thread.start()

    # reading state: a damaged file is reported and skipped, never fatal
    def _read(self, path: Path) -> dict | None:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            return obj if isinstance(obj, dict) and "id" in obj and "created_at" in obj else None
        except (OSError, ValueError):
            rel = str(path.relative_to(self.root))
            if rel not in self.skipped:
                self.skipped.append(rel)
            return None

    # files
    def add_file(self, filename: str, data: bytes, purpose: str) -> dict:
        n, fmt = check_training_file(data)
        with self._lock:
            files = self.files()
            if len(files) >= self.quotas.max_files:
                raise QuotaExceeded(f"this server keeps at most {self.quotas.max_files} files: delete some first")
            if sum(f["bytes"] for f in files) + len(data) > self.quotas.max_stored_bytes:
                raise QuotaExceeded(f"this server keeps at most {self.quotas.max_stored_bytes} bytes of files: "
                                    f"delete some first")
            fid = f"file-{uuid.uuid4().hex[:24]}"
            private_write(self.files_dir / f"{fid}.jsonl", data)
            meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": _now(),
                    "filename": filename[:256], "purpose": purpose, "status": "processed", "examples": n,
                    "format": fmt}
            _write_json(self.files_dir / f"{fid}.json", meta)
        return meta

    def file(self, fid: str) -> dict | None:
        if not FILE_ID.fullmatch(fid or ""):
            return None
        p = self.files_dir / f"{fid}.json"
        return self._read(p) if p.is_file() else None

    def files(self) -> list[dict]:
        got = (self._read(p) for p in self.files_dir.glob("file-*.json"))
        return sorted((f for f in got if f is not None), key=lambda f: f["created_at"])

    def delete_file(self, fid: str) -> bool:
        if self.file(fid) is None:
            return False
        with self._lock:
            for suffix in (".jsonl", ".json"):
                (self.files_dir / f"{fid}{suffix}").unlink(missing_ok=True)
        return True

    # jobs
    def base(self, model: str) -> str | None:
        """The base model a job's `model` names, or None if this server does not train it."""
        return self.bases.get(model)

    def create(self, req) -> dict:
        hp = req.hyperparameters
        with self._lock:
            jobs = self.jobs()
            if len(jobs) >= self.quotas.max_jobs:
                raise QuotaExceeded(f"this server keeps at most {self.quotas.max_jobs} jobs")
            pending = sum(1 for j in jobs if j["status"] not in TERMINAL)
            if pending >= self.quotas.max_pending_jobs:
                raise QuotaExceeded(f"{pending} jobs are waiting or running (this server takes "
                                    f"{self.quotas.max_pending_jobs}); wait for one to finish, or cancel one")
            job = {"id": f"ftjob-{uuid.uuid4().hex[:24]}", "object": "fine_tuning.job", "created_at": _now(),
                   "finished_at": None, "model": req.model, "fine_tuned_model": None,
                   "organization_id": "adaptbench", "status": "validating_files", "training_file": req.training_file,
                   "validation_file": req.validation_file, "result_files": [], "trained_tokens": None,
                   "error": None, "seed": req.seed if req.seed is not None else 0, "suffix": req.suffix,
                   "hyperparameters": {"n_epochs": hp.n_epochs, "learning_rate_multiplier": hp.learning_rate_multiplier,
                                       "batch_size": hp.batch_size}}
            (self.jobs_dir / job["id"]).mkdir(mode=0o700)
            self._save(job)
        self.event(job["id"], "info", f"Validating training file: {req.training_file}")
        self._wake.set()
        return job

    def job(self, jid: str) -> dict | None:
        if not JOB_ID.fullmatch(jid or ""):
            return None
        p = self.jobs_dir / jid / "job.json"
        return self._read(p) if p.is_file() else None

    def jobs(self) -> list[dict]:
        got = (self._read(p) for p in self.jobs_dir.glob("ftjob-*/job.json"))
        return sorted((j for j in got if j is not None), key=lambda j: j["created_at"])

    def events(self, jid: str) -> list[dict]:
        if self.job(jid) is None:
            return []
        p = self.jobs_dir / jid / "events.jsonl"
        rows = []
        for x in (p.read_text(encoding="utf-8", errors="replace").splitlines() if p.is_file() else []):
            try:
                rows.append(json.loads(x))
            except ValueError:
                continue
        return rows[::-1]  # newest first, as OpenAI lists them

    def event(self, jid: str, level: str, message: str) -> None:
        row = {"object": "fine_tuning.job.event", "id": f"ftevent-{uuid.uuid4().hex[:24]}", "created_at": _now(),
               "level": level, "message": message, "type": "message"}
        fd = os.open(self.jobs_dir / jid / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
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

    def delete_model(self, name: str) -> bool:
        """Stop serving a fine-tuned model and forget it (its job stays, marked deleted)."""
        with self._lock:
            job = next((j for j in self.jobs() if j.get("fine_tuned_model") == name and not j.get("deleted")), None)
            if job is None:
                return False
            self._update(job, deleted=True)
        if self.unregister is not None:
            self.unregister(name)
        return True

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
        with self._lock:  # a cancel that came meanwhile stands
            now = self.job(job["id"]) or job
            if now["status"] in TERMINAL or job["id"] in self._cancelled:
                return
            self._update(now, status="failed", finished_at=_now(),
                         error={"code": code, "message": message, "param": param})
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
                    except Exception as e:  # noqa: BLE001 -- a job's failure never stops the queue
                        self._fail(self.job(job["id"]) or job, "internal_error",
                                   scrub(f"{type(e).__name__}: {e}", self.root))

    def _validate(self, job: dict) -> bool:
        for field in ("training_file", "validation_file"):
            fid = job[field]
            if fid is None:
                continue
            meta = self.file(fid)
            if meta is None:
                self._fail(job, "invalid_file", f"{field} '{fid}' is not an uploaded file", field)
                return False
            if field == "training_file" and meta["examples"] < MIN_EXAMPLES:
                self._fail(job, "invalid_training_file", f"Training file has {meta['examples']} example(s), but "
                           f"must have at least {MIN_EXAMPLES} examples", field)
                return False
        if self.base(job["model"]) is None:
            self._fail(job, "invalid_model", f"the model '{job['model']}' is not trained by this server", "model")
            return False
        return True

    def _one(self, job: dict) -> None:
        jid = job["id"]
        if job["status"] == "validating_files":
            if not self._validate(job):
                return
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
                                          env={**os.environ, "ADAPTBENCH_QUIET": "1"},
                                          preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.event(jid, "info", "Fine-tuning job started")
        _, err = self._proc.communicate()
        with self._lock:
            code, self._proc = self._proc.returncode, None
            if jid in self._cancelled:
                return
            result = self.jobs_dir / jid / "result.json"
            if code != 0 or not result.is_file():
                last = (err or "").strip().splitlines()[-1:] or [f"exit code {code}"]
                return self._fail(job, "training_failed", "training failed: " + scrub(last[0], self.root))
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
        base = self.base(job["model"])
        if base and job.get("adapter") and Path(job["adapter"]).exists():
            self.register(job["fine_tuned_model"], base, Path(job["adapter"]))
