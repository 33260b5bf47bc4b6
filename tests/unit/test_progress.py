"""Progress on a console that is not a terminal (a CI log, `2> file`): a heartbeat line while
a long step runs, not only the bar's final state when it stops."""

import io

from rich.console import Console

from toolkit import progress


def logged(monkeypatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, width=160, force_terminal=False))
    monkeypatch.setattr(progress, "quiet", False)
    return out


def test_a_logged_bar_prints_heartbeat_lines_as_it_goes(monkeypatch):
    out = logged(monkeypatch)
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)
    with progress.task_bar("Indexing 4 documents", 4) as advance:
        advance(1)
        assert "Indexing 4 documents: 1/4 (25%) · 0:00:00 · eta 0:00:00" in out.getvalue()
        advance(3)
    text = out.getvalue()
    assert "4/4 (100%)" in text
    assert text.count("Indexing 4 documents") >= 3  # two heartbeats and the bar's final state


def test_heartbeats_are_spaced_and_unknown_totals_count(monkeypatch):
    out = logged(monkeypatch)
    with progress.task_bar("Reading rows", None) as advance:
        for _ in range(1000):
            advance(1)
    assert "Reading rows: " not in out.getvalue()  # well inside HEARTBEAT_S: no heartbeat
    assert progress.heartbeat("Reading rows", 1200, None, 3725) == "  Reading rows: 1,200 · 1:02:05"
