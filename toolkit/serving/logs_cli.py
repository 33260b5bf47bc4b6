"""`adaptbench logs`: list a prediction log, or export what production taught as training data."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from toolkit.errors import UserError


def open_log(db: Path) -> sqlite3.Connection:
    from toolkit.serving.log import connect
    db = Path(db)
    if not db.is_file():
        raise UserError("no such prediction log (adaptbench serve writes RUN_DIR/serve.db)", file=db)
    try:
        con = connect(db, readonly=True)
        con.execute("SELECT 1 FROM predictions LIMIT 1").fetchall()
        con.execute("SELECT 1 FROM feedback LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        raise UserError(f"not a prediction log: {e}", file=db) from None
    return con


def parse_since(since: str | None) -> str | None:
    """An ISO date or time (UTC unless it says otherwise), as the log stores times."""
    if not since:
        return None
    try:
        t = datetime.fromisoformat(since)
    except ValueError:
        raise UserError(f"'{since}' is not an ISO date or time (e.g. 2026-11-24 or 2026-11-24T10:00)",
                        field="--since") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def list_logs(db: Path, *, arm=None, user=None, since=None, feedback=None, limit=50, as_json=False) -> int:
    from toolkit.serving.log import query
    con = open_log(db)
    rows = query(con, arm=arm, user=user, since=parse_since(since), feedback=feedback, limit=limit or None)
    total = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    con.close()
    if as_json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{db}: {len(rows)} of {total} requests" + (" (latest)" if limit and len(rows) == limit else ""))
    for col in ("time (UTC)", "request id", "arm", "user", "input", "output", "score", "latency"):
        t.add_column(col, overflow="fold", justify="right" if col in ("score", "latency") else "left")

    def cut(s, n=60):
        s = " ".join(str(s or "").split())
        return s if len(s) <= n else s[:n - 1] + "…"

    for r in rows:
        score = "" if r["feedback_score"] is None else f"{r['feedback_score']:g}"
        if r["feedback_correction"]:
            score += " ✎"
        t.add_row(r["created_at"][:19].replace("T", " "), r["request_id"], r["arm"] + (" (routed)" if r["routed"] else ""),
                  r["user_id"] or "", cut(r["input"]), cut(r["output"]), score,
                  f"{r['latency_s']:.2f}s" if r["latency_s"] is not None else "")
    Console(width=200 if not os.isatty(1) else None).print(t)
    print("score: the latest feedback (0 bad .. 1 good); ✎ a correction was given")
    return 0


def export_training(db: Path, out: Path, *, min_score: float = 1.0, arm=None, since=None) -> int:
    """Corrected answers (their correction) and answers rated at least `min_score` (as they
    were), as OpenAI chat-format JSONL: {"messages": [user, assistant]}. The question is what
    the client asked; the arm adds its own instruction and passages when it trains. Written
    atomically: an interrupted export leaves no half-written file."""
    from toolkit.runs import atomic_write
    from toolkit.serving.log import query

    con = open_log(db)
    rows = query(con, arm=arm, since=parse_since(since), feedback="any")
    con.close()
    lines, corrected, rated = [], 0, 0
    seen = set()
    for r in rows:
        if r["feedback_correction"] and r["feedback_correction"].strip():
            answer = r["feedback_correction"].strip()
            corrected += 1
        elif r["feedback_score"] is not None and r["feedback_score"] >= min_score and r["output"].strip():
            answer = r["output"].strip()
            rated += 1
        else:
            continue
        key = (r["input"].strip(), answer)
        if key in seen:  # the same question answered the same way: one training row
            continue
        seen.add(key)
        lines.append(json.dumps({"messages": [{"role": "user", "content": r["input"].strip()},
                                              {"role": "assistant", "content": answer}]}, ensure_ascii=False))
    if not lines:
        raise UserError(f"nothing to export: of {len(rows)} requests with feedback, none has a correction or a score "
                        f"of at least {min_score:g}", file=db)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} training examples to {out} ({corrected} corrected, {rated} rated ≥ {min_score:g}; "
          f"{corrected + rated - len(lines)} duplicates dropped)")
    return 0
