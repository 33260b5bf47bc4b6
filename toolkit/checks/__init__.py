"""`adaptbench data check` (toolkit.checks): one report on a suite's data (or a data file's) before any model trains.

The checks, in the order the report shows them:
  - format: every line that does not read, with its number; the checks of OpenAI's legacy
    `prepare_data` tool (example count, extra columns, common prompt prefix and suffix, stop
    sequences, leading whitespace, upper case) and of its chat-format cookbook (data_type,
    missing_messages_list, message_missing_key, message_unrecognized_key, unrecognized_role,
    missing_content, example_missing_assistant_message); what was accepted quietly (BOM, CRLF,
    a JSON array, rows of mixed shapes);
  - sizes per split, tokens per role with the generator's tokenizer, and what each training
    arm's max_seq_length would cut;
  - exact and near duplicates (MiniLM cosine) within a split and across splits (leakage);
  - labels: distribution, imbalance, labels test has and train lacks, rare labels;
  - training tokens x epochs, time (from a measured probe, toolkit.training.probe) and money.

A finding is an error when `adaptbench run` would refuse the data, a warning when the run
would go on but the numbers would suffer, and information otherwise. Exit 0, 1, 2 follow.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.checks import lengths
from toolkit.config import FileSpec, LoadedSuite
from toolkit.data import Example, dedup, example_from_row, normalize_text, split_examples
from toolkit.data.kb import read_knowledge_base
from toolkit.data.loaders import run_loader
from toolkit.data.rows import RowReader
from toolkit.data.suite_data import field_path
from toolkit.data.tables import dataset_rows, hub_dataset
from toolkit.errors import UserError

LEVELS = ("error", "warning", "info")
SHOWN = 10                 # locations kept per finding
MIN_EXAMPLES = 100         # OpenAI's prepare_data: at least a hundred; a few hundred is better
RARE_LABEL = 5             # fewer train examples than this: a class is rarely learnt
IMBALANCE_WARN = 10.0      # largest / smallest class in train
MAX_NEAR_PAIRS = 10_000    # near pairs counted per pair of splits before the search stops
CHAT_KEYS = {"role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id"}
CHAT_ROLES = {"system", "user", "assistant", "function", "tool"}
KNOWN_COLUMNS = {"messages", "prompt", "completion", "id", "label", "context_ids", "metadata", "category",
                 "choices", "options", "question", "input", "text", "query", "answer", "target", "output", "response",
                 "tools", "functions", "parallel_tool_calls"}


@dataclass
class Finding:
    level: str              # error, warning or info
    code: str               # stable name, e.g. malformed_line, leakage_exact, message_unrecognized_key
    message: str            # plain words
    count: int = 0          # how many rows (or pairs) it concerns
    where: list[str] = field(default_factory=list)  # "file:line: detail", the first SHOWN

    def summary(self) -> str:
        n = f" ({self.count})" if self.count > 1 else ""
        return f"{self.level}: {self.message}{n}"


class Findings:
    def __init__(self):
        self.items: dict[tuple[str, str], Finding] = {}

    def add(self, level: str, code: str, message: str, at: str | None = None, n: int = 1) -> None:
        f = self.items.setdefault((code, message), Finding(level, code, message))
        f.count += n
        if at is not None and len(f.where) < SHOWN:
            f.where.append(at)

    def sorted(self) -> list[Finding]:
        return sorted(self.items.values(), key=lambda f: (LEVELS.index(f.level), -f.count))


@dataclass
class DataReport:
    target: str
    suite: str
    task: str
    splits: dict[str, int]
    files: dict[str, list[str]]                  # split -> the files it was read from
    findings: list[Finding]
    tokens: dict[str, Any] = field(default_factory=dict)      # tokenizer, per split and role: percentiles
    truncation: dict[str, Any] = field(default_factory=dict)  # arm -> max_seq_length, examples over, tokens cut
    duplicates: dict[str, Any] = field(default_factory=dict)  # exact and near counts, threshold, pairs
    labels: dict[str, Any] = field(default_factory=dict)      # per split counts, imbalance, top terms
    estimate: dict[str, Any] = field(default_factory=dict)    # training tokens, probe, seconds, $
    recommendations: list[str] = field(default_factory=list)
    lengths: dict[str, list[int]] = field(default_factory=dict)  # train tokens per example, for the histogram

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.warnings else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = self.exit_code()
        return d


# ---------------------------------------------------------------- reading, leniently

def _shape(row: dict) -> str:
    if "messages" in row:
        return "chat"
    if "prompt" in row:
        return "prompt_completion"
    return "columns"


def chat_problems(row: Any) -> list[tuple[str, str]]:
    """The error types of OpenAI's chat-format cookbook that apply to one row: (code, detail)."""
    if not isinstance(row, dict):
        return [("data_type", "a row must be a JSON object")]
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return [("missing_messages_list", "`messages` must be a non-empty list")]
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            out.append(("message_missing_key", f"messages[{i}] needs `role` and `content`"))
            continue
        if extra := sorted(set(m) - CHAT_KEYS):
            out.append(("message_unrecognized_key", f"messages[{i}] has {', '.join(extra)}"))
        if m.get("role") not in CHAT_ROLES:
            out.append(("unrecognized_role", f"messages[{i}] has role {str(m.get('role'))[:30]!r}"))
        content = m.get("content")
        if (not isinstance(content, str) or not content.strip()) and not m.get("function_call") \
                and not m.get("tool_calls"):
            out.append(("missing_content", f"messages[{i}] ({m.get('role')}) has no text"))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
        out.append(("example_missing_assistant_message", "no assistant message"))
    return out


