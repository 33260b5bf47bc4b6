"""`adaptbench data prepare IN OUT --format chat|prompt_completion|qa|label`: a user's data file
as training JSON Lines, deduplicated, balanced and split, in bounded memory.

The file is read as it streams, twice. Pass 1 converts every row with
toolkit.data.example_from_row (so what is written is what a suite reads) and keeps a few bytes
of each: its line, its label's index and two 8-byte hashes. The plan (which rows are dropped,
the split of each, how many times it is written) is made from those arrays with seeded numpy
permutations. Pass 2 converts each row again and writes it. `--dedupe near` reads the file once
more between the two, to embed the rows kept so far, and holds those embeddings (1.5 KB a row)
in memory, hence its row limit. Everything goes into a temporary sibling of OUT that is renamed
at the end: OUT is whole or absent.

One row of OUT, per --format:
  chat               {"messages": [{"role": "system", ...} (when the row had one), user, assistant]}
  prompt_completion  {"prompt", "completion"}
  qa                 {"id", "question", "answer"} (+ "context_ids", "metadata" when not empty)
  label              {"id", "text", "label"}
An oversampled repeat of a qa or label row has its own id (`ID#2`, `ID#3`, ...), since a suite
refuses repeated ids; chat and prompt/completion rows carry no id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import progress
from toolkit.data import Example, example_from_row, normalize_text, peek_rows
from toolkit.data.balance import balance_copies
from toolkit.data.rows import iter_rows
from toolkit.data.tables import is_saved_dataset
from toolkit.errors import UserError

FORMATS = ("chat", "prompt_completion", "qa", "label")
SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST, DROPPED = 0, 1, 2, -1
REPORT = "prepare_report.json"
OUR_FILES = {REPORT, "train.jsonl", "validation.jsonl", "test.jsonl"}  # all an output folder holds
EMBEDDER = "all-minilm-l6-v2"  # the bundled MiniLM (toolkit.models.BUNDLED_EMBEDDERS)
GUESS_ROWS = 2000          # rows the task and the columns are guessed from, as `adaptbench init` guesses them
NEAR_MAX_ROWS = 200_000    # --dedupe near holds 384 float32 (1.5 KB) per row: 300 MB at the limit
NEAR_BLOCK = 1024          # rows per side of one similarity product: 4 MB of float32
EMBED_BATCH = 256          # texts embedded at a time
LISTED_BAD = 100           # malformed rows listed in the report (all of them are counted)
LISTED = 5                 # example lines kept per kind of drop
BAR_STEP = 1000            # rows between two updates of a progress bar


@dataclass
class Options:
    """The checked settings of one run (see prepare)."""

    fmt: str
    task: str
    fields: dict[str, str]
    fields_guessed: bool
    split: tuple[float, float, float] | None
    stratify: bool
    seed: int
    dedupe: str | None
    near: float
    balance: str | None
    hf_split: str | None
    skip_bad: bool

    @property
    def labelled(self) -> bool:
        return self.task == "classification"


@dataclass
class Facts:
    """What pass 1 keeps of each row that converts, in file order: a few bytes each."""

    lines: array = field(default_factory=lambda: array("q"))
    labels: array = field(default_factory=lambda: array("i"))  # label tasks: index into label_ids
    pairs: array = field(default_factory=lambda: array("q"))   # --dedupe: hash of (question, answer), normalised
    inputs: array = field(default_factory=lambda: array("q"))  # --dedupe: hash of the question, normalised
    label_ids: dict[str, int] = field(default_factory=dict)
    bad: list[dict] = field(default_factory=list)  # the first LISTED_BAD malformed rows
    bad_total: int = 0

    def add(self, line: int, ex: Example, *, labelled: bool, hashed: bool) -> None:
        self.lines.append(line)
        if labelled:
            name = ex.label if ex.label is not None else ex.target
            self.labels.append(self.label_ids.setdefault(name, len(self.label_ids)))
        if hashed:
            q = normalize_text(ex.input)
            self.inputs.append(_hash(q))
            self.pairs.append(_hash(q + "\x00" + normalize_text(ex.target)))

    def add_bad(self, err: UserError) -> None:
        self.bad_total += 1
        if len(self.bad) < LISTED_BAD:
            what = f"{err.field}: {err.message}" if err.field else err.message
            self.bad.append({"file": err.file, "line": err.line, "message": what})

    @property
    def label_names(self) -> list[str]:
        return list(self.label_ids)


@dataclass
class Plan:
    """What happens to each row (arrays in file order) and why."""

    assign: np.ndarray   # int8: TRAIN, VALIDATION, TEST, or DROPPED (a duplicate)
    copies: np.ndarray   # int32: times the row is written (0: dropped or undersampled; > 1: oversampled)
    exact: dict | None = None
    conflicts: dict | None = None
    near: dict | None = None
    balance: dict | None = None


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


# ---- the flags ---------------------------------------------------------------------------------

def parse_split(text: str) -> tuple[float, float, float]:
    """'0.8/0.1/0.1' -> (0.8, 0.1, 0.1), checked (see check_split)."""
    parts = text.split("/")
    try:
        fractions = tuple(float(p) for p in parts)
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or not all(math.isfinite(f) for f in fractions):
        raise UserError(f"'{text}' is not TRAIN/VALIDATION/TEST fractions, e.g. 0.8/0.1/0.1", field="--split")
    return check_split(fractions)


def check_split(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    train, val, test = fractions
    if train <= 0 or test <= 0 or val < 0:
        raise UserError("train and test fractions must be above 0, validation 0 or above", field="--split")
    if abs(train + val + test - 1) > 1e-6:
        raise UserError(f"fractions must add up to 1 (got {train + val + test:g})", field="--split")
    return (float(train), float(val), float(test))


def parse_fields(text: str) -> dict[str, str]:
    """'input=body,label=stars' -> {"input": "body", "label": "stars"}, with adaptbench's names checked."""
    # toolkit.config (pydantic, ~0.1 s): read only when --fields is given
    from toolkit.config import MAPPABLE_FIELDS

    out = {}
    for part in text.split(","):
        ours, eq, theirs = (s.strip() for s in part.partition("="))
        if not eq or not ours or not theirs:
            raise UserError(f"'{part}' is not OURS=THEIRS, e.g. input=body,label=stars", field="--fields")
        if ours not in MAPPABLE_FIELDS:
            raise UserError(f"'{ours}' is not a field adaptbench reads (map one of: {', '.join(MAPPABLE_FIELDS)})",
                            field="--fields")
        out[ours] = theirs
    return out


