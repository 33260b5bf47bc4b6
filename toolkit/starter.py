"""`adaptbench init DATA`: look at a user's data and write a starter suite.

It reads the first rows of the data (a file, a folder with train/validation/test files, or a
save_to_disk folder), tells the task from their shape (chat messages, prompt/completion, a
question and answer column, a label column with few distinct values, a numeric target), maps
the columns, picks every arm that applies (the retrieving ones only with documents) and the
limits of a first run on this machine, and writes the suite with a comment on every setting.
The suite is loaded and its data read before it is written: what `init` writes, `run` accepts.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data import FORMAT_OF, parse_number, peek_rows
from toolkit.data.suite_data import load_task_data
from toolkit.data.tables import is_saved_dataset
from toolkit.errors import UserError
from toolkit.runs import atomic_write
from toolkit.suites import load_suite

INPUT_COLUMNS = ("question", "input", "text", "query", "prompt", "sentence", "utterance", "message", "instruction")
TARGET_COLUMNS = ("answer", "target", "output", "response", "completion", "label", "category", "intent", "class",
                  "score", "rating")
LABEL_COLUMNS = ("label", "category", "intent", "class")
FIRST_RUN_TEST = 200       # test examples scored in a first run on a CPU (the report says it sampled)
FIRST_RUN_TRAIN = 1000     # training examples a first fine-tuning run on a CPU uses


@dataclass
class Guess:
    task: str
    input: str | None = None      # the column holding the question (None: chat or prompt/completion rows)
    target: str | None = None
    labels: list[str] = field(default_factory=list)
    shape: str = "columns"        # chat, prompt_completion or columns
    why: str = ""


def _column(keys: list[str], wanted: tuple[str, ...], exclude: str | None = None) -> str | None:
    lower = {k.lower(): k for k in keys if k != exclude}
    return next((lower[w] for w in wanted if w in lower), None)


def _fewest_values(rows: list[dict], keys: list[str], input_col: str | None) -> str | None:
    """No column has a known answer name: the other column with the fewest distinct values (a
    label, most likely), leaving out ids."""
    others = [k for k in keys if k != input_col and not re.search(r"(^|_)id$", k.lower())]
    if input_col is None or not others:
        return None
    return min(others, key=lambda k: len({str(r.get(k)) for r in rows}))


def guess_task(rows: list[dict], *, task: str | None = None, input_col: str | None = None,
               target_col: str | None = None, where: Path) -> Guess:
    """The task and the columns of these rows (overridable: --task, --input, --target)."""
    if not rows:
        raise UserError("no rows to look at", file=where)
    keys = list(rows[0])
    if "messages" in keys and not (input_col or target_col):
        answers = [m[-1].get("content") for r in rows if isinstance(m := r.get("messages"), list) and m
                   and isinstance(m[-1], dict)]
        shape, why = "chat", "rows are OpenAI chat messages"
    elif "prompt" in keys and "completion" in keys and not (input_col or target_col):
        answers, shape, why = [r.get("completion") for r in rows], "prompt_completion", "rows are prompt/completion"
    else:
        input_col = input_col or _column(keys, INPUT_COLUMNS)
        target_col = target_col or _column(keys, TARGET_COLUMNS, exclude=input_col) or _fewest_values(rows, keys,
                                                                                                     input_col)
        if input_col is None or target_col is None or input_col not in keys or target_col not in keys:
            raise UserError(f"cannot tell which column is the {'question' if not input_col else 'answer'} "
                            f"(columns: {', '.join(keys[:20])}): name them with --input COLUMN --target COLUMN",
                            file=where)
        answers, shape = [r.get(target_col) for r in rows], "columns"
        why = f"question in '{input_col}', answer in '{target_col}'"
    answers = [a for a in answers if a is not None and str(a).strip()]
    if not answers:
        raise UserError("no answers in the rows looked at", file=where)
    counts = Counter(str(a).strip() for a in answers)
    numeric = all(parse_number(str(a)) is not None and re.fullmatch(r"\s*-?[\d.,eE+]+\s*", str(a)) for a in answers)
    few = len(counts) <= max(2, min(100, len(answers) // 5)) and max(map(len, counts)) <= 60
    if task is None:
        if target_col and target_col.lower() in LABEL_COLUMNS and not numeric or few and not numeric:
            task = "classification"
        elif numeric and len(counts) > 10:
            task = "regression"
        elif numeric and few:
            task = "classification"
        else:
            task = "qa"
    labels = [k for k, _ in counts.most_common()] if task == "classification" else []
    return Guess(task=task, input=input_col if shape == "columns" else None,
                 target=target_col if shape == "columns" else None, labels=labels, shape=shape, why=why)


def fields_for(g: Guess) -> dict[str, str]:
    """The `fields:` mapping of a guess: the columns whose names adaptbench would not read on its own."""
    if g.shape != "columns":
        return {}
    out = {}
    if g.input not in ("question", "input", "text", "query"):
        out["input"] = g.input
    ours = "label" if g.task == "classification" else "target"
    if g.target != ours:
        out[ours] = g.target
    return out


def _data_files(data: Path) -> dict[str, Path] | None:
    """train/validation/test files in a folder (any supported extension), or None."""
    if not data.is_dir() or is_saved_dataset(data):
        return None
    found = {}
    for split in ("train", "validation", "test"):
        hits = sorted(p for p in data.iterdir() if p.stem == split and p.suffix.lower() in FORMAT_OF)
        if hits:
            found[split] = hits[0]
    if "train" not in found or "test" not in found:
        raise UserError("a data folder needs train.* and test.* files (.jsonl, .csv, .tsv or .parquet), "
                        "or give one file to split", file=data)
    return found


def _rel(p: Path, out: Path) -> str:
    return os.path.relpath(os.path.abspath(p), os.path.dirname(os.path.abspath(out)))  # links kept as written


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _entry(path: Path, out: Path, fields: dict[str, str], split: str | None = None) -> str:
    parts = [f"path: {_yaml_str(_rel(path, out))}"]
    if split:
        parts.append(f"split: {split}")
    if fields:
        parts.append("fields: {" + ", ".join(f"{k}: {_yaml_str(v)}" for k, v in fields.items()) + "}")
    return "{" + ", ".join(parts) + "}"


def suite_name(data: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.stem if data.is_file() else data.name).strip("._-")[:64]
    return stem if stem and stem[0].isalnum() else f"suite_{stem}"[:64] or "suite"


INSTRUCTIONS = {"qa": "Reply with the answer only, in a few words.",
                "classification": "Classify the text. Reply with the label only.",
                "regression": "Reply with a number only."}


def starter_suite(data: Path, out: Path, *, kb: Path | None = None, task: str | None = None,
                  input_col: str | None = None, target_col: str | None = None,
                  device: str = "cpu") -> tuple[str, Guess, int]:
    """(suite text, what was guessed, rows looked at). Long on purpose: it writes the suite
    top to bottom, a comment on each setting, as a user would read it."""
    files = _data_files(data)
    saved_splits = None
    if files is None and is_saved_dataset(data) and (data / "dataset_dict.json").is_file():
        saved_splits = json.loads((data / "dataset_dict.json").read_text()).get("splits", [])
    first = files["train"] if files else data
    rows = peek_rows(first, split=("train" if saved_splits and "train" in saved_splits else
                                   (saved_splits[0] if saved_splits else None)))
    g = guess_task(rows, task=task, input_col=input_col, target_col=target_col, where=first)
    fields = fields_for(g)
    cpu = device == "cpu"
    lines = [f"# Written by `adaptbench init` from {data.name}: {g.why}, so task {g.task}.",
             "# Check it with `adaptbench data check`, then run it; `adaptbench suite-fields SECTION` explains",
             "# every setting.",
             "version: 1",
             f"name: {suite_name(data)}",
             f"task: {g.task}                     # guessed from the rows; qa, classification, multiple_choice or "
             "regression",
             f"instruction: {_yaml_str(INSTRUCTIONS.get(g.task, INSTRUCTIONS['qa']))}"
             "   # the system prompt of every arm",
             "data:"]
    if files:
        for split, p in files.items():
            lines.append(f"  {split}: {_entry(p, out, fields)}")
    elif saved_splits and "train" in saved_splits and "test" in saved_splits:
        lines += [f"  {s}: {_entry(data, out, fields, split=s)}" for s in ("train", "validation", "test")
                  if s in saved_splits]
    else:
        lines += [f"  file: {_entry(data, out, fields, split=saved_splits[0] if saved_splits else None)}"
                  "   # one file: split below",
                  "  split: {validation: 0.1, test: 0.2, seed: 0}   # seeded" +
                  (", stratified by label" if g.task == "classification" else "")]
    if cpu:
        lines.append(f"  max_test_examples: {FIRST_RUN_TEST}         # a first run on this CPU: a seeded sample of the "
                     "test split; remove it to score every test example")
    if kb is not None:
        lines.append(f"knowledge_base: {_yaml_str(_rel(kb, out))}   # the documents the retrieving arms search")
    if g.task == "classification":
        shown = ", ".join(sorted(g.labels)[:12]) + (", ..." if len(g.labels) > 12 else "")
        lines.append(f"# labels: read from the data ({len(g.labels)} in the first {len(rows)} rows: {shown});"
                     " list them here to fix their order")
    lines += ["generator:",
              "  model: smollm2-135m-instruct     # bundled and offline; any Hugging Face id, local folder or "
              "OpenAI-compatible endpoint",
              "  max_new_tokens: " + ("16" if g.task != "qa" else "48") + "                # longest answer",
              "strategies:",
              "  zero_shot: {}                    # the instruction and the question",
              "  few_shot: {num_fewshot: " + ("5" if g.task == "classification" else "3") + "}        "
              "# the most similar solved training examples first"]
    if kb is not None:
        lines.append("  rag: {top_k: 3}                  # passages retrieved from the knowledge base in the prompt")
    many_labels = g.task == "classification" and len(g.labels) > 20
    ft = ["num_train_epochs: " + ("1" if cpu else "3")]
    if cpu:
        ft.append(f"max_train_examples: {FIRST_RUN_TRAIN}")
    if many_labels:
        ft.append("label_list: false")
    lines.append("  finetune: {" + ", ".join(ft) + "}   # LoRA on the train split" +
                 ("; a first run on this CPU: 1 epoch, at most 1,000 examples" if cpu else "") +
                 ("; many labels: trained without listing them in the prompt" if many_labels else ""))
    if kb is not None:
        lines.append("  rag_finetune: {" + ", ".join(ft) + ", top_k: 2}   # trained on prompts with retrieved "
                     "passages (RAFT-style)")
    return "\n".join(lines) + "\n", g, len(rows)


def write_starter(data: Path, out: Path, *, force: bool = False, **kw) -> Guess:
    """Write the starter suite to `out` once it loads and its data reads; a UserError otherwise."""
    if not data.exists():
        raise UserError("no such file or folder", file=data)
    if kw.get("kb") is not None and not kw["kb"].is_dir():
        raise UserError("the knowledge base must be a folder of .md/.txt documents", file=kw["kb"])
    if out.exists() and not force:
        raise UserError("exists already (choose another -o, or --force to replace it)", file=out)
    text, g, _ = starter_suite(data, out, **kw)
    tmp = out.with_name(f".{out.name}.init{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_task_data(load_suite(tmp))  # what init writes, run accepts (and its data reads)
    except UserError as e:
        raise UserError(f"the starter suite does not load: {e} (`adaptbench data check {data}` lists every "
                        "problem)", file=data) from None
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write(out, text)
    return g