COOKBOOK = {"data_type": "rows must be JSON objects",
            "missing_messages_list": "rows without a `messages` list",
            "message_missing_key": "messages without `role` or `content`",
            "message_unrecognized_key": "messages with keys OpenAI's fine-tuning API refuses (adaptbench ignores them)",
            "unrecognized_role": "messages with a role OpenAI does not know (adaptbench reads only system, user "
                                 "and the last assistant message)",
            "missing_content": "messages with no text",
            "example_missing_assistant_message": "rows without an assistant message (nothing to learn or score)"}


@dataclass
class FileScan:
    examples: list[Example]
    shapes: Counter
    columns: Counter
    prompts: list[str] = field(default_factory=list)      # raw prompt/completion text, for the legacy checks
    completions: list[str] = field(default_factory=list)


def scan_file(path: Path, *, task: str, fmt: str | None, fields: dict[str, str], split: str | None,
              where: dict | None, findings: Findings) -> FileScan:
    """Every row of one file: the examples that read, a finding for each that does not."""
    bad: list[UserError] = []
    reader = RowReader(path, fmt, split=split, where=where, errors=bad)
    scan = FileScan([], Counter(), Counter())
    first_shape: dict[str, int] = {}
    try:
        for n, row in reader:
            _scan_row(path, n, row, task, fields, scan, first_shape, findings)
    except UserError as e:  # the file as a whole cannot be read on (binary, a line past the limit in a CSV...)
        findings.add("error", "unreadable_file", "files that cannot be read", e.format())
    for e in bad:
        findings.add("error", "malformed_line", "lines that do not parse", e.format())
    reader.facts["lines_failed"] = len(bad) + sum(1 for f in findings.items.values() if f.code == "unreadable_file")
    _file_facts(path, reader.facts, scan, first_shape, fields, findings)
    return scan


def _scan_row(path: Path, n: int, row: Any, task: str, fields: dict[str, str], scan: FileScan,
              first_shape: dict[str, int], findings: Findings) -> None:
    """One row: an example, or a finding with its line; the cookbook's chat checks."""
    at = f"{path}:{n}"
    shape = _shape(row) if isinstance(row, dict) else "other"
    scan.shapes[shape] += 1
    first_shape.setdefault(shape, n)
    if isinstance(row, dict):
        scan.columns.update(row.keys())
    problems = chat_problems(row) if shape == "chat" or not isinstance(row, dict) else []
    try:
        ex = example_from_row(row, origin=(path, n), task=task, fields=fields)
    except UserError as e:
        code = problems[0][0] if problems else "unreadable_row"
        findings.add("error", code, "rows that do not read" if code == "unreadable_row" else COOKBOOK[code],
                     f"{at}: " + (f"{e.field}: " if e.field else "") + e.message)
        return
    for code, detail in problems:  # read by adaptbench, refused by OpenAI's fine-tuning API
        findings.add("warning", code, COOKBOOK[code], f"{at}: {detail}")
    scan.examples.append(ex)
    if shape == "prompt_completion" and isinstance(row.get("completion"), str):
        scan.prompts.append(str(row["prompt"]))
        scan.completions.append(row["completion"])