def _check_paths(src: Path, dst: Path, *, folder: bool, force: bool) -> None:
    if not src.exists():
        raise UserError("data file not found", file=src)
    s, d = src.resolve(), dst.resolve()
    if d == s or d in s.parents or s in d.parents:
        where = "is IN itself" if d == s else "holds IN" if d in s.parents else "is inside IN"
        raise UserError(f"OUT {where}: write the output somewhere else", file=dst)
    if folder and dst.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        raise UserError("with --split OUT is a folder (train.jsonl, validation.jsonl and test.jsonl go in it), "
                        "not a JSON file", file=dst)
    if not folder and dst.suffix.lower() != ".jsonl":
        raise UserError("without --split OUT is one JSON Lines file: name it *.jsonl (or give --split for a folder)",
                        file=dst)
    if d.parent.exists() and not d.parent.is_dir():
        raise UserError("the folder OUT goes in is a file", file=dst)
    report = d / REPORT if folder else d.with_name(f"{d.name}.{REPORT}")
    if report == s:
        raise UserError("OUT's report would replace IN: write the output somewhere else", file=dst)
    for p in ([d] if folder else [d, report]):
        if not (p.exists() or p.is_symlink()):
            continue
        if not force:
            raise UserError("already exists (--force replaces it once everything is written)", file=p)
        if folder != p.is_dir() and p == d:
            raise UserError(f"is a {'folder' if p.is_dir() else 'file'}, and OUT would be a "
                            f"{'folder' if folder else 'file'}: --force replaces only an earlier output", file=p)
        if folder and (extra := sorted(q.name for q in p.iterdir() if q.name not in OUR_FILES)):
            raise UserError(f"holds files prepare does not write ({', '.join(extra[:5])}): --force replaces only "
                            "an earlier output", file=p)


