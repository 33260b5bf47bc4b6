"""Content-addressed cache (hash of canonical JSON, as simonw/llm does).

Keys leave out settings that do not change the result (batch size, progress
display). Layout under the cache root ($ADAPTBENCH_CACHE, default
~/.cache/adaptbench):
  models/      dequantised bundled models
  indexes/     Chroma collections, one folder per knowledge-base source and indexing settings
  adapters/    LoRA adapters (safetensors + adapter_config.json)
  predictions.sqlite   model requests (answers, likelihoods) and judge scores, keyed by a
                       content hash of the request (toolkit.backends.cache)
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def locked(artifact: Path):
    """An inter-process lock beside a cache artifact (`<artifact>.lock`, filelock): runs that
    share a cache (parallel CI jobs, teammates) build each artifact once, and the others wait
    for it and then read it. Inside, build into a temporary name and publish with a rename."""
    # filelock: imported on first use, not when this module loads
    from filelock import FileLock
    artifact.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(artifact) + ".lock"):
        yield


def cache_root(create: bool = True) -> Path:
    root = Path(os.environ.get("ADAPTBENCH_CACHE") or Path.home() / ".cache" / "adaptbench").expanduser()
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(canonical(obj).encode("utf-8")).hexdigest()[:n]


def file_hash(path: Path, n: int = 16) -> str:
    """sha256 of a file, or of every file below a folder (sorted by relative path)."""
    h = hashlib.sha256()
    paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in paths:
        if path.is_dir():
            h.update(p.relative_to(path).as_posix().encode() + b"\x00")
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:n]


class PredictionCache:
    """SQLite key-value store of finished results: (kind, key) -> JSON record. The request
    cache stores generations ('gen'), likelihoods ('ll', 'choices') and judge scores ('judge')
    under content hashes."""

    SCHEMA = [
        ("001_predictions", "CREATE TABLE IF NOT EXISTS predictions ("
                            " fingerprint TEXT NOT NULL, example_id TEXT NOT NULL, record TEXT NOT NULL,"
                            " created REAL DEFAULT (julianday('now')), PRIMARY KEY (fingerprint, example_id))"),
    ]

    def __init__(self, path: Path | None = None):
        self.path = path or cache_root() / "predictions.sqlite"
        self._lock = threading.Lock()
        # Several runs may share the cache: WAL lets readers and one writer work at once, and
        # a writer waits (up to 60 s) for another's commit instead of failing with "locked".
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 60000")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("BEGIN IMMEDIATE")  # one process at a time applies the migrations
        try:
            self.db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY)")
            done = {r[0] for r in self.db.execute("SELECT name FROM _migrations")}
            for name, sql in self.SCHEMA:  # named, append-only migrations
                if name not in done:
                    self.db.execute(sql)
                    self.db.execute("INSERT INTO _migrations VALUES (?)", (name,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def get_many(self, fingerprint: str, ids: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                q = f"SELECT example_id, record FROM predictions WHERE fingerprint=? AND example_id IN ({','.join('?' * len(chunk))})"
                for eid, rec in self.db.execute(q, [fingerprint, *chunk]):
                    out[eid] = json.loads(rec)
        return out

    def put_many(self, fingerprint: str, records: dict[str, dict]) -> None:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany("INSERT OR REPLACE INTO predictions (fingerprint, example_id, record) VALUES (?,?,?)",
                                    [(fingerprint, k, json.dumps(v)) for k, v in records.items()])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()