def _file_facts(path: Path, facts: dict, scan: FileScan, first_shape: dict[str, int], fields: dict[str, str],
                findings: Findings) -> None:
    if not sum(scan.shapes.values()) and not facts.get("lines_failed"):
        findings.add("error", "empty_file", "a data file with no rows", f"{path}: no examples in file")
    if facts.get("bom"):
        findings.add("info", "bom", "a UTF-8 byte-order mark at the start (accepted)", str(path))
    if facts.get("crlf_lines"):
        findings.add("info", "crlf", "Windows line ends, CRLF (accepted)", f"{path}: {facts['crlf_lines']} lines")
    if facts.get("json_array"):
        findings.add("info", "json_array", "a JSON array where JSON Lines was expected (accepted; data prepare "
                     "writes JSON Lines)", str(path))
    if facts.get("json_object"):
        findings.add("info", "json_object", "one JSON object read as rows: " + (
            "SQuAD's layout, one row per question with its paragraph as `context`" if facts["json_object"] == "squad"
            else "an object of rows keyed by id") + " (accepted)", str(path))
    if len([s for s in scan.shapes if s != "other"]) > 1:
        shown = ", ".join(f"{s} from line {n}" for s, n in sorted(first_shape.items(), key=lambda kv: kv[1]))
        findings.add("warning", "mixed_shapes", "rows of different shapes in one file (each is read by its own "
                     "shape; OpenAI's API wants one)", f"{path}: {shown}")
    used = KNOWN_COLUMNS | set(fields.values())
    if extra := sorted(c for c in scan.columns if c not in used):
        findings.add("info", "extra_columns", "columns adaptbench does not read (ignored)",
                     f"{path}: {', '.join(extra[:12])}")


def _common_prefix(texts: list[str]) -> str:
    return os.path.commonprefix(texts) if len(texts) > 1 else ""


def _common_suffix(texts: list[str]) -> str:
    return _common_prefix([t[::-1] for t in texts])[::-1]


def legacy_checks(scan: FileScan, path: Path, findings: Findings) -> None:
    """OpenAI's legacy prepare_data checks of prompt/completion rows, said as they apply here: a
    chat template marks where an answer starts and the end-of-turn token where it stops, so a
    separator and a stop sequence are not needed, but if the data has them the clients must too."""
    p, c = scan.prompts, scan.completions
    if len(p) < 2:
        return
    if (pre := _common_prefix(p)).strip():
        findings.add("info", "prompt_prefix", f"every prompt starts with {pre[:40]!r}: it is sent, and paid for, "
                     "with every query (an instruction belongs in the suite's `instruction:`)", str(path))
    if (suf := _common_suffix(p)).strip():
        findings.add("info", "prompt_separator", f"every prompt ends with the separator {suf[-20:]!r}: clients must "
                     "send it too (none is needed: the chat template marks where the answer starts)", str(path))
    else:
        findings.add("info", "no_separator", "no common separator at the end of prompts: none is needed (the chat "
                     "template marks where the answer starts)", str(path))
    if (stop := _common_suffix(c)).strip():
        findings.add("info", "stop_sequence", f"every completion ends with {stop[-20:]!r}: put it in generator.stop, "
                     "or drop it (answers end at the end-of-turn token)", str(path))
    lead = sum(1 for x in c if x[:1].isspace())
    if lead:
        findings.add("info", "leading_whitespace", "completions that start with whitespace (stripped on reading; "
                     "OpenAI's legacy API wanted it, chat models do not)", str(path), n=lead)
    letters = "".join(ch for x in c[:5000] for ch in x if ch.isalpha())
    if letters and sum(ch.isupper() for ch in letters) / len(letters) > 1 / 3:
        findings.add("info", "uppercase", "more than a third of the completions' letters are upper case: lower "
                     "case may learn faster, unless case matters", str(path))


# ---------------------------------------------------------------- the suite's splits

@dataclass
class ReadData:
    splits: dict[str, list[Example]]
    files: dict[str, list[str]]
    kb: Any = None
    duplicates: dict[str, Any] = field(default_factory=dict)  # one file: its repeats, dropped before the split


