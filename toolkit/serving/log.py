"""The prediction log of `adaptbench serve`: one SQLite row per answered request, committed
before the response is sent, and the feedback clients send about it.

SQLite in WAL mode with `synchronous=FULL`: a reader (`adaptbench logs`, `adaptbench ab`)
never blocks the server, and a committed row survives the server being killed (and the
machine losing power). The schema grows by named migrations, applied once each, in order,
and recorded in `schema_migrations`, so an older log opens in a newer adaptbench.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_predictions", """
        CREATE TABLE predictions (
            id                INTEGER PRIMARY KEY,
            request_id        TEXT NOT NULL UNIQUE,
            created_at        TEXT NOT NULL,
            arm               TEXT NOT NULL,
            model             TEXT,             -- the name the client asked for
            routed            INTEGER NOT NULL DEFAULT 0,  -- 1: the A/B router chose the arm
            user_id           TEXT,
            endpoint          TEXT NOT NULL,    -- chat.completions | completions
            input             TEXT NOT NULL,    -- the query (last user message, or the prompt)
            output            TEXT NOT NULL,    -- the first choice
            passages          TEXT NOT NULL DEFAULT '[]',  -- JSON [{doc_id, score}]
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            latency_s         REAL,
            queue_s           REAL,
            run               TEXT              -- the run directory the arm was rebuilt from
        );
        CREATE INDEX predictions_arm_time ON predictions (arm, created_at);
        CREATE INDEX predictions_user ON predictions (user_id);
    """),
    ("0002_feedback", """
        CREATE TABLE feedback (
            id          INTEGER PRIMARY KEY,
            request_id  TEXT NOT NULL REFERENCES predictions (request_id),
            created_at  TEXT NOT NULL,
            score       REAL,                   -- 0 (bad) .. 1 (good), thumbs up/down is 1/0
            correction  TEXT,                   -- the answer it should have given
            comment     TEXT
        );
        CREATE INDEX feedback_request ON feedback (request_id);
    """),
    ("0003_status", """
        ALTER TABLE predictions ADD COLUMN status TEXT NOT NULL DEFAULT 'ok';  -- ok | cancelled | error
        ALTER TABLE predictions ADD COLUMN error TEXT
    """),
]

# the latest feedback of each request, joined to its prediction
LATEST_FEEDBACK = """
    SELECT p.*, f.score AS feedback_score, f.correction AS feedback_correction, f.comment AS feedback_comment,
           f.created_at AS feedback_at
    FROM predictions p LEFT JOIN feedback f
      ON f.id = (SELECT MAX(id) FROM feedback WHERE request_id = p.request_id)
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Prediction:
    request_id: str
    arm: str
    endpoint: str
    input: str
    output: str
    model: str | None = None
    routed: bool = False
    user_id: str | None = None
    passages: list[dict] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    queue_s: float | None = None
    run: str | None = None
    status: str = "ok"          # ok | cancelled (the client left; output is what it was sent) | error
    error: str | None = None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to a prediction log, migrated to the current schema (unless read-only)."""
    if readonly:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))  # the log holds users' questions: owner only
        con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA busy_timeout=10000")
    con.row_factory = sqlite3.Row
    if not readonly:
        migrate(con)
    return con


def migrate(con: sqlite3.Connection) -> list[str]:
    """Apply the migrations this log has not had yet, each in its own transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {r[0] for r in con.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        con.execute("BEGIN IMMEDIATE")
        try:
            if con.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (name,)).fetchone() is None:
                for stmt in sql.split(";"):  # no semicolons inside the statements above
                    if stmt.strip():
                        con.execute(stmt)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, now_iso()))
                applied.append(name)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return applied


class PredictionLog:
    """The server's handle on its log: thread-safe, every write committed at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.con = connect(self.path)
        self._lock = threading.Lock()

    def add(self, p: Prediction) -> None:
        with self._lock:
            self.con.execute(
                "INSERT INTO predictions (request_id, created_at, arm, model, routed, user_id, endpoint, input, output, "
                "passages, prompt_tokens, completion_tokens, latency_s, queue_s, run, status, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (p.request_id, now_iso(), p.arm, p.model, int(p.routed), p.user_id, p.endpoint, p.input, p.output,
                 json.dumps(p.passages or []), p.prompt_tokens, p.completion_tokens, p.latency_s, p.queue_s, p.run,
                 p.status, p.error))

    def feedback(self, request_id: str, score: float | None, correction: str | None, comment: str | None) -> str | None:
        """Record feedback; the arm that answered, or None for an unknown request id."""
        with self._lock:
            row = self.con.execute("SELECT arm FROM predictions WHERE request_id = ?", (request_id,)).fetchone()
            if row is None:
                return None
            self.con.execute("INSERT INTO feedback (request_id, created_at, score, correction, comment) "
                             "VALUES (?, ?, ?, ?, ?)", (request_id, now_iso(), score, correction, comment))
            return row["arm"]

    def close(self) -> None:
        with self._lock:
            try:
                self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self.con.close()


def query(con: sqlite3.Connection, *, arm: str | None = None, user: str | None = None, since: str | None = None,
          feedback: str | None = None, limit: int | None = None, status: str | None = None) -> Iterator[dict[str, Any]]:
    """Predictions with their latest feedback, oldest first, read as they are needed (a log of
    any size in constant memory). `feedback`: 'any' (has some), 'none', 'corrected'; `limit`:
    the latest N only."""
    where, args = [], []
    for col, val in (("p.arm", arm), ("p.user_id", user), ("p.status", status)):
        if val:
            where.append(f"{col} = ?")
            args.append(val)
    if since:
        where.append("p.created_at >= ?")
        args.append(since)
    if feedback == "any":
        where.append("f.id IS NOT NULL")
    elif feedback == "none":
        where.append("f.id IS NULL")
    elif feedback == "corrected":
        where.append("f.correction IS NOT NULL AND f.correction != ''")
    sql = LATEST_FEEDBACK + (" WHERE " + " AND ".join(where) if where else "")
    if limit:  # the latest N, then in order
        sql = f"SELECT * FROM ({sql} ORDER BY p.id DESC LIMIT ?) ORDER BY id"
        args.append(limit)
    else:
        sql += " ORDER BY p.id"
    for r in con.execute(sql, args):
        row = dict(r)
        row["passages"] = json.loads(row["passages"] or "[]")
        yield row
