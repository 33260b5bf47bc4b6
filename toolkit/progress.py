"""rich progress bars and status lines, on stderr so stdout stays parseable."""

from __future__ import annotations

import contextlib
import os
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
if not console.is_terminal:  # piped or logged: no terminal width to respect, so do not wrap tables at 80
    console = Console(stderr=True, highlight=False, width=160)
# only process 0 of a distributed launch draws progress
quiet = bool(os.environ.get("ADAPTBENCH_QUIET")) or os.environ.get("RANK", "0") != "0"


def progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console, transient=False, disable=quiet)


# rich allows one live display per console: depth of open bars and spinners, so that one
# opened inside another (a validation pass inside a training bar) draws nothing instead of
# raising LiveError
_outer = [0]


@contextlib.contextmanager
def live_region():
    """Marks a live display as open for the duration (see _outer)."""
    _outer[0] += 1
    try:
        yield
    finally:
        _outer[0] -= 1


@contextlib.contextmanager
def status(message: str):
    if quiet or _outer[0]:
        yield
        return
    with live_region(), console.status(message):
        yield
    console.print(f"[green]✓[/] {message}")



@contextlib.contextmanager
def drawn(make_bar):
    """Yields the bar `make_bar()` builds, started, or None when quiet or inside another live
    display; the bar is stopped on the way out, also when the body raises."""
    if quiet or _outer[0]:
        yield None
        return
    with live_region(), make_bar() as p:
        yield p


# Piped or logged (CI): a live bar draws only when it stops, so an hour-long index build would
# print nothing for an hour; there a plain line every HEARTBEAT_S seconds says how far it is.
HEARTBEAT_S = 30.0


def clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def heartbeat(description: str, done: int, total: int | None, elapsed: float) -> str:
    if not total:
        return f"  {description}: {done:,} · {clock(elapsed)}"
    eta = f" · eta {clock(elapsed / done * (total - done))}" if done else ""
    return f"  {description}: {done:,}/{total:,} ({done / total:.0%}) · {clock(elapsed)}{eta}"


@contextlib.contextmanager
def task_bar(description: str, total: int | None):
    """A progress bar; yields advance(n). Inside another bar it draws nothing; on a console that
    is not a terminal it also prints a heartbeat line at most every HEARTBEAT_S seconds."""
    with drawn(progress) as p:
        if p is None:
            yield lambda n=1: None
            return
        t = p.add_task(description, total=total)
        if console.is_terminal:
            yield lambda n=1: p.advance(t, n)
            return
        start = last = time.monotonic()
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done, last
            p.advance(t, n)
            done += n
            now = time.monotonic()
            if now - last >= HEARTBEAT_S:
                last = now
                console.print(heartbeat(description, done, total, now - start))
        yield advance


def log(message: str) -> None:
    if not quiet:
        console.print(message)