def _read_spec(loaded: LoadedSuite, spec: FileSpec, name: str, findings: Findings, files: list[str]) -> list[Example]:
    s = loaded.suite
    loc = field_path(name)
    if spec.hf is not None:
        ds = hub_dataset(spec.hf, spec.config, spec.split, spec.revision, where=loaded.where(*loc, "hf"))
        files.append(spec.source)
        out = []
        for n, row in dataset_rows(ds):
            try:
                out.append(example_from_row(row, origin=(spec.source, n), task=s.task, fields=spec.fields))
            except UserError as e:
                findings.add("error", "unreadable_row", "rows that do not read", e.format())
        return out
    p = loaded.resolve(spec.path, f"{name}.path")
    files.append(str(p))
    where = loaded.where(*loc, "split") if spec.split is not None or p.is_dir() else None
    scan = scan_file(p, task=s.task, fmt=spec.format, fields=spec.fields or {}, split=spec.split, where=where,
                     findings=findings)
    legacy_checks(scan, p, findings)
    return scan.examples


def read_suite_data(loaded: LoadedSuite, findings: Findings) -> ReadData:
    """The suite's splits as `run` reads them, but with every bad row a finding rather than the
    first one an error, and before deduplication (which the checks report instead)."""
    s, d = loaded.suite, loaded.suite.data
    files: dict[str, list[str]] = defaultdict(list)
    if d.loader:
        train, val, test, kb = run_loader(d.loader, d.loader_args, suite_path=loaded.path,
                                          resolve=lambda p, f: loaded.resolve(p, f), seed=s.seed)
        where = str(loaded.resolve(d.loader_args["path"], "data.loader_args.path"))
        files.update({"train": [where], "validation": [where], "test": [where]})
        return ReadData({"train": train, "validation": val, "test": test}, dict(files), kb)
    if d.file:
        every = _read_spec(loaded, d.file, "data.file", findings, files["train"])
        files["validation"] = files["test"] = files["train"]
        if len(every) < 3:
            if every:
                findings.add("error", "too_few", "too few examples to split into train and test",
                             f"{files['train'][0]}: {len(every)} examples")
            return ReadData({"train": every, "validation": [], "test": []}, dict(files))
        dups = {}
        if d.dedup:  # as the run does: repeats go before the split, so the splits are the run's
            dups = exact_duplicates({"file": every}, findings, conflicts=False)
            every, _ = dedup(every)
        train, val, test = split_examples(every, fractions=(d.split.validation, d.split.test), seed=d.split.seed,
                                          stratify=s.has_labels)
        return ReadData({"train": train, "validation": val, "test": test}, dict(files), duplicates=dups)
    splits = {"train": _read_spec(loaded, d.train, "data.train", findings, files["train"]),
              "validation": _read_spec(loaded, d.validation, "data.validation", findings, files["validation"])
              if d.validation else [],
              "test": _read_spec(loaded, d.test, "data.test", findings, files["test"])}
    for i, spec in enumerate(d.extra_train):
        splits["train"] += _read_spec(loaded, spec, f"data.extra_train.{i}", findings, files["train"])
    return ReadData(splits, dict(files))


# ---------------------------------------------------------------- duplicates and leakage

def gold_documents(loaded: LoadedSuite, kb, splits: dict[str, list[Example]], findings: Findings) -> None:
    """Every `context_ids` entry names a document of the knowledge base, as the run requires."""
    s = loaded.suite
    if kb is None and s.kb_path and s.kb_path != "loader":
        kb = read_knowledge_base(loaded.resolve(s.kb_path, "knowledge_base"), suite_path=loaded.path)
    if kb is None:
        return
    known = {d.id for d in kb.documents}
    for part in splits.values():
        for e in part:
            for c in e.context_ids:
                if c not in known:
                    findings.add("error", "unknown_document", "gold documents the knowledge base lacks",
                                 f"{e.origin}: context_ids: document {c!r} is not in the knowledge base")


def duplicate_ids(splits: dict[str, list[Example]], findings: Findings, *, dedup: bool) -> None:
    """Two rows with one id, as the run refuses them (after data.dedup has dropped exact repeats)."""
    seen: dict[str, Example] = {}
    for part in splits.values():
        for e in part:
            first = seen.setdefault(e.id, e)
            if first is e:
                continue
            same = (normalize_text(e.input), normalize_text(e.target)) == \
                (normalize_text(first.input), normalize_text(first.target))
            if not (dedup and same):
                findings.add("error", "duplicate_id", "rows that share an id", f"{e.origin}: id: duplicate id "
                             f"{e.id!r} (first seen at {first.origin})")