def _check_hf_split(src: Path, hf_split: str | None) -> None:
    if hf_split is not None and not is_saved_dataset(src):
        raise UserError("is for a folder written by datasets' save_to_disk, and IN is not one", field="--hf-split")
    if hf_split is None and (src / "dataset_dict.json").is_file():
        try:
            splits = json.loads((src / "dataset_dict.json").read_text()).get("splits", [])
        except (ValueError, OSError, AttributeError):
            return  # a damaged folder: the reader says so
        raise UserError(f"IN holds the splits {', '.join(map(str, splits))}: say which one", field="--hf-split")


def _check_flags(o: Options) -> None:
    if o.fmt not in FORMATS:
        raise UserError(f"'{o.fmt}' is not one of {', '.join(FORMATS)}", field="--format")
    if o.seed < 0:
        raise UserError("must be 0 or more", field="--seed")
    if o.split is not None:
        check_split(o.split)
    if o.stratify and o.split is None:
        raise UserError("needs --split (it keeps each label's share in every split)", field="--stratify")
    if o.dedupe == "near" and not 0 < o.near <= 1:
        raise UserError(f"a cosine threshold above 0 and at most 1 (got {o.near:g})", field="--near")


def _check_task(o: Options) -> None:
    """The flags that need labels, once the task is known."""
    if o.stratify and not o.labelled:
        raise UserError(f"needs labels, and the task is {o.task} (use --format label or --task classification)",
                        field="--stratify")
    if o.balance and not o.labelled:
        raise UserError(f"evens out labels, and the task is {o.task} (use --format label or --task classification)",
                        field="--balance")


def _settle(src: Path, *, fmt: str, task: str | None, fields: dict[str, str] | None,
            hf_split: str | None) -> tuple[str, dict[str, str], bool]:
    """(task, fields, whether the fields were guessed): --task, else classification for --format
    label, else the guess; --fields, else the guess (from the first GUESS_ROWS rows, as init does)."""
    task = task or ("classification" if fmt == "label" else None)
    if fields is not None and task is not None:
        return task, fields, False
    # toolkit.starter (harness: suites, pydantic): the guess init makes, needed only without --task or --fields
    from toolkit.starter import fields_for, guess_task

    cols = fields or {}
    try:
        g = guess_task(peek_rows(src, GUESS_ROWS, split=hf_split), task=task,
                       input_col=cols.get("input") or cols.get("question"),
                       target_col=cols.get("label") or cols.get("target") or cols.get("answer"), where=src)
    except UserError as e:
        raise UserError(e.message.replace("--input COLUMN --target COLUMN", "--fields input=COLUMN,target=COLUMN"),
                        file=src) from None
    return g.task, (fields if fields is not None else fields_for(g)), fields is None


# ---- the command ---------------------------------------------------------------------------------

def run_prepare(args) -> int:
    """`adaptbench data prepare` (toolkit.cli parses the flags): prepare() and a short summary."""
    report = prepare(args.src, args.dst, fmt=args.format, split=parse_split(args.split) if args.split else None,
                     stratify=args.stratify, seed=args.seed, dedupe=args.dedupe, near=args.near,
                     balance=args.balance, fields=parse_fields(args.fields) if args.fields else None,
                     task=args.task, hf_split=args.hf_split, skip_bad=args.skip_bad, force=args.force)
    print(summary(report))
    return 0


def prepare(src: Path, dst: Path, *, fmt: str, split: tuple[float, float, float] | None = None,
            stratify: bool = False, seed: int = 0, dedupe: str | None = None, near: float = 0.95,
            balance: str | None = None, fields: dict[str, str] | None = None, task: str | None = None,
            hf_split: str | None = None, skip_bad: bool = False, force: bool = False) -> dict:
    """Convert `src` to `fmt` JSON Lines in `dst` (a folder of train/validation/test.jsonl with
    `split`, else one file), deduplicated and balanced as asked; returns the report, which is
    also written as prepare_report.json. Bad input or flags raise UserError before anything is
    written (see the module docstring for the passes)."""
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, folder=split is not None, force=force)
    _check_hf_split(src, hf_split)
    o = Options(fmt=fmt, task=task or "", fields={}, fields_guessed=False, split=split, stratify=stratify,
                seed=seed, dedupe=dedupe, near=near, balance=balance, hf_split=hf_split, skip_bad=skip_bad)
    _check_flags(o)  # before any row is read
    o.task, o.fields, o.fields_guessed = _settle(src, fmt=fmt, task=task, fields=fields, hf_split=hf_split)
    _check_task(o)
    facts = _scan(src, o)
    plan = _plan(src, facts, o)
    with _staged(dst, folder=split is not None) as (tmp, tmp_report):
        _write(src, _outputs(tmp, o), plan, o)
        report = build_report(src, dst, facts, plan, o)
        tmp_report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


