"""From a validated suite to the splits and knowledge base every arm shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.cache import content_hash
from toolkit.config import FileSpec, LoadedSuite
from toolkit.data import (
    Example,
    Splits,
    dedup,
    examples_from_rows,
    normalize_text,
    read_examples,
    split_examples,
    subsample,
)
from toolkit.data.kb import KnowledgeBase, read_knowledge_base
from toolkit.data.loaders import LOADER_VERSION, resolved_args, run_loader
from toolkit.data.tables import dataset_rows, hub_dataset
from toolkit.errors import UserError


@dataclass
class TaskData:
    splits: Splits
    kb: KnowledgeBase | None
    labels: list[str] | None
    files: list[Path]  # every file and folder read, hashed into the run record
    extra_train: dict[str, int] = field(default_factory=dict)  # data.extra_train file -> examples it added
    datasets: dict[str, str] = field(default_factory=dict)  # hub dataset (hf:ID/config:split) -> its fingerprint


def load_task_data(loaded: LoadedSuite) -> TaskData:
    """The splits, labels and knowledge base of a suite: read (files or a loader), deduplicated,
    subsampled, extended with extra train files, and checked (ids, labels, documents)."""
    s = loaded.suite
    files: list[Path] = []
    datasets: dict[str, str] = {}
    notes: list[str] = []
    train, val, test, kb = _read_splits(loaded, files, datasets, notes)
    train, val, test = _deduplicate(loaded, train, val, test, notes)
    d = s.data
    train = subsample(train, d.max_train_examples, seed=s.seed, stratify=s.has_labels)
    if d.validation_split and not val:
        train, _, val = split_examples(train, fractions=(0.0, d.validation_split), seed=s.seed, stratify=s.has_labels)
        notes.append(f"held out {len(val)} train rows for validation")
    test = subsample(test, d.max_test_examples, seed=s.seed, stratify=s.has_labels)
    train, extra = _add_extra_train(loaded, train, val + test, files, datasets, notes)
    every = train + val + test
    _check_ids(every, loaded.path)
    labels = _labels(loaded, every) if s.has_labels else None
    kb = _knowledge_base(loaded, kb, every, files)
    return TaskData(splits=Splits(train, val, test, notes), kb=kb, labels=labels, files=files, extra_train=extra,
                    datasets=datasets)


def field_path(field: str) -> list[str | int]:
    """'data.extra_train.0' -> ['data', 'extra_train', 0]: a suite location for LoadedSuite.where."""
    return [int(x) if x.isdigit() else x for x in field.split(".")]


def read_spec(loaded: LoadedSuite, spec: FileSpec, field: str, files: list[Path],
              datasets: dict[str, str]) -> list[Example]:
    """The examples one data entry of the suite names: a file, a saved dataset folder, or a hub
    dataset (its fingerprint recorded, as a file's hash is)."""
    s = loaded.suite
    loc = field_path(field)
    if spec.hf is not None:
        ds = hub_dataset(spec.hf, spec.config, spec.split, spec.revision, where=loaded.where(*loc, "hf"))
        datasets[spec.source] = ds._fingerprint  # noqa: SLF001 -- datasets' own content fingerprint
        return examples_from_rows(dataset_rows(ds), spec.source, task=s.task, fields=spec.fields)
    p = loaded.resolve(spec.path, f"{field}.path")
    files.append(p)
    where = loaded.where(*loc, "split") if spec.split is not None or p.is_dir() else None  # only a split can be wrong
    return read_examples(p, task=s.task, fmt=spec.format, fields=spec.fields, split=spec.split, where=where)


def _read_splits(loaded: LoadedSuite, files: list[Path], datasets: dict[str, str], notes: list[str]):
    """(train, validation, test, knowledge base from a loader or None) as the suite names them:
    a loader, one file split here, or three files."""
    s, d = loaded.suite, loaded.suite.data

    def read(spec, field):
        return read_spec(loaded, spec, f"data.{field}", files, datasets)

    if d.loader:
        train, val, test, kb = run_loader(d.loader, d.loader_args, suite_path=loaded.path,
                                          resolve=lambda p, f: loaded.resolve(p, f), seed=s.seed)
        if "path" in d.loader_args:  # what the loader read, hashed into the run record
            files.append(loaded.resolve(d.loader_args["path"], "data.loader_args.path"))
        return train, val, test, kb
    if d.file:
        every = read(d.file, "file")
        if d.dedup:
            every, n = dedup(every)
            if n:
                notes.append(f"dropped {n} duplicate rows from {d.file.source}")
        train, val, test = split_examples(every, fractions=(d.split.validation, d.split.test),
                                          seed=d.split.seed, stratify=s.has_labels)
        notes.append(f"split {d.file.source} with seed {d.split.seed}" + (" (stratified by label)" if s.has_labels else ""))
        return train, val, test, None
    return (read(d.train, "train"), read(d.validation, "validation") if d.validation else [], read(d.test, "test"),
            None)


def _deduplicate(loaded: LoadedSuite, train, val, test, notes: list[str]):
    """Duplicates within each split, then test questions that train also asks (leakage)."""
    d = loaded.suite.data
    if not d.dedup:
        return train, val, test
    if not d.file:  # one file was deduplicated before it was split
        for name, part in (("train", train), ("validation", val), ("test", test)):
            kept, n = dedup(part)
            if n:
                notes.append(f"dropped {n} duplicate rows from {name}")
            part[:] = kept
    seen = {normalize_text(e.input) for e in train}
    before = len(test)
    test = [e for e in test if normalize_text(e.input) not in seen]
    if before - len(test):
        notes.append(f"dropped {before - len(test)} test rows whose question also appears in train")
    if not test:
        raise UserError("every test question also appears in train", file=loaded.path, field="data.test")
    return train, val, test


def _add_extra_train(loaded: LoadedSuite, train: list[Example], held_out: list[Example], files: list[Path],
                     datasets: dict[str, str],
                     notes: list[str]) -> tuple[list[Example], dict[str, int]]:
    """data.extra_train files (production feedback, say) appended to train, minus questions
    the validation or test splits ask and ids train already has."""
    s = loaded.suite
    extra: dict[str, int] = {}
    held = {normalize_text(e.input) for e in held_out}
    for i, spec in enumerate(s.data.extra_train):
        rows = read_spec(loaded, spec, f"data.extra_train.{i}", files, datasets)
        have = {e.id for e in train}
        kept = []
        for e in rows:
            if normalize_text(e.input) in held or e.id in have:
                continue
            have.add(e.id)
            e.metadata = {**(e.metadata or {}), "source": spec.source}
            kept.append(e)
        train = train + kept
        extra[spec.source] = len(kept)
        dropped = len(rows) - len(kept)
        notes.append(f"added {len(kept)} training examples from {spec.source}"
                     + (f" (dropped {dropped}: question in validation/test, or already in train)" if dropped else ""))
    return train, extra


def _where(e: Example) -> dict:
    """file and line of an example, for a UserError."""
    f, _, ln = e.origin.rpartition(":")
    return {"file": f or None, "line": int(ln) if ln.isdigit() else None}


def _labels(loaded: LoadedSuite, every: list[Example]) -> list[str]:
    """The suite's labels (or those the data uses); a label outside them names its line."""
    labels = loaded.suite.labels or sorted({e.label for e in every if e.label})
    allowed = set(labels)
    for e in every:
        if e.label not in allowed:
            raise UserError(f"'{e.label}' is not one of the suite's labels", **_where(e), field="label")
    pos = loaded.suite.positive_label
    if pos is not None and (pos not in allowed or len(labels) != 2):
        raise UserError(f"'{pos}' is not one of the two labels of the data ({', '.join(labels[:5])}"
                        f"{', ...' if len(labels) > 5 else ''}): a threshold table needs two labels",
                        file=loaded.path, field="positive_label")
    return labels


def _knowledge_base(loaded: LoadedSuite, kb: KnowledgeBase | None, every: list[Example],
                    files: list[Path]) -> KnowledgeBase | None:
    """The suite's knowledge base (a folder, or the loader's documents), checked against the
    arms that retrieve and the gold document ids of the examples."""
    s = loaded.suite
    if s.kb_path and s.kb_path != "loader":
        folder = loaded.resolve(s.kb_path, "knowledge_base")
        kb = read_knowledge_base(folder, suite_path=loaded.path)
        files.append(folder)
    elif s.kb_path == "loader" and kb is None:
        raise UserError("is 'loader' but the data loader provides no documents", file=loaded.path, field="knowledge_base")
    elif kb is not None and not kb.source:  # the loader's documents: one index per loader and its path
        args = {k: str(v) if isinstance(v, Path) else v for k, v in resolved_args(s.data.loader_args, loaded.resolve).items()}
        version = LOADER_VERSION.get(s.data.loader, 1)
        kb.source = f"loader {s.data.loader} {content_hash(args)}" + (f" v{version}" if version > 1 else "")
    if kb is None and any(getattr(cfg, "needs_knowledge_base", False) for _, cfg in loaded.arms.values()):
        raise UserError("a retrieval strategy is listed but there is no knowledge base", file=loaded.path,
                        field="knowledge_base")
    if kb is not None:
        known = {doc.id for doc in kb.documents}
        for e in every:
            for c in e.context_ids:
                if c not in known:
                    raise UserError(f"document '{c}' is not in the knowledge base", **_where(e), field="context_ids")
    return kb


def _check_ids(examples: list[Example], suite_path: Path) -> None:
    seen: dict[str, str] = {}
    for e in examples:
        if e.id in seen:
            w = _where(e)
            raise UserError(f"duplicate id '{e.id}' (first seen at {seen[e.id]})", file=w["file"] or suite_path,
                            line=w["line"], field="id")
        seen[e.id] = e.origin
