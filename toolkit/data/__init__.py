"""Examples: JSONL/CSV reading, cleaning, dedup, and seeded splits.

Accepted JSONL rows (one JSON object per line):
  {"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]}
  {"prompt": "...", "completion": "..."}
  {"question": "...", "answer": "...", "context_ids": ["doc-1"], "label": "..."}
Classification rows may give the class as `label` (or as the answer/completion).
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.data.rows import FORMAT_OF as FORMAT_OF  # re-exported: what init and data check accept
from toolkit.data.rows import iter_rows
from toolkit.errors import UserError

INPUT_KEYS = ("question", "input", "text", "query")
TARGET_KEYS = ("answer", "target", "output", "response")


@dataclass
class Example:
    """One labelled item. Strategies never see `target`, `label` or `context_ids` of test items."""

    id: str
    input: str
    target: str
    label: str | None = None
    context_ids: list[str] = field(default_factory=list)
    system: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # "file:line" for error messages
    # the labels this item may take when narrower than the suite's (multiple choice: its own
    # letters, which the model sees in the input anyway); empty means all of the suite's labels
    options: list[str] = field(default_factory=list)

    def to_query(self) -> "Query":
        return Query(id=self.id, input=self.input, options=tuple(self.options))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Query:
    """What a strategy is given at answer time: no gold answer, no gold documents."""

    id: str
    input: str
    options: tuple[str, ...] = ()  # see Example.options


@dataclass
class Passage:
    """A retrieved chunk: the document it came from, its text and similarity."""

    doc_id: str
    text: str
    score: float


@dataclass
class Prediction:
    """One answer of an arm to one Query, with what it cost."""

    id: str
    output: str
    contexts: list[Passage] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0   # what a caller waited for this answer
    compute_s: float = 0.0   # the amortised compute of this answer (a batch's time over its size)
    cached: bool = False     # came from the request cache
    label_probs: dict[str, float] = field(default_factory=dict)  # likelihood-scored labels: each one's probability

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Prediction":
        d = dict(d)
        d["contexts"] = [Passage(**c) for c in d.get("contexts", [])]
        return cls(**d)


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    notes: list[str] = field(default_factory=list)  # what cleaning did, for the report

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def normalize_text(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).lower()
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", s)).strip()


def stable_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _clean(s: Any) -> str:
    return re.sub(r"[ \t]+\n", "\n", str(s)).strip()


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _multiple_choice(row: dict, question: Any, answer: Any, *, path, line, field) -> tuple[str, str, list[str]]:
    """Question + lettered choices as the input; the correct letter as target and label; the
    item's letters. The answer may be a 0-based index, a letter, or the text of a choice."""
    choices = row.get("choices", row.get("options"))
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or \
            not all(isinstance(c, (str, int, float)) and str(c).strip() for c in choices):
        raise UserError("must be a list of 2 to 26 non-empty choices", file=path, line=line, field="choices")
    choices = [_clean(c) for c in choices]
    letters = LETTERS[:len(choices)]
    idx = None
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        idx = answer
    elif isinstance(answer, str):
        a = answer.strip()
        if len(a) == 1 and a.upper() in letters:
            idx = letters.index(a.upper())
        elif a.isdigit() and int(a) < len(choices):
            idx = int(a)
        else:
            norm = [normalize_text(c).lower() for c in choices]
            if normalize_text(a).lower() in norm:
                idx = norm.index(normalize_text(a).lower())
    if idx is None:
        raise UserError(f"must be the 0-based index, the letter or the text of one of the {len(choices)} choices "
                        f"(got {str(answer)[:40]!r})", file=path, line=line, field=field)
    if not isinstance(question, str) or not question.strip():
        raise UserError("must be a non-empty string", file=path, line=line, field="question")
    text = _clean(question) + "\n" + "\n".join(f"{l}. {c}" for l, c in zip(letters, choices))
    return text, letters[idx], list(letters)


NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | None:
    """The first number in an answer ('about 1,250.5 mAh' -> 1250.5), or None: how a regression
    target is read here and how an answer is scored (toolkit.scoring.metrics)."""
    m = NUMBER.search(text or "")
    if not m:
        return None
    try:
        return float(m.group().replace(",", ""))
    except ValueError:
        return None


def _only_number(s: str) -> bool:
    return re.fullmatch(r"\s*[-+]?(\d[\d,]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", s) is not None


def example_from_row(row: Any, *, origin: tuple[Path, int], task: str,
                     fields: dict[str, str] | None = None) -> Example:
    """Turn one parsed row into an Example or raise UserError naming file, line and field.
    Long because each accepted row shape (chat messages, prompt/completion, question/answer,
    text/label, choices) is checked here in one place, in the order a user reads the error."""
    path, line = origin
    if not isinstance(row, dict):
        raise UserError("each line must be a JSON object", file=path, line=line)
    fields = fields or {}
    if fields:
        row = {**row, **{ours: row[theirs] for ours, theirs in fields.items() if theirs in row}}
        for ours, theirs in fields.items():
            if theirs not in row and ours not in row:
                raise UserError(f"column '{theirs}' not found (mapped to '{ours}')", file=path, line=line, field=theirs)

    system = None
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise UserError("must be a non-empty list of {role, content}", file=path, line=line, field="messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UserError("each message needs 'role' and 'content'", file=path, line=line, field=f"messages[{i}]")
        if msgs[-1]["role"] != "assistant":
            raise UserError("the last message must be the assistant's answer", file=path, line=line, field="messages")
        users = [m for m in msgs if m["role"] == "user"]
        if not users:
            raise UserError("needs a user message", file=path, line=line, field="messages")
        systems = [m for m in msgs if m["role"] == "system"]
        system = _clean(systems[0]["content"]) if systems else None
        inp, tgt = users[-1]["content"], msgs[-1]["content"]
        in_key, tgt_key = "messages", "messages"
    elif "prompt" in row:
        in_key, tgt_key = "prompt", ("completion" if "completion" in row else "label")
        inp, tgt = row["prompt"], row.get(tgt_key)
    else:
        in_key = next((k for k in INPUT_KEYS if k in row), None)
        if in_key is None:
            cols = ", ".join(list(row)[:12])
            raise UserError("no question: a row needs `messages`, `prompt`/`completion`, or `question`/`answer` "
                            f"(columns: {cols}; map yours with `fields:`)", file=path, line=line, field="question")
        inp = row[in_key]
        tgt_key = next((k for k in TARGET_KEYS if k in row), "label")
        tgt = row.get(tgt_key)

    label = row.get("label")
    options: list[str] = []
    if task == "multiple_choice":
        inp, tgt, options = _multiple_choice(row, inp, tgt, path=path, line=line, field=tgt_key)
        label = tgt
    if task == "classification":
        if label is None:
            label = tgt
        if tgt is None:
            tgt = label
    if tgt is None:
        raise UserError("missing answer", file=path, line=line, field=tgt_key if tgt_key != "label" else "answer")
    if not isinstance(inp, str) or not inp.strip():
        raise UserError("must be a non-empty string", file=path, line=line, field=in_key)
    if not isinstance(tgt, (str, int, float)) or not str(tgt).strip():
        raise UserError("must be a non-empty string", file=path, line=line, field=tgt_key)
    if task == "regression":
        if isinstance(tgt, bool) or (parse_number(str(tgt)) is None or not _only_number(str(tgt))):
            raise UserError(f"must be a number for task: regression (got {str(tgt)[:40]!r})", file=path, line=line,
                            field=tgt_key)
    ctx = row.get("context_ids", [])
    if isinstance(ctx, str):
        ctx = [ctx]
    if not isinstance(ctx, list) or not all(isinstance(c, (str, int)) for c in ctx):
        raise UserError("must be a list of document ids", file=path, line=line, field="context_ids")
    meta = row.get("metadata") or {}
    if not isinstance(meta, dict):
        raise UserError("must be an object", file=path, line=line, field="metadata")
    if "category" in row and "category" not in meta and fields.get("label") != "category":
        meta = {**meta, "category": row["category"]}
    inp_c = _clean(inp)
    rid = row.get("id")
    return Example(
        id=str(rid) if rid is not None else stable_id(inp_c + "\x00" + str(tgt)),
        input=inp_c, target=_clean(tgt), label=_clean(label) if label is not None else None,
        context_ids=[str(c) for c in ctx], system=system, metadata=meta, origin=f"{path}:{line}",
        options=options,
    )


def read_examples(path: Path, *, task: str, fmt: str | None = None, fields: dict[str, str] | None = None,
                  split: str | None = None, where: dict | None = None) -> list[Example]:
    """The examples of one data file or save_to_disk folder (see iter_rows)."""
    return examples_from_rows(iter_rows(path, fmt, split=split, where=where), path, task=task, fields=fields)


def peek_rows(path: Path, n: int = 20_000, *, split: str | None = None) -> list[dict]:
    """Up to n raw rows of a data file or saved dataset, as dicts (before any field mapping):
    what `adaptbench init` looks at to guess the task and the columns."""
    out = []
    for _, row in iter_rows(path, split=split, where={"file": path}, errors=[]):  # a bad line: the next one
        if not isinstance(row, dict):
            continue
        out.append(row)
        if len(out) >= n:
            break
    return out


def examples_from_rows(rows, origin: Path | str, *, task: str, fields: dict[str, str] | None) -> list[Example]:
    """Examples from (row number, row dict) pairs: Parquet, saved and hub datasets."""
    out = [example_from_row(row, origin=(origin, n), task=task, fields=fields) for n, row in rows]
    if not out:
        raise UserError("no examples in file", file=origin)
    return out


def dedup(examples: list[Example]) -> tuple[list[Example], int]:
    seen: set[tuple[str, str]] = set()
    kept = []
    for ex in examples:
        key = (normalize_text(ex.input), normalize_text(ex.target))
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept, len(examples) - len(kept)


def stratify_ok(labels: list[str | None], n_part: int) -> bool:
    """Whether a stratified split of `labels` into n_part and the rest is possible: every
    label twice or more, and both parts at least as large as the number of labels."""
    counts = Counter(labels)
    return (None not in counts and min(counts.values()) >= 2
            and min(n_part, len(labels) - n_part) >= len(counts))


def split_examples(examples: list[Example], *, fractions: tuple[float, float], seed: int,
                   stratify: bool) -> tuple[list[Example], list[Example], list[Example]]:
    """Seeded train/validation/test split; stratified by label when asked and possible."""
    # scipy, sklearn, pandas: imported on first use, not when this module loads
    from sklearn.model_selection import train_test_split

    val_frac, test_frac = fractions
    labels = [e.label for e in examples]
    n_test = max(1, round(len(examples) * test_frac))
    strat = labels if stratify and stratify_ok(labels, n_test) else None
    rest, test = train_test_split(examples, test_size=n_test, random_state=seed, stratify=strat)
    if val_frac <= 0:
        return rest, [], test
    n_val = max(1, round(len(examples) * val_frac))
    labels = [e.label for e in rest]
    strat = labels if stratify and stratify_ok(labels, n_val) else None
    train, val = train_test_split(rest, test_size=n_val, random_state=seed, stratify=strat)
    return train, val, test


def subsample(examples: list[Example], n: int | None, *, seed: int, stratify: bool) -> list[Example]:
    if n is None or n >= len(examples):
        return examples
    # scipy, sklearn, pandas: imported on first use, not when this module loads
    from sklearn.model_selection import train_test_split

    labels = [e.label for e in examples]
    strat = labels if stratify and stratify_ok(labels, n) else None
    kept, _ = train_test_split(examples, train_size=n, random_state=seed, stratify=strat)
    return kept


def shuffled(items: list, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items
