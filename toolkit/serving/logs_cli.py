"""`adaptbench logs`: list a prediction log, or export what production taught as training data."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from toolkit.errors import UserError
from toolkit.serving.log import connect, query

UNSAFE = re.compile("[\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")  # C1 controls, bidi marks


def open_log(db: Path) -> sqlite3.Connection:
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


def printable(s, n: int | None = 60) -> str:
    """Logged text made safe for a terminal: whitespace runs as one space, control and escape
    characters shown as \\xNN (a logged answer must never move the cursor or clear the
    screen), cut to n characters."""
    s = " ".join(str(s or "").split())
    s = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in s)
    return s if n is None or len(s) <= n else s[:n - 1] + "…"


def list_logs(db: Path, *, arm=None, user=None, since=None, feedback=None, limit=50, as_json=False) -> int:
    con = open_log(db)
    try:
        rows = query(con, arm=arm, user=user, since=parse_since(since), feedback=feedback, limit=limit or None)
        if as_json:  # one line per row as it is read: any size of log
            for r in rows:  # JSON escapes C0 controls; C1 controls and bidi overrides are escaped too
                print(UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(r, ensure_ascii=False)))
            return 0
        # rich: imported on first use, not when this module loads
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        shown = list(rows) if limit else None
        total = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        t = Table(title=Text(f"{printable(db, None)}: {len(shown) if shown is not None else total} of {total} requests"
                             + (" (latest)" if limit and shown is not None and len(shown) == limit else "")))
        for col in ("time (UTC)", "request id", "arm", "user", "input", "output", "score", "latency"):
            t.add_column(col, overflow="fold", justify="right" if col in ("score", "latency") else "left")
        for r in shown if shown is not None else query(con, arm=arm, user=user, since=parse_since(since),
                                                       feedback=feedback):
            score = "" if r["feedback_score"] is None else f"{r['feedback_score']:g}"
            if r["feedback_correction"]:
                score += " ✎"
            status = "" if r.get("status", "ok") == "ok" else f" [{r['status']}]"
            # Text, not markup: a logged "[/oops]" is shown as written, never parsed
            t.add_row(*(Text(x) for x in (
                r["created_at"][:19].replace("T", " "), printable(r["request_id"], None),
                printable(r["arm"], None) + (" (routed)" if r["routed"] else "") + status, printable(r["user_id"]),
                printable(r["input"]), printable(r["output"]), score,
                f"{r['latency_s']:.2f}s" if r["latency_s"] is not None else "")))
        Console(width=200 if not os.isatty(1) else None).print(t)
    finally:
        con.close()
    print("score: the latest feedback (0 bad .. 1 good); ✎ a correction was given")
    return 0


def export_training(db: Path, out: Path, *, min_score: float = 1.0, arm=None, since=None) -> int:
    """Corrected answers (their correction) and answers rated at least `min_score` (as they
    were), as OpenAI chat-format JSONL: {"messages": [user, assistant]}. The question is what
    the client asked; the arm adds its own instruction and passages when it trains. Written
    atomically: an interrupted export leaves no half-written file."""

    con = open_log(db)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    n_rows = written = corrected = rated = 0
    seen = set()
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r in query(con, arm=arm, since=parse_since(since), feedback="any"):
                n_rows += 1
                if r["feedback_correction"] and r["feedback_correction"].strip():
                    answer = r["feedback_correction"].strip()
                    corrected += 1
                elif (r["feedback_score"] is not None and r["feedback_score"] >= min_score and r["output"].strip()
                      and r.get("status", "ok") == "ok"):  # a cancelled or failed answer is no example
                    answer = r["output"].strip()
                    rated += 1
                else:
                    continue
                key = (r["input"].strip(), answer)
                if key in seen:  # the same question answered the same way: one training row
                    continue
                seen.add(key)
                f.write(json.dumps({"messages": [{"role": "user", "content": r["input"].strip()},
                                                 {"role": "assistant", "content": answer}]}, ensure_ascii=False) + "\n")
                written += 1
        if not written:
            raise UserError(f"nothing to export: of {n_rows} requests with feedback, none has a correction or a score "
                            f"of at least {min_score:g}", file=db)
        os.replace(tmp, out)
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
    print(f"wrote {written} training examples to {out} ({corrected} corrected, {rated} rated ≥ {min_score:g}; "
          f"{corrected + rated - written} duplicates dropped)")
    return 0
