"""Registered loaders for public datasets whose files are not in adaptbench's
JSONL shape. A loader returns (train, validation, test, documents or None).
Files are read where they lie (the data directory); nothing is copied."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Callable

from toolkit.data import Example, shuffled, stable_id
from toolkit.data.kb import Document, KnowledgeBase
from toolkit.errors import UserError

LOADERS: dict[str, Callable] = {}
LOADER_HELP: dict[str, str] = {}
# bumped when a loader builds other documents from the same arguments: its knowledge base then
# gets an index of its own (toolkit.data.suite_data names the index by loader, arguments and this)
LOADER_VERSION: dict[str, int] = {}


def loader(name: str, help: str, version: int = 1):
    def deco(fn):
        LOADERS[name] = fn
        LOADER_HELP[name] = help
        LOADER_VERSION[name] = version
        return fn
    return deco


def _need(path: Path, field: str, suite_path: Path) -> Path:
    if not path.exists():
        raise UserError(f"file not found: {path}", file=suite_path, field=field)
    return path


@loader("covid_faq", "COVID FAQ (deepset COVID-QA): knowledge base = the FAQ answers; "
        "train = FAQ question -> answer; validation/test = user paraphrases of FAQ questions.")
def covid_faq(path: Path, *, suite_path: Path, seed: int = 0, validation_size: int = 24, **_):
    faq_file = _need(path / "faq_covidbert.csv", "data.loader_args.path", suite_path)
    pairs_file = _need(path / "eval_question_similarity_en.csv", "data.loader_args.path", suite_path)
    with faq_file.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    docs, train, by_question = [], [], {}
    for i, r in enumerate(rows):
        q, a = (r.get("question") or "").strip(), (r.get("answer") or "").strip()
        if not q or not a:
            continue
        doc_id = f"faq-{i:03d}"
        docs.append(Document(id=doc_id, text=f"{q}\n\n{a}"))
        by_question.setdefault(q, (doc_id, a))
        train.append(Example(id=doc_id, input=q, target=a, context_ids=[doc_id],
                             metadata={"category": r.get("category") or "", "source": r.get("source") or ""},
                             origin=f"{faq_file}:{i + 2}"))
    with pairs_file.open(encoding="utf-8") as f:
        pairs = [r for r in csv.DictReader(f) if r.get("similar") == "1"]
    held, seen = [], set()
    for n, r in enumerate(pairs):
        hit = by_question.get(r["question_1"].strip())
        q = r["question_2"].strip()
        if hit is None or q in seen:  # 20 paraphrases name a question absent from the FAQ file; a few repeat
            continue
        seen.add(q)
        doc_id, answer = hit
        held.append(Example(id="para-" + stable_id(q), input=q, target=answer, context_ids=[doc_id],
                            origin=f"{pairs_file}:{n + 2}"))
    held = shuffled(held, seed)
    return train, held[:validation_size], held[validation_size:], KnowledgeBase("covid_faq", docs)


@loader("covid_qa", "COVID-QA (deepset, SQuAD format): knowledge base = the 98 CORD-19 papers; questions with "
        "answer spans, split (seeded) into train/validation/test; gold document = the question's paper.")
def covid_qa(path: Path, *, suite_path: Path, seed: int = 0, validation_size: int = 50, test_size: int = 300, **_):
    qa_file = _need(path / "200423_covidQA.json", "data.loader_args.path", suite_path)
    data = json.loads(qa_file.read_text(encoding="utf-8"))["data"]
    docs, items, seen = [], [], set()
    for article in data:
        for para in article["paragraphs"]:
            doc_id = f"paper-{para['document_id']}"
            if doc_id not in seen:
                seen.add(doc_id)
                docs.append(Document(id=doc_id, text=para["context"]))
            for qa in para["qas"]:
                answers = [a["text"].strip() for a in qa.get("answers", []) if a.get("text", "").strip()]
                if qa.get("is_impossible") or not answers or not qa["question"].strip():
                    continue
                items.append(Example(id=f"q-{qa['id']}", input=qa["question"].strip(), target=answers[0],
                                     context_ids=[doc_id], metadata={"paper": doc_id}, origin=f"{qa_file}:qa {qa['id']}"))
    items = shuffled(items, seed)
    test, val, train = items[:test_size], items[test_size:test_size + validation_size], items[test_size + validation_size:]
    return train, val, test, KnowledgeBase("covid_qa", docs)


def make_filler(n: int, source: list[str], seed: int = 0) -> list[Document]:
    """n deterministic documents of 40 to 56 words (about one chunk of 128 tokens) drawn from a
    word-bigram model of `source` (texts): distractors with the source's vocabulary and word
    frequencies, whose embeddings spread much as the source's own do (benchmarks/kb_scale.py prints
    both spreads), the source's words recombined (a run of words recurs verbatim where the source
    has one continuation for each)."""
    successors: dict[str, list[str]] = {}
    starts: list[str] = []
    for text in source:
        words = text.split()
        for i, w in enumerate(words):
            if i == 0 or words[i - 1].endswith("."):
                starts.append(w)
            if i + 1 < len(words):
                successors.setdefault(w, []).append(words[i + 1])
    if n and not starts:
        raise ValueError("make_filler needs source texts with words to draw from")
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        budget, words = rng.randint(40, 56), []
        while len(words) < budget:  # sentences from a start word, each word a successor of the last
            w = rng.choice(starts)
            words.append(w)
            while not w.endswith(".") and w in successors and len(words) < budget:
                w = rng.choice(successors[w])
                words.append(w)
        docs.append(Document(f"filler-{i:06d}", " ".join(words)))
    return docs


def pubmedqa_abstracts(path: Path, suite_path: Path, field: str) -> list[Document]:
    data_file = _need(path / "ori_pqal.json", field, suite_path)
    return [Document(f"pmid-{pid}", " ".join(c.strip() for c in r["CONTEXTS"]))
            for pid, r in json.loads(data_file.read_text(encoding="utf-8")).items()]


MAX_FILLER = 5_000_000


@loader("covid_qa_distractors", "COVID-QA's questions and split (as covid_qa) over a knowledge base grown to scale: "
        "the 98 CORD-19 papers, the 1,000 PubMedQA abstracts (`pubmedqa_path`) and `filler_documents` seeded "
        "filler documents of 40-56 words drawn from a word-bigram model of those abstracts, so each gold paper is "
        "one among many (91,500 filler documents: about "
        "100,000 chunks of 128 tokens).", version=2)
def covid_qa_distractors(path: Path, *, suite_path: Path, seed: int = 0, validation_size: int = 50,
                         test_size: int = 300, pubmedqa_path: Path | None = None, filler_documents: int = 0, **_):
    n = filler_documents
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_FILLER:
        raise UserError(f"filler_documents needs a whole number from 0 to {MAX_FILLER:,}", file=suite_path,
                        field="data.loader_args.filler_documents")
    if n and pubmedqa_path is None:
        raise UserError("filler_documents needs pubmedqa_path: the filler is drawn from its abstracts' words",
                        file=suite_path, field="data.loader_args.pubmedqa_path")
    train, val, test, kb = covid_qa(path, suite_path=suite_path, seed=seed, validation_size=validation_size,
                                    test_size=test_size)
    docs = list(kb.documents)
    abstracts = [] if pubmedqa_path is None else \
        pubmedqa_abstracts(Path(pubmedqa_path), suite_path, "data.loader_args.pubmedqa_path")
    if n and not any(d.text.strip() for d in abstracts):
        raise UserError("filler_documents: the abstracts of pubmedqa_path hold no text to draw the filler from",
                        file=suite_path, field="data.loader_args.pubmedqa_path")
    # the filler is drawn from the abstracts, not from the gold papers
    docs += abstracts + make_filler(n, [d.text for d in abstracts], seed)
    return train, val, test, KnowledgeBase("covid_qa_distractors", docs)


@loader("pubmedqa", "PubMedQA (PQA-L): yes/no/maybe questions, each with its abstract as context in the input; "
        "test = the 500 official test ids, the other 500 are train/validation.")
def pubmedqa(path: Path, *, suite_path: Path, seed: int = 0, validation_size: int = 50, with_context: bool = True, **_):
    data_file = _need(path / "ori_pqal.json", "data.loader_args.path", suite_path)
    test_ids = set(json.loads(_need(path / "test_ground_truth.json", "data.loader_args.path", suite_path).read_text()))
    rows = json.loads(data_file.read_text(encoding="utf-8"))
    train, test = [], []
    for pid, r in rows.items():
        context = " ".join(c.strip() for c in r["CONTEXTS"])
        text = f"Abstract: {context}\n\nQuestion: {r['QUESTION'].strip()}" if with_context else r["QUESTION"].strip()
        ex = Example(id=f"pmid-{pid}", input=text, target=r["final_decision"], label=r["final_decision"],
                     metadata={"year": r.get("YEAR", "")}, origin=f"{data_file}:{pid}")
        (test if pid in test_ids else train).append(ex)
    train = shuffled(train, seed)
    return train[validation_size:], train[:validation_size], test, None


IMBALANCED_INTENTS = ["card_arrival", "top_up_failed", "exchange_rate", "pin_blocked", "declined_transfer",
                      "lost_or_stolen_card"]


@loader("banking77_imbalanced", "banking77 made imbalanced on purpose: a few intents (`intents`) whose training "
        "examples fall off (`train_per_label`, a seeded sample of the official train split per intent), "
        "`validation_per_label` more of each for validation, and the official test rows of those intents.")
def banking77_imbalanced(path: Path, *, suite_path: Path, seed: int = 0, intents: list[str] | None = None,
                         train_per_label: list[int] | None = None, validation_per_label: int = 5, **_):
    if intents is not None and (not isinstance(intents, list) or not all(isinstance(i, str) for i in intents)
                                or len(set(intents)) != len(intents) or len(intents) < 2):
        raise UserError("intents needs a list of at least two different intent names", file=suite_path,
                        field="data.loader_args.intents")
    if not isinstance(validation_per_label, int) or isinstance(validation_per_label, bool) or validation_per_label < 0:
        raise UserError("validation_per_label needs a whole number, 0 or more", file=suite_path,
                        field="data.loader_args.validation_per_label")
    intents = list(intents or IMBALANCED_INTENTS)
    counts = list(train_per_label or [120, 60, 30, 15, 8, 4])
    if len(counts) != len(intents) or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in counts):
        raise UserError(f"train_per_label needs one count of at least 1 per intent ({len(intents)} intents, "
                        f"{len(counts)} counts)", file=suite_path, field="data.loader_args.train_per_label")

    def read(name: str) -> dict[str, list[Example]]:
        f = _need(path / name, "data.loader_args.path", suite_path)
        by: dict[str, list[Example]] = {i: [] for i in intents}
        with f.open(encoding="utf-8", newline="") as fh:
            for line, r in enumerate(csv.DictReader(fh), start=2):
                lab, text = (r.get("category") or "").strip(), (r.get("text") or "").strip()
                if lab in by and text:
                    by[lab].append(Example(id=f"{name.split('.')[0]}-{line}", input=text, target=lab, label=lab,
                                           origin=f"{f}:{line}"))
        if missing := [i for i, rows in by.items() if not rows]:
            raise UserError(f"intent '{missing[0]}' has no rows in {f}", file=suite_path, field="data.loader_args.intents")
        return by

    pool, test = read("train.csv"), read("test.csv")
    train, val = [], []
    for k, (intent, n) in enumerate(zip(intents, counts)):
        rows = shuffled(pool[intent], seed + k)
        if n + validation_per_label > len(rows):
            raise UserError(f"intent '{intent}' has {len(rows)} training rows, fewer than {n} + "
                            f"{validation_per_label} asked for", file=suite_path, field="data.loader_args.train_per_label")
        train += rows[:n]
        val += rows[n:n + validation_per_label]
    return shuffled(train, seed), val, [e for i in intents for e in test[i]], None


def resolved_args(args: dict, resolve) -> dict:
    """The loader's arguments with `path` and every `*_path` resolved (relative to the suite,
    {data_dir}/ expanded)."""
    return {k: resolve(v, f"data.loader_args.{k}") if (k == "path" or k.endswith("_path")) and isinstance(v, str) else v
            for k, v in args.items()}


def run_loader(name: str, args: dict, *, suite_path: Path, resolve, seed: int):
    if name not in LOADERS:
        raise UserError(f"unknown loader '{name}' (choose from: {', '.join(LOADERS)})", file=suite_path, field="data.loader")
    args = dict(args)
    if "path" not in args:
        raise UserError("the loader needs a `path`", file=suite_path, field="data.loader_args.path")
    args = resolved_args(args, resolve)
    args.setdefault("seed", seed)
    try:
        return LOADERS[name](suite_path=suite_path, **args)
    except TypeError as e:
        raise UserError(f"bad loader arguments: {e}", file=suite_path, field="data.loader_args") from None