# ---- reading -------------------------------------------------------------------------------------

def _examples(src: Path, o: Options, on_bad: Callable[[UserError], None]) -> Iterator[tuple[int, Example]]:
    """(line, Example) of each row that converts. A malformed row raises, or with --skip-bad goes
    to on_bad and is left out (the same rows in every pass)."""
    errors: list[UserError] | None = [] if o.skip_bad else None
    for line, row in iter_rows(src, split=o.hf_split, where={"file": src, "field": "--hf-split"}, errors=errors):
        while errors:
            on_bad(errors.pop(0))
        try:
            ex = example_from_row(row, origin=(src, line), task=o.task, fields=o.fields or None)
        except UserError as e:
            if errors is None:
                raise
            on_bad(e)
            continue
        yield line, ex
    for e in errors or ():
        on_bad(e)


def _ignore(_: UserError) -> None:
    """Pass 2 meets again the malformed rows pass 1 counted."""


def _changed(src: Path) -> UserError:
    return UserError("changed while it was being read (it is read twice): run again on a file nothing writes to",
                     file=src)


def _scan(src: Path, o: Options) -> Facts:
    """Pass 1: the facts of every row."""
    facts = Facts()
    n = 0
    with progress.task_bar(f"Reading {src.name}", total=None) as advance:
        for n, (line, ex) in enumerate(_examples(src, o, facts.add_bad), 1):
            facts.add(line, ex, labelled=o.labelled, hashed=o.dedupe is not None)
            if n % BAR_STEP == 0:
                advance(BAR_STEP)
        advance(n % BAR_STEP)
    if n == 0:
        raise UserError("no rows to write" + (f" (all {facts.bad_total} are malformed)" if facts.bad_total else ""),
                        file=src)
    return facts


# ---- the plan ------------------------------------------------------------------------------------

def _plan(src: Path, facts: Facts, o: Options) -> Plan:
    lines = np.frombuffer(facts.lines, dtype=np.int64)
    keep = np.ones(len(lines), dtype=bool)
    plan = Plan(assign=np.empty(0, np.int8), copies=np.empty(0, np.int32))
    if o.dedupe:
        plan.exact = _exact(np.frombuffer(facts.pairs, dtype=np.int64), lines, keep)
        plan.conflicts = _conflicts(np.frombuffer(facts.inputs, dtype=np.int64), lines, keep)
    if o.dedupe == "near":
        plan.near = _near(src, o, lines, keep)
    labels = np.frombuffer(facts.labels, dtype=np.int32) if o.labelled else None
    plan.assign = _assign(keep, labels, len(facts.label_ids), o)
    plan.copies, plan.balance = _balance(plan.assign, labels, facts.label_names, o)
    return plan


def _exact(pairs: np.ndarray, lines: np.ndarray, keep: np.ndarray) -> dict:
    """Drops (in `keep`) every row whose normalised question and answer came before."""
    _, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)  # first: the earliest of each
    keep[:] = False
    keep[first] = True
    dropped = np.flatnonzero(~keep)
    return {"count": int(len(dropped)),
            "examples": [{"line": int(lines[i]), "repeat_of": int(lines[first[inverse[i]]])} for i in dropped[:LISTED]]}


