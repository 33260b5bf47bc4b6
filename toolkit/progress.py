"""rich progress bars and status lines, on stderr so stdout stays parseable."""

from __future__ import annotations

import contextlib
import os

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


@contextlib.contextmanager
def task_bar(description: str, total: int):
    """A progress bar; yields advance(n). Inside another bar it draws nothing."""
    with drawn(progress) as p:
        if p is None:
            yield lambda n=1: None
            return
        t = p.add_task(description, total=total)
        yield lambda n=1: p.advance(t, n)


def log(message: str) -> None:
    if not quiet:
        console.print(message)
