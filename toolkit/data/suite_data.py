"""From a validated suite to the splits and knowledge base every arm shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.config import LoadedSuite
from toolkit.data import Example, Splits, dedup, normalize_text, read_examples, split_examples, subsample
from toolkit.errors import UserError
from toolkit.data.kb import KnowledgeBase, read_knowledge_base
from toolkit.data.loaders import run_loader


@dataclass
class TaskData:
    splits: Splits
    kb: KnowledgeBase | None
    labels: list[str] | None
    files: list[Path]  # every file read, for data hashes in env.json
    extra_train: dict[str, int] = field(default_factory=dict)  # data.extra_train file -> examples it added


def load_task_data(ls: LoadedSuite) -> TaskData:
    s, d = ls.suite, ls.suite.data
    is_clf = s.has_labels
    files: list[Path] = []
    kb = None
    notes: list[str] = []

    def read(spec, field):
        p = ls.resolve(spec.path, f"data.{field}.path")
        files.append(p)
        return read_examples(p, task=s.task, fmt=spec.format, fields=spec.fields)

    if d.loader:
        train, val, test, kb = run_loader(d.loader, d.loader_args, suite_path=ls.path,
                                          resolve=lambda p, f: ls.resolve(p, f), seed=s.seed)
        files.append(ls.resolve(d.loader_args.get("path", "."), "data.loader_args.path"))
    elif d.file:
        every = read(d.file, "file")
        if d.dedup:
            every, n = dedup(every)
            if n:
                notes.append(f"dropped {n} duplicate rows from {d.file.path}")
        train, val, test = split_examples(every, fractions=(d.split.validation, d.split.test),
                                          seed=d.split.seed, stratify=is_clf)
        notes.append(f"split {d.file.path} with seed {d.split.seed}" + (" (stratified by label)" if is_clf else ""))
    else:
        train = read(d.train, "train")
        val = read(d.validation, "validation") if d.validation else []
        test = read(d.test, "test")

    if d.dedup and not d.file:
        for name, part in (("train", train), ("validation", val), ("test", test)):
            kept, n = dedup(part)
            if n:
                notes.append(f"dropped {n} duplicate rows from {name}")
            part[:] = kept
    if d.dedup:
        seen = {normalize_text(e.input) for e in train}
        before = len(test)
        test = [e for e in test if normalize_text(e.input) not in seen]
        if before - len(test):
            notes.append(f"dropped {before - len(test)} test rows whose question also appears in train")
        if not test:
            raise UserError("every test question also appears in train", file=ls.path, field="data.test")

    train = subsample(train, d.max_train_examples, seed=s.seed, stratify=is_clf)
    if d.validation_split and not val:
        train, _, val = split_examples(train, fractions=(0.0, d.validation_split), seed=s.seed, stratify=is_clf)
        notes.append(f"held out {len(val)} train rows for validation")
    test = subsample(test, d.max_test_examples, seed=s.seed, stratify=is_clf)
    extra: dict[str, int] = {}
    for i, spec in enumerate(d.extra_train):
        p = ls.resolve(spec.path, f"data.extra_train.{i}.path")
        files.append(p)
        rows = read_examples(p, task=s.task, fmt=spec.format, fields=spec.fields)
        held = {normalize_text(e.input) for e in val + test}
        have = {e.id for e in train}
        kept = []
        for e in rows:
            if normalize_text(e.input) in held or e.id in have:
                continue
            have.add(e.id)
            e.metadata = {**(e.metadata or {}), "source": spec.path}
            kept.append(e)
        train = train + kept
        extra[spec.path] = len(kept)
        dropped = len(rows) - len(kept)
        notes.append(f"added {len(kept)} training examples from {spec.path}"
                     + (f" (dropped {dropped}: question in validation/test, or already in train)" if dropped else ""))
    _check_ids(train + val + test, ls.path)

    labels = None
    if is_clf:
        labels = s.labels or sorted({e.label for e in train + val + test if e.label})
        allowed = set(labels)
        for e in train + val + test:
            if e.label not in allowed:
                f, _, ln = e.origin.rpartition(":")
                raise UserError(f"'{e.label}' is not one of the suite's labels", file=f or None,
                                line=int(ln) if ln.isdigit() else None, field="label")

    if s.knowledge_base and s.knowledge_base != "loader":
        kb = read_knowledge_base(ls.resolve(s.knowledge_base, "knowledge_base"), suite_path=ls.path)
        files.append(ls.resolve(s.knowledge_base, "knowledge_base"))
    elif s.knowledge_base == "loader" and kb is None:
        raise UserError("is 'loader' but the data loader provides no documents", file=ls.path, field="knowledge_base")
    if kb is None and any(getattr(cfg, "needs_knowledge_base", False) for _, cfg in ls.arms.values()):
        raise UserError("a retrieval strategy is listed but there is no knowledge base", file=ls.path, field="knowledge_base")

    if kb is not None:
        known = {doc.id for doc in kb.documents}
        for e in train + val + test:
            for c in e.context_ids:
                if c not in known:
                    f, _, ln = e.origin.rpartition(":")
                    raise UserError(f"document '{c}' is not in the knowledge base", file=f or None,
                                    line=int(ln) if ln.isdigit() else None, field="context_ids")
    return TaskData(splits=Splits(train, val, test, notes), kb=kb, labels=labels, files=files, extra_train=extra)


def _check_ids(examples: list[Example], suite_path: Path) -> None:
    seen: dict[str, str] = {}
    for e in examples:
        if e.id in seen:
            f, _, ln = e.origin.rpartition(":")
            raise UserError(f"duplicate id '{e.id}' (first seen at {seen[e.id]})", file=f or suite_path,
                            line=int(ln) if ln.isdigit() else None, field="id")
        seen[e.id] = e.origin