def exact_duplicates(splits: dict[str, list[Example]], findings: Findings, *, conflicts: bool = True) -> dict[str, Any]:
    """Repeated rows within a split, questions asked twice with different answers, and test or
    validation questions that train also asks."""
    out: dict[str, Any] = {}
    first_q: dict[str, dict[str, Example]] = {}
    for name, part in splits.items():
        seen: dict[tuple[str, str], Example] = {}
        by_q: dict[str, Example] = {}
        dups = n_conflicts = 0
        for e in part:
            q, a = normalize_text(e.input), normalize_text(e.target)
            if (q, a) in seen:
                dups += 1
                findings.add("warning", "duplicate_exact", f"rows repeated within {name} (run drops the copies: "
                             "data.dedup)", f"{e.origin}: a repeat of {seen[(q, a)].origin}")
            elif q in by_q and conflicts:
                n_conflicts += 1
                findings.add("warning", "conflicting_answers", f"the same question with different answers in {name}",
                             f"{e.origin}: {e.target[:40]!r} against {by_q[q].target[:40]!r} at {by_q[q].origin}")
            seen.setdefault((q, a), e)
            by_q.setdefault(q, e)
        first_q[name] = by_q
        out[name] = {"duplicates": dups, "conflicts": n_conflicts}
    why = {"test": "test questions that train also asks (run drops them: a score on them measures memory)",
           "validation": "validation questions that train also asks (early stopping and model choice then reward "
                         "memory)"}
    for held in ("validation", "test"):
        leaks = [e for q, e in first_q.get(held, {}).items() if q in first_q.get("train", {})]
        out[f"train_{held}_leaks"] = len(leaks)
        for e in leaks:
            findings.add("warning", "leakage_exact", why[held],
                         f"{e.origin}: also at {first_q['train'][normalize_text(e.input)].origin}")
    return out