def _conflicts(inputs: np.ndarray, lines: np.ndarray, keep: np.ndarray) -> dict:
    """Kept rows asking the same question (normalised) with different answers: counted, kept."""
    idx = np.flatnonzero(keep)
    values, counts = np.unique(inputs[idx], return_counts=True)
    involved = idx[np.isin(inputs[idx], values[counts > 1])]  # in file order
    examples = []
    for v in dict.fromkeys(inputs[involved[:LISTED * LISTED]].tolist()):
        examples.append(lines[involved[inputs[involved] == v]][:LISTED].tolist())
        if len(examples) == LISTED:
            break
    return {"questions": int((counts > 1).sum()), "rows": int(len(involved)), "examples": examples}


def _near(src: Path, o: Options, lines: np.ndarray, keep: np.ndarray) -> dict:
    """Drops (in `keep`) every row whose question's embedding is within --near of a kept one's before it."""
    idx = np.flatnonzero(keep)
    if len(idx) > NEAR_MAX_ROWS:
        raise UserError(f"near holds every question's embedding in memory: at most {NEAR_MAX_ROWS:,} rows "
                        f"(this file has {len(idx):,}{' after exact deduplication' if len(idx) < len(keep) else ''}); "
                        "use --dedupe exact", field="--dedupe")
    kept, matches = near_keep(_embed_kept(src, o, keep, len(idx)), o.near)
    keep[idx[~kept]] = False
    return {"count": int((~kept).sum()), "threshold": o.near, "embedder": EMBEDDER,
            "examples": [{"line": int(lines[idx[j]]), "near": int(lines[idx[i]]), "cosine": round(c, 4)}
                         for j, i, c in matches]}


def _embed_kept(src: Path, o: Options, keep: np.ndarray, n: int) -> np.ndarray:
    """(n, d) unit float32 embeddings of the kept rows' questions, in file order (a pass of its own)."""
    # toolkit.models (backends: torch, sentence-transformers): loaded only for --dedupe near
    from toolkit.models import embed

    vecs: np.ndarray | None = None
    batch: list[str] = []
    at = 0
    with progress.task_bar("Embedding questions", total=n) as advance:
        for i, (_, ex) in enumerate(_examples(src, o, _ignore)):
            if i >= len(keep):
                raise _changed(src)
            if keep[i]:
                batch.append(ex.input)
            if len(batch) == EMBED_BATCH or (i == len(keep) - 1 and batch):
                got = embed(EMBEDDER, batch)
                vecs = np.empty((n, got.shape[1]), np.float32) if vecs is None else vecs
                if at + len(got) > n:
                    raise _changed(src)
                vecs[at:at + len(got)] = got
                at, batch = at + len(got), []
                advance(len(got))
    if at != n:
        raise _changed(src)
    return vecs


def near_keep(vecs: np.ndarray, threshold: float, block: int = NEAR_BLOCK) -> tuple[np.ndarray, list]:
    """Greedy in order: a row is dropped when its cosine with a row kept before it is >= threshold
    (rows are unit vectors). (kept mask, the first LISTED (dropped, its match, cosine)). Blockwise:
    block x block products, never n x n."""
    kept = np.ones(len(vecs), dtype=bool)
    matches: list[tuple[int, int, float]] = []
    for s in range(0, len(vecs), block):
        blk = vecs[s:s + block]
        best, arg = _best_earlier(vecs, kept, blk, s, block)
        within = blk @ blk.T
        for j in range(len(blk)):
            if best[j] >= threshold:
                kept[s + j] = False
                if len(matches) < LISTED:
                    matches.append((s + j, int(arg[j]), float(best[j])))
                continue
            later, rest = within[j, j + 1:], best[j + 1:]
            better = later > rest
            rest[better] = later[better]  # a view: updates best
            arg[j + 1:][better] = s + j
    return kept, matches


