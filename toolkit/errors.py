"""User-facing errors: one line naming file, line and field; exit code 2."""

from __future__ import annotations

import re
from pathlib import Path


class UserError(Exception):
    """Bad input from the user. The CLI prints `str(err)` alone and exits 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None,
                 line: int | None = None, field: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class MissingModelError(UserError):
    """A bundled model package is not installed."""


def read_utf8(path: Path, what: str = "file") -> str:
    """A user's text file as str (a leading byte-order mark is dropped), or a UserError that
    names the line of the first byte that is not UTF-8, or says the path is a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"is a folder, not a {what}", file=path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} not found", file=path) from None
    except OSError as e:
        raise UserError(f"cannot read the {what}: {e.strerror}", file=path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); save the {what} as UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8", file=path, line=line) from None


NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"  # a suite, arm or model name that may become a path


def check_name(name: object, what: str = "name") -> str:
    """A name the program may turn into a path (a run directory, an arm's adapter folder):
    letters, digits, `_`, `-` and `.`, at most 64 characters, not starting with `.` or `-`
    (so never `.`, `..` or an option). Raises ValueError saying so."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{what} {name!r} is not a safe name: use letters, digits, '_', '-' and '.' (at most 64, "
                         f"starting with a letter, digit or '_'), e.g. rag_k5")
    return name


def inside(parent: Path, *parts: str) -> Path:
    """parent / parts, refused (ValueError) unless the result stays inside parent: every path
    built from user input goes through here."""
    parent = Path(parent)
    out = parent.joinpath(*parts)
    base = parent.resolve()
    if out.resolve() != base and base not in out.resolve().parents:
        raise ValueError(f"{'/'.join(parts)!r} would leave {parent}")
    return out