def near_pairs(vecs: np.ndarray, other: np.ndarray | None, threshold: float, block: int | None = None):
    """(i, j, cosine) with cosine >= threshold: within `vecs` (i < j) or between `vecs` and
    `other`; blockwise, so memory stays at block x n floats (at most 2**25: 128 MB)."""
    target = vecs if other is None else other
    block = block or max(16, min(1024, 2**25 // max(1, len(target))))
    for start in range(0, len(vecs), block):
        sims = vecs[start:start + block] @ target.T
        if other is None:  # each pair once, not a row with itself
            sims[np.tril_indices(len(sims), k=start, m=sims.shape[1])] = -1
        for i, j in zip(*np.nonzero(sims >= threshold)):
            yield start + int(i), int(j), float(sims[i, j])


def near_duplicates(splits: dict[str, list[Example]], embedder: str, threshold: float,
                    findings: Findings) -> dict[str, Any]:
    """Questions whose embeddings are at least `threshold` alike but whose normalised text
    differs (exact repeats are the exact check's), within train and across splits."""
    # the embedder (torch, sentence-transformers): loaded only when near duplicates are looked for
    from toolkit.models import embed
    from toolkit.progress import status

    names = [n for n in ("train", "validation", "test") if splits.get(n)]
    with status(f"Embedding {sum(len(splits[n]) for n in names)} questions with {embedder} (near duplicates)"):
        vecs = {n: embed(embedder, [e.input for e in splits[n]]) for n in names}
    out: dict[str, Any] = {"threshold": threshold, "embedder": embedder, "pairs": []}
    pairs = [(n, None) for n in names] + [("train", h) for h in ("validation", "test") if h in vecs and "train" in vecs]
    for a, b in pairs:
        key = f"{a}" if b is None else f"{a}_{b}"
        count = 0
        for i, j, sim in near_pairs(vecs[a], vecs[b] if b else None, threshold):
            if count >= MAX_NEAR_PAIRS:  # thousands of template rows: enough to say so
                out[f"{key}_capped"] = True
                break
            x, y = splits[a][i], splits[b or a][j]
            if normalize_text(x.input) == normalize_text(y.input):
                continue
            count += 1
            # within a split a near pair is redundancy (or a template with one name changed: read the
            # pairs); across splits it is leakage
            what = f"near-duplicate questions within {a} (cosine >= {threshold})" if b is None else \
                f"{b} questions nearly the same as a train question (leakage: cosine >= {threshold})"
            findings.add("warning" if b else "info", "leakage_near" if b else "duplicate_near",
                         what, f"{y.origin} ~ {x.origin}: cosine {sim:.3f}")
            if len(out["pairs"]) < 50:
                out["pairs"].append({"splits": key, "a": x.origin, "b": y.origin, "cosine": round(sim, 4),
                                     "a_text": x.input[:160], "b_text": y.input[:160]})
        out[key] = count
    return out


# ---------------------------------------------------------------- labels

def label_checks(splits: dict[str, list[Example]], suite_labels: list[str] | None, findings: Findings) -> dict:
    counts = {n: Counter(e.label for e in part if e.label) for n, part in splits.items()}
    train = counts.get("train", Counter())
    out: dict[str, Any] = {"counts": {n: dict(c.most_common()) for n, c in counts.items()}}
    if suite_labels:
        allowed = set(suite_labels)
        for n, part in splits.items():
            for e in part:
                if e.label not in allowed:
                    findings.add("error", "unknown_label", "labels the suite does not list",
                                 f"{e.origin}: {str(e.label)[:40]!r}")
    if train:
        hi, lo = train.most_common()[0], train.most_common()[-1]
        ratio = hi[1] / lo[1]
        out["imbalance"] = {"largest": list(hi), "smallest": list(lo), "ratio": round(ratio, 2)}
        if ratio >= IMBALANCE_WARN:
            findings.add("warning", "imbalance", f"imbalanced classes in train: '{hi[0]}' has {hi[1]} examples, "
                         f"'{lo[0]}' {lo[1]} ({ratio:.0f}:1); macro-F1 and per-class recall tell more than "
                         "accuracy here", None)
        elif ratio >= 3:
            findings.add("info", "imbalance", f"classes in train range from {lo[1]} ('{lo[0]}') to {hi[1]} "
                         f"('{hi[0]}') examples ({ratio:.1f}:1)", None)
        for label in sorted(l for l, c in train.items() if c < RARE_LABEL):
            findings.add("warning", "rare_labels", f"labels with fewer than {RARE_LABEL} train examples",
                         f"{label!r}: {train[label]}")
        for held in ("validation", "test"):
            for label in sorted(set(counts.get(held, {})) - set(train)):
                findings.add("warning", "unseen_labels", f"labels {held} has and train never shows (fine-tuning "
                             "and few-shot cannot learn them)", f"{label!r}: {counts[held][label]} in {held}")
        out["top_terms"] = top_terms(splits.get("train", []))
    return out


def top_terms(examples: list[Example], k: int = 6, most_labels: int = 40) -> dict[str, list[str]]:
    """The words most particular to each label in train (by how much more often they appear
    under it than overall): what a reader checks a label against."""
    by_label: dict[str, Counter] = defaultdict(Counter)
    for e in examples:
        words = set(w for w in normalize_text(e.input).split() if len(w) > 2 and not w.isdigit())
        by_label[str(e.label)].update(words)
    overall = Counter()
    for c in by_label.values():
        overall.update(c)
    n_labels = len(by_label)
    out = {}
    for label, c in sorted(by_label.items(), key=lambda kv: -sum(kv[1].values()))[:most_labels]:
        total = sum(c.values()) or 1
        score = {w: (n / total) / ((overall[w] + n_labels) / (sum(overall.values()) + n_labels)) for w, n in c.items()
                 if n >= 2}
        out[label] = [w for w, _ in sorted(score.items(), key=lambda kv: -kv[1])[:k]]
    return out


# ---------------------------------------------------------------- the whole check

def check_suite(loaded: LoadedSuite, *, target: str | None = None, near: float = 0.95, probe: bool = True) -> DataReport:
    """Every check of the module docstring on a loaded suite's data."""
    s = loaded.suite
    findings = Findings()
    data = read_suite_data(loaded, findings)
    splits = data.splits
    sizes = {n: len(p) for n, p in splits.items()}
    report = DataReport(target=target or str(loaded.path), suite=s.name, task=s.task, splits=sizes,
                        files=data.files, findings=[])
    trains = [n for n, (_, cfg) in loaded.arms.items() if getattr(cfg, "trains_locally", False)
              or getattr(cfg, "method", None) == "openai_api"]
    if not splits["test"] and not any(f.level == "error" for f in findings.items.values()):  # else they say why
        findings.add("error", "empty_test", "no test examples", f"{loaded.path}: the test split is empty")
    if trains and 0 < sizes["train"] < MIN_EXAMPLES:
        findings.add("warning", "few_examples", f"{sizes['train']} training examples: OpenAI's prepare_data "
                     f"recommends at least {MIN_EXAMPLES}, and a few hundred train well; fine-tuning results on "
                     "fewer are noisy (few-shot and RAG need fewer)", None)
    if any(splits.values()):
        report.duplicates = {**data.duplicates, **exact_duplicates(splits, findings)}
        duplicate_ids(splits, findings, dedup=s.data.dedup)
        gold_documents(loaded, data.kb, splits, findings)
        if s.data.dedup and splits["test"] and report.duplicates.get("train_test_leaks") == \
                len({normalize_text(e.input) for e in splits["test"]}) and \
                not any(f.level == "error" for f in findings.items.values()):  # a test split read in full
            findings.add("error", "every_test_in_train", "every test question also appears in train",
                         f"{loaded.path}: data.test: all {len(splits['test'])} test questions also appear in train "
                         "(the run drops them all)")
        if near > 0:
            report.duplicates["near"] = near_duplicates(splits, s.embedder.model, near, findings)
        if s.has_labels:
            report.labels = label_checks(splits, s.labels, findings)
        lengths.measure(loaded, splits, report, findings, trains=trains, probe=probe)
    report.findings = findings.sorted()
    report.recommendations = recommendations(report)
    return report


def recommendations(r: DataReport) -> list[str]:
    """What to do next, in plain words, from the findings."""
    codes = {f.code for f in r.findings}
    out = []
    if r.errors:
        out.append(f"Fix what is listed as errors ({sum(f.count for f in r.errors)}) first: `adaptbench run` stops "
                   "on them. Each names its file and line.")
    if codes & {"leakage_exact", "leakage_near"}:
        out.append("Some held-out questions also appear in train: remove them (adaptbench data prepare --dedupe "
                   "near before splitting) or the test score measures memory, not the method.")
    if codes & {"duplicate_exact", "conflicting_answers"}:
        out.append("Duplicates and conflicting answers: run drops exact copies; settle the conflicting ones by hand.")
    if "imbalance" in codes and any(f.level == "warning" for f in r.findings if f.code == "imbalance"):
        out.append("Classes are imbalanced: read macro-F1 and per-class recall, not accuracy, and try a finetune "
                   "arm with `balance: oversample` or `balance: class_weight` beside the plain one (the report "
                   "shows recall per label for both); adaptbench data prepare --balance writes a balanced file "
                   "instead (with `data: {dedup: false}` in the suite, which would otherwise drop the copies).")
    if {"rare_labels", "unseen_labels"} & codes:
        out.append("Some labels are rare or missing from train: collect examples for them, or expect their recall "
                   "to be low for every trained arm.")
    over = {a: t for a, t in r.truncation.items() if t.get("examples_over")}
    for arm, t in over.items():
        n = t["examples_over"]
        out.append(f"{arm}: {n} training example{'s are' if n > 1 else ' is'} longer than max_seq_length "
                   f"{t['max_seq_length']} and lose{'' if n > 1 else 's'} the start; max_seq_length "
                   f"{t['whole_max_seq_length']} keeps every one whole"
                   + (f", {t['suggested_max_seq_length']} keeps 99% whole" if t['suggested_max_seq_length']
                      > t['max_seq_length'] else "") + " (training time grows with it).")
    if "few_examples" in codes:
        out.append("Few training examples: compare few_shot and rag with finetune before collecting more.")
    if not out:
        out.append("No problems found: run the suite.")
    return out


# ---------------------------------------------------------------- a file instead of a suite

@contextmanager
def suite_for_file(data: Path, *, task: str | None, input_col: str | None, target_col: str | None):
    """A data file checked on its own: the suite `adaptbench init` would write for it, loaded
    from a temporary file that lives as long as the check."""
    # the starter imports the suite machinery: loaded only for a file target
    from toolkit.starter import starter_suite
    from toolkit.suites import load_suite

    if not data.exists():
        raise UserError("no such file or folder", file=data)
    with tempfile.TemporaryDirectory(prefix="adaptbench-check-") as tmp:
        out = Path(tmp) / "suite.yaml"
        text, _, _ = starter_suite(data, out, task=task, input_col=input_col, target_col=target_col)
        out.write_text(text, encoding="utf-8")
        yield load_suite(out)
