"""Rows of a user's data file, one at a time, in bounded memory: JSON Lines, a JSON array, CSV,
TSV, Parquet or a save_to_disk folder.

A file is read as it streams (a 1 GB JSONL costs one line of memory), a line longer than
MAX_LINE_BYTES is refused without being held whole, and every problem names the file and the
line (the row, for Parquet and saved datasets). What the reader accepted quietly (a byte-order
mark, CRLF line ends, a JSON array where JSON Lines was expected) is kept in `RowReader.facts`
for `adaptbench data check` to report. With `errors=` a list, a bad line is recorded there and
the reader goes on (data check wants them all); without it, the first one raises.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from toolkit.data.tables import dataset_rows, is_saved_dataset, parquet_rows, saved_dataset
from toolkit.errors import UserError

FORMAT_OF = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
             ".parquet": "parquet", ".pq": "parquet"}
MAX_LINE_BYTES = 16 * 1024 * 1024   # a row longer than this is not an example anyone trains on
MAX_ARRAY_BYTES = 1024 * 1024 * 1024  # a JSON array is one document: parsed whole, so bounded
BOM = b"\xef\xbb\xbf"


def _utf8(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:  # raw may hold many lines (a JSON array): name the one
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col}); save the file as "
                        "UTF-8, e.g. iconv -f latin1 -t utf-8", file=path, line=line + raw.count(b"\n", 0, e.start)) from None


class RowReader:
    """(line or row number, parsed row) of one data file or folder; see the module docstring."""

    def __init__(self, path: Path, fmt: str | None = None, *, split: str | None = None,
                 where: dict | None = None, errors: list[UserError] | None = None):
        self.path = Path(path)
        self.fmt = fmt or ("hf_disk" if is_saved_dataset(self.path) else FORMAT_OF.get(self.path.suffix.lower()))
        self.split, self.where, self.errors = split, where, errors
        self.facts: dict[str, Any] = {"format": self.fmt, "bom": False, "crlf_lines": 0, "json_array": False,
                                      "blank_lines": 0, "lines": 0, "json_object": None}
        if self.fmt is None and self.path.exists() and not self.path.is_dir():
            raise UserError("unknown data format (use .jsonl, .json, .csv, .tsv or .parquet, a save_to_disk "
                            "folder, or set `format:`)", file=self.path)
        if split is not None and self.fmt != "hf_disk":
            raise UserError("`split` is for a Hugging Face dataset or a saved DatasetDict folder",
                            **(where or {"file": self.path}))

    def _fail(self, err: UserError) -> None:
        if self.errors is None:
            raise err
        self.errors.append(err)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        p = self.path
        if p.is_dir() and self.fmt != "hf_disk":
            raise UserError("is a folder, not a data file (a save_to_disk folder holds dataset_info.json)", file=p)
        if not p.exists():
            raise UserError("data file not found", file=p)
        if self.fmt == "parquet":
            yield from parquet_rows(p)
            return
        if self.fmt == "hf_disk":
            yield from dataset_rows(saved_dataset(p, self.split, where=self.where or {"file": p}))
            return
        try:
            f = p.open("rb")
        except OSError as e:
            raise UserError(f"cannot read the data file: {e.strerror}", file=p) from None
        with f:
            head = f.read(8192)
            f.seek(0)
            if head.startswith(b"PAR1"):
                raise UserError("a Parquet file with a text extension: rename it .parquet or set `format: parquet`",
                                file=p)
            if b"\x00" in head:
                raise UserError("a binary file, not text (JSON Lines, CSV or TSV)", file=p)
            if head.startswith(BOM):
                self.facts["bom"] = True
                f.seek(len(BOM))
            body = head.lstrip(BOM + b" \t\r\n")
            if self.fmt == "jsonl" and body.startswith(b"[") and body[1:].lstrip().startswith((b"{", b"]")):
                yield from self._json_array(f)
            elif self.fmt == "jsonl":
                yield from self._jsonl(f)
            else:
                yield from self._csv(f)

    def _lines(self, f: BinaryIO) -> Iterator[tuple[int, bytes]]:
        """(line number, bytes without the line end); an over-long line is skipped unread."""
        n = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            n += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                size = len(raw)
                while (chunk := f.readline(1 << 20)) and not chunk.endswith(b"\n"):
                    size += len(chunk)
                size += len(chunk)
                self._fail(UserError(f"a line of {size / 2**20:.0f} MiB or more: the longest line read is "
                                     f"{MAX_LINE_BYTES // 2**20} MiB", file=self.path, line=n))
                continue
            if raw.endswith(b"\r\n"):
                self.facts["crlf_lines"] += 1
            self.facts["lines"] = n
            yield n, raw.rstrip(b"\r\n")

    def _jsonl(self, f: BinaryIO) -> Iterator[tuple[int, Any]]:
        for n, raw in self._lines(f):
            if not raw.strip():
                self.facts["blank_lines"] += 1
                continue
            try:
                text = _utf8(raw, self.path, n)
                row = json.loads(text)
                if n == 1 and isinstance(row, dict) and _is_collection(row) and _nothing_after(f):
                    yield from self._object_rows(row)  # the whole file on one line
                    return
                yield n, row
            except UserError as e:
                self._fail(e)
            except json.JSONDecodeError as e:
                if n == 1 and raw.lstrip().startswith(b"{") and (whole := self._whole_object(f)) is not None:
                    yield from self._object_rows(whole)
                    return
                self._fail(UserError(f"malformed JSON: {e.msg} (column {e.colno})", file=self.path, line=n))
            except ValueError as e:  # json's limit on the digits of an integer, say
                self._fail(UserError(f"malformed JSON: {str(e).splitlines()[0][:120]}", file=self.path, line=n))
            except RecursionError:
                self._fail(UserError("malformed JSON: nested too deeply", file=self.path, line=n))

    def _whole_object(self, f: BinaryIO) -> dict | None:
        """The file as one pretty-printed JSON object (a SQuAD-style file, say), or None, with
        the file where it was (after line 1) so that reading goes on from there."""
        here = f.tell()
        if self.path.stat().st_size > MAX_ARRAY_BYTES:
            return None
        f.seek(0)
        try:
            obj = json.loads(f.read().decode("utf-8-sig"))
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            f.seek(here)
            return None
        return obj

    def _object_rows(self, whole: dict) -> Iterator[tuple[int, Any]]:
        """The rows of a file that is one JSON object: SQuAD's layout (data → paragraphs → qas,
        one row per question with its context and first answer) or an object of rows keyed by
        id (PubMedQA's). Rows are numbered in order, as the report says."""
        self.facts["json_object"] = "squad" if _is_squad(whole) else "rows_by_id"
        if _is_squad(whole):
            n = 0
            for a, article in enumerate(whole["data"]):
                paras = article.get("paragraphs") if isinstance(article, dict) else None
                for p, para in enumerate(paras if isinstance(paras, list) else []):
                    qas = para.get("qas") if isinstance(para, dict) else None
                    if not isinstance(qas, list):
                        raise UserError(f"not SQuAD's layout: data[{a}].paragraphs[{p}] needs a `qas` list",
                                        file=self.path)
                    for qa in qas:
                        n += 1
                        if not isinstance(qa, dict):
                            yield n, qa  # refused as a row, with its number
                            continue
                        answers = qa.get("answers")
                        texts = [x.get("text") for x in answers if isinstance(x, dict)] \
                            if isinstance(answers, list) else []
                        yield n, {"id": qa.get("id", n), "question": qa.get("question"),
                                  "answer": texts[0] if texts else None, "context": para.get("context"),
                                  "document_id": para.get("document_id", article.get("title", a))}
            return
        if whole and all(isinstance(v, dict) for v in whole.values()):
            for n, (key, row) in enumerate(whole.items(), 1):
                yield n, {"id": key, **row}
            return
        raise UserError(f"one JSON object (keys: {', '.join(list(whole)[:6])}), not rows: a data file holds JSON "
                        "Lines, a JSON array of rows, SQuAD's layout or an object of rows keyed by id", file=self.path)

    def _json_array(self, f: BinaryIO) -> Iterator[tuple[int, Any]]:
        """A JSON array of row objects (`[{...}, ...]`; a line that is an array of something
        else is a JSON Lines row, and refused as one): accepted (and reported by data check);
        each row is numbered by the line it starts on."""
        self.facts["json_array"] = True
        raw = f.read(MAX_ARRAY_BYTES + 1)
        if len(raw) > MAX_ARRAY_BYTES:
            raise UserError(f"a JSON array over {MAX_ARRAY_BYTES // 2**30} GiB: write it as JSON Lines "
                            "(one object per line), which is read as it streams", file=self.path)
        text = _utf8(raw, self.path, 1)
        dec = json.JSONDecoder()
        pos, line = text.index("[") + 1, 1
        counted = 0
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                raise UserError("malformed JSON array: no closing ]", file=self.path, line=text.count("\n") + 1)
            if text[pos] == "]":
                if rest := text[pos + 1:].strip():
                    raise UserError(f"more after the JSON array's closing ] ({rest[:20]!r}): one array per file, or "
                                    "JSON Lines", file=self.path, line=text.count("\n", 0, pos) + 1)
                return
            line += text.count("\n", counted, pos)
            counted = pos
            try:
                row, pos = dec.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise UserError(f"malformed JSON array: {e.msg}", file=self.path, line=e.lineno) from None
            except ValueError as e:
                raise UserError(f"malformed JSON array: {str(e).splitlines()[0][:120]}", file=self.path,
                                line=line) from None
            except RecursionError:
                raise UserError("malformed JSON: nested too deeply", file=self.path, line=line) from None
            yield line, row

    def _csv(self, f: BinaryIO) -> Iterator[tuple[int, Any]]:
        fmt = self.fmt
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        lines = _Numbered(text, self)
        csv.field_size_limit(MAX_LINE_BYTES)  # the default, 128 KiB, refuses long documents in a column
        reader = csv.DictReader(lines, delimiter="," if fmt == "csv" else "\t")
        try:
            for row in reader:
                # the line a row starts on (a quoted field may span lines); line 1 is the header
                n = lines.n - sum(v.count("\n") for v in row.values() if isinstance(v, str))
                if None in row:
                    self._fail(UserError(f"{len(reader.fieldnames or [])} columns in the header but more in this row",
                                         file=self.path, line=n))
                    continue
                yield n, row
        except csv.Error as e:
            raise UserError(f"malformed {fmt.upper()}: {e}", file=self.path, line=lines.n) from None
        except UnicodeDecodeError:
            # the text layer decodes ahead of the line it returns: find the line in the bytes
            with self.path.open("rb") as again:
                n = 0
                while raw := again.readline(MAX_LINE_BYTES):
                    n += 1
                    _utf8(raw.removeprefix(BOM) if n == 1 else raw, self.path, n)
            raise


def _nothing_after(f: BinaryIO) -> bool:
    """Whether only blank space follows in the file (which is then put back as it was)."""
    here = f.tell()
    rest = f.read(4096)
    f.seek(here)
    return not rest.strip()


def _is_collection(obj: dict) -> bool:
    """A JSON object that holds rows rather than being one: SQuAD's layout, or rows keyed by id
    (every value an object and no key a row would have)."""
    return _is_squad(obj) or (len(obj) > 1 and all(isinstance(v, dict) for v in obj.values())
                              and not {"messages", "prompt", "question", "input", "text", "metadata"} & set(obj))


def _is_squad(obj: dict) -> bool:
    data = obj.get("data")
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "paragraphs" in data[0]


class _Numbered:
    """The lines of a CSV as the csv module reads them, counting lines, CRLF ends and the line
    with the line length capped."""

    def __init__(self, text: io.TextIOWrapper, reader: RowReader):
        self.text, self.reader, self.n = text, reader, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.text.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise StopIteration
        if len(line) > MAX_LINE_BYTES:
            raise UserError(f"a line over {MAX_LINE_BYTES // 2**20} MiB", file=self.reader.path, line=self.n + 1)
        self.n += 1
        self.reader.facts["lines"] = self.n
        if line.endswith("\r\n"):
            self.reader.facts["crlf_lines"] += 1
        return line


def iter_rows(path: Path, fmt: str | None = None, *, split: str | None = None, where: dict | None = None,
              errors: list[UserError] | None = None) -> Iterator[tuple[int, Any]]:
    """(line or row number, parsed row) of a data file or save_to_disk folder (see RowReader)."""
    yield from RowReader(path, fmt, split=split, where=where, errors=errors)