def _best_earlier(vecs: np.ndarray, kept: np.ndarray, blk: np.ndarray, s: int,
                  block: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row of blk: the highest cosine with a kept row before vecs[s], and that row."""
    best = np.full(len(blk), -np.inf, dtype=np.float32)
    arg = np.full(len(blk), -1, dtype=np.int64)
    for t in range(0, s, block):
        cols = t + np.flatnonzero(kept[t:min(t + block, s)])
        if not len(cols):
            continue
        sims = blk @ vecs[cols].T
        m = sims.argmax(axis=1)
        v = sims[np.arange(len(blk)), m]
        better = v > best
        best[better], arg[better] = v[better], cols[m[better]]
    return best, arg


def _count(n: int, fraction: float) -> int:
    return math.floor(n * fraction + 0.5 + 1e-9)


def _groups(rows: np.ndarray, labels: np.ndarray, n_labels: int) -> list[np.ndarray]:
    """rows split by label (label index order; empty for a label with none), each in file order."""
    order = rows[np.argsort(labels[rows], kind="stable")]
    sizes = np.bincount(labels[rows], minlength=n_labels)
    return np.split(order, np.cumsum(sizes)[:-1])


def _quota(sizes: np.ndarray, fraction: float, total: int, caps: np.ndarray) -> np.ndarray:
    """Rows per stratum adding up to exactly `total`, as close to sizes * fraction as that allows
    (largest remainders first), none above its cap."""
    ideal = sizes * fraction
    q = np.minimum(np.floor(ideal + 1e-9).astype(np.int64), caps)
    order = np.argsort(-(ideal - q), kind="stable")
    while q.sum() < total:
        for c in order:
            if q.sum() < total and q[c] < caps[c]:
                q[c] += 1
    return q


def _assign(keep: np.ndarray, labels: np.ndarray | None, n_labels: int, o: Options) -> np.ndarray:
    """The split of each row (TRAIN for all kept rows without --split): exact counts, seeded."""
    assign = np.where(keep, TRAIN, DROPPED).astype(np.int8)
    if o.split is None:
        return assign
    idx = np.flatnonzero(keep)
    _, f_val, f_test = o.split
    n_test, n_val = _count(len(idx), f_test), _count(len(idx), f_val)
    if n_test < 1 or (f_val > 0 and n_val < 1) or len(idx) - n_test - n_val < 1:
        raise UserError(f"{len(idx)} rows are too few for {'/'.join(f'{f:g}' for f in o.split)}: every split needs "
                        "a row at least", field="--split")
    if o.stratify:
        strata = _groups(idx, labels, n_labels)
        sizes = np.array([len(g) for g in strata])
        q_test = _quota(sizes, f_test, n_test, sizes)
        q_val = _quota(sizes, f_val, n_val, sizes - q_test)
    else:
        strata, q_test, q_val = [idx], [n_test], [n_val]
    rng = np.random.default_rng(o.seed)
    for members, t, v in zip(strata, q_test, q_val):
        perm = rng.permutation(members)
        assign[perm[:t]] = TEST
        assign[perm[t:t + v]] = VALIDATION
    return assign


def _balance(assign: np.ndarray, labels: np.ndarray | None, names: list[str],
             o: Options) -> tuple[np.ndarray, dict | None]:
    """Times each row is written: once, or for the train split (all rows without --split) evened
    out per label: oversampled (seeded repeats up to the largest label's count) or undersampled
    (a seeded sample of each label down to the smallest's)."""
    copies = (assign != DROPPED).astype(np.int32)
    if not o.balance:
        return copies, None
    train = np.flatnonzero(assign == TRAIN)
    # its own stream: adding --balance does not move the split
    copies[train] = balance_copies(labels[train], len(names), o.balance, [o.seed, 1])
    sizes = np.bincount(labels[train], minlength=len(names))
    after = np.bincount(labels[train], weights=copies[train], minlength=len(names)).astype(int)
    target = int(sizes.max() if o.balance == "oversample" else sizes[sizes > 0].min())
    return copies, {"method": o.balance, "split": "train" if o.split else "all", "per_label": target,
                    "before": {names[c]: int(n) for c, n in enumerate(sizes) if n},
                    "after": {names[c]: int(n) for c, n in enumerate(after) if sizes[c]}}


# ---- writing -------------------------------------------------------------------------------------

def output_row(ex: Example, fmt: str, copy: int = 0) -> dict:
    """One row of OUT in `fmt` (see the module docstring); copy > 0 is an oversampled repeat."""
    if fmt == "chat":
        system = [{"role": "system", "content": ex.system}] if ex.system else []
        return {"messages": [*system, {"role": "user", "content": ex.input},
                             {"role": "assistant", "content": ex.target}]}
    if fmt == "prompt_completion":
        return {"prompt": ex.input, "completion": ex.target}
    rid = ex.id if copy == 0 else f"{ex.id}#{copy + 1}"
    if fmt == "label":
        return {"id": rid, "text": ex.input, "label": ex.label if ex.label is not None else ex.target}
    row: dict[str, Any] = {"id": rid, "question": ex.input, "answer": ex.target}
    if ex.context_ids:
        row["context_ids"] = ex.context_ids
    if ex.metadata:
        row["metadata"] = ex.metadata
    return row


def _outputs(tmp: Path, o: Options) -> dict[int, Path]:
    if o.split is None:
        return {TRAIN: tmp}
    names = [s for s, f in zip(SPLITS, o.split) if f > 0]
    return {SPLITS.index(s): tmp / f"{s}.jsonl" for s in names}


def _write(src: Path, outputs: dict[int, Path], plan: Plan, o: Options) -> None:
    """Pass 2: each row converted again and written to its split, as many times as planned."""
    n = len(plan.assign)
    with contextlib.ExitStack() as stack, progress.task_bar(f"Writing {o.fmt} rows", total=n) as advance:
        files = {s: stack.enter_context(p.open("w", encoding="utf-8", buffering=1 << 20)) for s, p in outputs.items()}
        i = -1
        for i, (_, ex) in enumerate(_examples(src, o, _ignore)):
            if i >= n:
                raise _changed(src)
            for c in range(int(plan.copies[i])):
                files[int(plan.assign[i])].write(json.dumps(output_row(ex, o.fmt, c), ensure_ascii=False,
                                                            default=str) + "\n")
            if i % BAR_STEP == BAR_STEP - 1:
                advance(BAR_STEP)
        advance((i + 1) % BAR_STEP)
        if i + 1 != n:
            raise _changed(src)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def _replace(tmp: Path, dst: Path) -> None:
    """tmp renamed to dst; an existing dst (--force) is moved aside first and removed after."""
    if not (dst.exists() or dst.is_symlink()):
        os.replace(tmp, dst)
        return
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
    _remove(old)
    os.replace(dst, old)
    os.replace(tmp, dst)
    _remove(old)


@contextlib.contextmanager
def _staged(dst: Path, *, folder: bool) -> Iterator[tuple[Path, Path]]:
    """(where the output goes, where its report goes): temporary siblings of dst, renamed into
    place when the body succeeds and removed when it fails."""
    tag = f".tmp-{os.getpid()}"
    dst = dst.resolve()  # '.' or 'out/' has a name to put a sibling beside
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder OUT goes in: {e.strerror}", file=dst) from None
    tmp = dst.with_name(dst.name + tag)
    report = dst / REPORT if folder else dst.with_name(f"{dst.name}.{REPORT}")
    tmp_report = tmp / REPORT if folder else report.with_name(report.name + tag)
    for p in (tmp, tmp_report):
        _remove(p)
    if folder:
        tmp.mkdir()
    try:
        yield tmp, tmp_report
        if not folder:
            _replace(tmp_report, report)
        _replace(tmp, dst)
    except BaseException:
        for p in (tmp, tmp_report):
            _remove(p)
        raise


# ---- the report ----------------------------------------------------------------------------------

def _label_counts(plan: Plan, labels: np.ndarray, names: list[str], split: int) -> dict[str, int]:
    rows = plan.assign == split
    counts = np.bincount(labels[rows], weights=plan.copies[rows], minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts)}


def build_report(src: Path, dst: Path, facts: Facts, plan: Plan, o: Options) -> dict:
    """What prepare_report.json holds: what was read, written and dropped, and why, with lines."""
    splits = {s: SPLITS.index(s) for s, f in zip(SPLITS, o.split) if f > 0} if o.split else {"all": TRAIN}
    written = {s: int(plan.copies[plan.assign == v].sum()) for s, v in splits.items()}
    labels = np.frombuffer(facts.labels, dtype=np.int32) if o.labelled else None
    report = {
        "source": str(src), "hf_split": o.hf_split, "output": str(dst), "format": o.fmt, "task": o.task,
        "fields": o.fields, "fields_guessed": o.fields_guessed, "seed": o.seed,
        "split": {"fractions": dict(zip(SPLITS, o.split)), "stratify": o.stratify,
                  "rows": {s: int((plan.assign == v).sum()) for s, v in splits.items()}} if o.split else None,
        "rows_read": len(facts.lines) + facts.bad_total, "rows_written": written,
        "dropped": {"malformed": {"count": facts.bad_total, "listed": facts.bad},
                    "exact_duplicates": plan.exact, "near_duplicates": plan.near},
        "conflicts": plan.conflicts, "balance": plan.balance,
        "labels": {s: _label_counts(plan, labels, facts.label_names, v) for s, v in splits.items()}
        if labels is not None else None,
    }
    report["changes"] = changes(report, "row" if is_saved_dataset(src) or src.suffix.lower() in (".parquet", ".pq")
                                else "line")
    return report


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def changes(r: dict, word: str = "line") -> list[str]:
    """The report in plain sentences, one per change made to the data."""
    out = []
    d = r["dropped"]
    if (bad := d["malformed"])["count"]:
        first = bad["listed"][0]
        out.append(f"dropped {_n(bad['count'], 'malformed row')} (first at {word} {first['line']}: "
                   f"{first['message']})")
    if (ex := d["exact_duplicates"]) and ex["count"]:
        e = ex["examples"][0]
        out.append(f"dropped {_n(ex['count'], 'exact duplicate row')} (first at {word} {e['line']}, a repeat of "
                   f"{word} {e['repeat_of']})")
    if (c := r["conflicts"]) and c["questions"]:
        out.append(f"kept {_n(c['rows'], 'row')} asking {_n(c['questions'], 'question')} with different answers "
                   f"(first at {word}s {', '.join(map(str, c['examples'][0]))}): check which answer is right")
    if (near := d["near_duplicates"]) and near["count"]:
        e = near["examples"][0]
        out.append(f"dropped {_n(near['count'], 'near-duplicate row')} (first at {word} {e['line']}, cosine "
                   f"{e['cosine']} with {word} {e['near']}; threshold {near['threshold']})")
    if r["split"]:
        sizes = ", ".join(f"{s} {n}" for s, n in r["split"]["rows"].items())
        out.append(f"split {_n(sum(r['split']['rows'].values()), 'row')} into {sizes} (seed {r['seed']}"
                   f"{', stratified by label' if r['split']['stratify'] else ''})")
    if b := r["balance"]:
        before, after = sum(b["before"].values()), sum(b["after"].values())
        how = f"added {_n(after - before, 'repeat')}" if b["method"] == "oversample" else \
            f"left out {_n(before - after, 'row')}"
        out.append(f"{b['method']}d the {b['split']} rows to {b['per_label']} per label ({how})")
        if b["method"] == "oversample":  # the run's dedup would undo it
            out.append("the repeats are copies of their rows: a suite that trains on them needs `data: {dedup: "
                       "false}`, or the run drops them as duplicates")
    guessed = " (guessed from the rows)" if r["fields_guessed"] else ""
    cols = ", ".join(f"{k} from {v}" for k, v in r["fields"].items()) or "from the columns of the same names"
    out.append(f"wrote {r['format']} rows of task {r['task']}, {cols}{guessed}")
    return out


def summary(r: dict) -> str:
    """A few lines for the terminal: rows in, rows out per split, drops, where the report is."""
    d = r["dropped"]
    drops = [f"{d['malformed']['count']} malformed"] if d["malformed"]["count"] else []
    drops += [f"{x['count']} {name}" for name, x in (("exact duplicates", d["exact_duplicates"]),
                                                   ("near duplicates", d["near_duplicates"])) if x and x["count"]]
    out = Path(r["output"])
    report = out / REPORT if r["split"] else out.with_name(f"{out.name}.{REPORT}")
    return "\n".join([
        f"read {r['rows_read']} rows from {r['source']} (task {r['task']})",
        f"wrote {out}: " + ", ".join(f"{s} {n}" for s, n in r["rows_written"].items()),
        *([f"dropped {', '.join(drops)}"] if drops else []),
        *([f"balanced: {r['balance']['method']} to {r['balance']['per_label']} per label"] if r["balance"] else []),
        f"report: {report}",
    ])
