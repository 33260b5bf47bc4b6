"""`adaptbench data prepare`: real files of every kind in, JSON Lines that read back out; exact
seeded splits, stratification, deduplication, balancing, bad rows and bad flags."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, write_jsonl
from toolkit.checks.prepare import near_keep, prepare
from toolkit.cli import main
from toolkit.data import read_examples
from toolkit.errors import UserError

LABELS = ["billing"] * 6 + ["shipping"] * 3 + ["returns"]  # 60 / 30 / 10 %


def cli(capsys, *argv) -> tuple[int, list[str]]:
    """Exit code and the non-empty stderr lines of `adaptbench data prepare ARGV`."""
    try:
        code = main(["data", "prepare", *map(str, argv)])
    except SystemExit as e:  # argparse
        code = e.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def label_rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "text": f"ticket number {i} about {LABELS[i % 10]}", "label": LABELS[i % 10]}
            for i in range(n)]


def chat_rows(n: int) -> list[dict]:
    return [{"messages": ([{"role": "system", "content": "You are terse."}] if i % 2 else [])
             + [{"role": "user", "content": f"What is item {i}?"}, {"role": "assistant", "content": f"Item {i}."}]}
            for i in range(n)]


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def report_of(out: Path) -> dict:
    return json.loads((out / "prepare_report.json" if out.is_dir() else
                       out.with_name(out.name + ".prepare_report.json")).read_text())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ---- every input kind, every format --------------------------------------------------------------

def test_a_csv_with_quoted_multiline_fields_becomes_label_rows(tmp_path, capsys):
    src = tmp_path / "reviews.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["body", "stars", "who"])
        for i in range(40):
            w.writerow([f'Review {i}, "quoted",\nover two lines', str(1 + i % 5), f"user{i}"])
    out = tmp_path / "reviews.jsonl"
    code, err = cli(capsys, src, out, "--format", "label", "--fields", "input=body,label=stars")
    assert code == 0, err
    exs = read_examples(out, task="classification")
    assert len(exs) == 40 and exs[3].input == 'Review 3, "quoted",\nover two lines' and exs[3].label == "4"
    assert set(lines_of(out)[0]) == {"id", "text", "label"}
    rep = report_of(out)
    assert rep["rows_read"] == 40 and rep["rows_written"] == {"all": 40} and not rep["fields_guessed"]
    assert rep["labels"]["all"] == {str(s): 8 for s in range(1, 6)}


def test_columns_are_guessed_without_fields(tmp_path):
    src = tmp_path / "t.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["utterance", "intent"])
        w.writerows([f"please help with {i}", LABELS[i % 10]] for i in range(50))
    rep = prepare(src, tmp_path / "o.jsonl", fmt="label")
    assert rep["task"] == "classification" and rep["fields_guessed"]
    assert rep["fields"] == {"input": "utterance", "label": "intent"}
    assert Counter(e.label for e in read_examples(tmp_path / "o.jsonl", task="classification"))["billing"] == 30


@pytest.mark.parametrize("fmt", ["chat", "prompt_completion", "qa", "label"])
def test_every_format_reads_back_with_read_examples(tmp_path, fmt):
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(12))
    out = tmp_path / f"{fmt}.jsonl"
    rep = prepare(src, out, fmt=fmt)
    task = "classification" if fmt == "label" else "qa"
    assert rep["task"] == task
    before, after = read_examples(src, task=task), read_examples(out, task=task)
    assert [(e.input, e.target) for e in after] == [(e.input, e.target) for e in before]
    rows = lines_of(out)
    if fmt == "chat":
        assert all(set(r) == {"messages"} for r in rows)
        assert [len(r["messages"]) for r in rows[:2]] == [2, 3] and rows[1]["messages"][0]["role"] == "system"
        assert [e.system for e in after[:2]] == [None, "You are terse."]
    else:
        keys = {"prompt_completion": {"prompt", "completion"}, "qa": {"id", "question", "answer"},
                "label": {"id", "text", "label"}}[fmt]
        assert all(set(r) == keys for r in rows)


def test_prompt_completion_rows_become_chat(tmp_path):
    src = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": f"Say {i}", "completion": f"{i}!"} for i in range(5)])
    prepare(src, tmp_path / "c.jsonl", fmt="chat")
    assert lines_of(tmp_path / "c.jsonl")[2] == {"messages": [{"role": "user", "content": "Say 2"},
                                                              {"role": "assistant", "content": "2!"}]}
    assert len(read_examples(tmp_path / "c.jsonl", task="qa")) == 5


def test_qa_rows_keep_context_ids_and_metadata_only_when_present(tmp_path):
    rows = [{"question": "Who?", "answer": "Ann", "context_ids": ["d1"], "metadata": {"src": "faq"}},
            {"question": "Where?", "answer": "Oslo"}]
    prepare(write_jsonl(tmp_path / "qa.jsonl", rows), tmp_path / "o.jsonl", fmt="qa")
    got = lines_of(tmp_path / "o.jsonl")
    assert got[0]["context_ids"] == ["d1"] and got[0]["metadata"] == {"src": "faq"}
    assert set(got[1]) == {"id", "question", "answer"}
    assert read_examples(tmp_path / "o.jsonl", task="qa")[0].context_ids == ["d1"]


def test_a_parquet_file_is_read_in_batches(tmp_path):
    # pyarrow: a real Parquet file, as users have them
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"review": [f"text {i}" for i in range(30)], "stars": [1 + i % 3 for i in range(30)]})
    pq.write_table(table, tmp_path / "r.parquet")
    rep = prepare(tmp_path / "r.parquet", tmp_path / "out", fmt="label", fields={"input": "review", "label": "stars"},
                  split=(0.6, 0.2, 0.2), stratify=True)
    assert rep["rows_written"] == {"train": 18, "validation": 6, "test": 6}
    assert {e.label for e in read_examples(tmp_path / "out" / "test.jsonl", task="classification")} == {"1", "2", "3"}


def test_a_saved_datasetdict_needs_hf_split(tmp_path, capsys):
    # datasets: a save_to_disk folder written as users write one
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": [f"q{i}?" for i in range(8)],
                                             "answer": [f"a{i}" for i in range(8)]}),
        "test": datasets.Dataset.from_dict({"question": ["x?"], "answer": ["y"]})})
    dd.save_to_disk(str(tmp_path / "saved"))
    capsys.readouterr()  # datasets' own progress bars
    code, err = cli(capsys, tmp_path / "saved", tmp_path / "o.jsonl", "--format", "qa")
    assert code == 2 and len(err) == 1 and "train, test" in err[0]
    code, err = cli(capsys, tmp_path / "saved", tmp_path / "o.jsonl", "--format", "qa", "--hf-split", "train")
    assert code == 0, err
    assert [e.target for e in read_examples(tmp_path / "o.jsonl", task="qa")] == [f"a{i}" for i in range(8)]
    assert report_of(tmp_path / "o.jsonl")["hf_split"] == "train"


# ---- splits -----------------------------------------------------------------------------------

def test_split_counts_are_exact_and_seeded(tmp_path, capsys):
    src = write_jsonl(tmp_path / "l.jsonl", label_rows(101))

    def split(name, seed):
        code, err = cli(capsys, src, tmp_path / name, "--format", "label", "--split", "0.8/0.1/0.1", "--seed", seed)
        assert code == 0, err
        return {s: (tmp_path / name / f"{s}.jsonl").read_text() for s in ("train", "validation", "test")}

    a, b, c = split("a", 3), split("b", 3), split("c", 4)
    assert {s: len(t.splitlines()) for s, t in a.items()} == {"train": 81, "validation": 10, "test": 10}
    assert a == b and a["test"] != c["test"]
    ids = [r["id"] for t in a.values() for r in map(json.loads, t.splitlines())]
    assert sorted(ids) == sorted(f"r{i}" for i in range(101))  # every row once, in one split
    assert report_of(tmp_path / "a")["split"]["rows"] == {"train": 81, "validation": 10, "test": 10}


def test_a_zero_validation_fraction_writes_no_validation_file(tmp_path):
    rep = prepare(write_jsonl(tmp_path / "l.jsonl", label_rows(20)), tmp_path / "o", fmt="qa", split=(0.75, 0, 0.25))
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["prepare_report.json", "test.jsonl", "train.jsonl"]
    assert rep["rows_written"] == {"train": 15, "test": 5}


def test_stratify_keeps_each_labels_share(tmp_path):
    rep = prepare(write_jsonl(tmp_path / "l.jsonl", label_rows(200)), tmp_path / "o", fmt="label",
                  split=(0.8, 0.1, 0.1), stratify=True, seed=7)
    want = {"billing": 12, "shipping": 6, "returns": 2}
    assert rep["labels"]["test"] == want and rep["labels"]["validation"] == want
    assert rep["labels"]["train"] == {"billing": 96, "shipping": 48, "returns": 16}
    got = Counter(e.label for e in read_examples(tmp_path / "o" / "test.jsonl", task="classification"))
    assert got == want


# ---- deduplication -------------------------------------------------------------------------------

def test_dedupe_exact_drops_repeats_and_counts_conflicts_with_their_lines(tmp_path):
    rows = [{"question": f"Question {i}?", "answer": f"answer {i}"} for i in range(10)]
    rows[6] = {"question": "question 2", "answer": "ANSWER 2!"}   # line 7 repeats line 3 once normalised
    rows[8] = {"question": "Question 2?", "answer": "answer 2"}   # line 9 too
    rows[9] = {"question": "QUESTION 4", "answer": "another answer"}  # line 10 asks line 5's question anew
    out = tmp_path / "o.jsonl"
    rep = prepare(write_jsonl(tmp_path / "qa.jsonl", rows), out, fmt="qa", dedupe="exact")
    ex = rep["dropped"]["exact_duplicates"]
    assert ex["count"] == 2 and ex["examples"] == [{"line": 7, "repeat_of": 3}, {"line": 9, "repeat_of": 3}]
    assert rep["conflicts"] == {"questions": 1, "rows": 2, "examples": [[5, 10]]}
    assert rep["rows_written"] == {"all": 8} and len(read_examples(out, task="qa")) == 8
    assert "dropped 2 exact duplicate rows (first at line 7, a repeat of line 3)" in rep["changes"]
    assert any("different answers" in c for c in rep["changes"])


def test_dedupe_near_drops_a_paraphrase_with_minilm(tmp_path):
    topics = ["the weather in Oslo", "a refund for my order", "resetting my password", "the train to Paris",
              "baking sourdough bread", "the price of a phone plan", "learning to swim", "fixing a flat tyre",
              "the opening hours of the museum", "a vegan lasagne recipe", "tax on a second home",
              "planting tomatoes in spring", "the rules of chess", "a cheap flight to Rome", "cleaning an oven",
              "adopting a cat", "the history of Rome", "a broken washing machine", "renewing a passport",
              "choosing running shoes", "how volcanoes form", "a lost credit card", "writing a cover letter",
              "the distance to the moon", "tuning a guitar", "booking a dentist", "saving for retirement",
              "installing Python"]
    rows = [{"question": f"Tell me about {t}.", "answer": f"Here is something about {t}."} for t in topics]
    rows.insert(5, {"question": "Tell me something about the weather in Oslo.", "answer": "It rains."})
    rows.insert(20, {"question": "Please tell me about a refund for my order", "answer": "Ask support."})
    rep = prepare(write_jsonl(tmp_path / "qa.jsonl", rows), tmp_path / "o.jsonl", fmt="qa", dedupe="near", near=0.9)
    near = rep["dropped"]["near_duplicates"]
    assert near["count"] == 2, near
    assert [(e["line"], e["near"]) for e in near["examples"]] == [(6, 1), (21, 2)]
    assert rep["rows_written"] == {"all": 28}
    kept = [r["question"] for r in rows if r["answer"] not in ("It rains.", "Ask support.")]
    assert [e.input for e in read_examples(tmp_path / "o.jsonl", task="qa")] == kept


def test_dedupe_near_refuses_more_rows_than_it_can_hold(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("toolkit.checks.prepare.NEAR_MAX_ROWS", 5)
    src = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}?", "answer": "a"} for i in range(6)])
    code, err = cli(capsys, src, tmp_path / "o.jsonl", "--format", "qa", "--dedupe", "near")
    assert code == 2 and err[0].startswith("error: --dedupe: near holds every question's embedding") and "6" in err[0]
    assert not (tmp_path / "o.jsonl").exists()


def test_near_keep_matches_a_brute_force_greedy_pass_blockwise():
    v = np.random.default_rng(0).normal(size=(60, 8))
    t, e0, e1 = np.arccos(0.992), np.eye(8)[0], np.eye(8)[1]
    # 13 is within 0.99 of 2, and 40 of 13 but not of 2: 40 stays, as only kept rows count
    v[2], v[13], v[40] = e0, np.cos(t) * e0 + np.sin(t) * e1, np.cos(2 * t) * e0 + np.sin(2 * t) * e1
    v[9], v[41] = v[8] + 0.01, v[7] + 0.01  # within a block of 7, and across blocks
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    sims = v @ v.T
    want: list[int] = []
    for j in range(len(v)):
        if not any(sims[j, i] >= 0.99 for i in want):
            want.append(j)
    kept, matches = near_keep(v, 0.99, block=7)
    assert np.flatnonzero(kept).tolist() == want and 13 not in want and 40 in want
    assert [(j, i) for j, i, _ in matches] == [(9, 8), (13, 2), (41, 7)]


# ---- balancing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("how, per_label", [("oversample", 48), ("undersample", 8)])
def test_balance_evens_out_the_train_split_only(tmp_path, how, per_label):
    src = write_jsonl(tmp_path / "l.jsonl", label_rows(100))
    rep = prepare(src, tmp_path / "o", fmt="label", split=(0.8, 0.1, 0.1), stratify=True, balance=how, seed=1)
    train = read_examples(tmp_path / "o" / "train.jsonl", task="classification")
    assert Counter(e.label for e in train) == {lab: per_label for lab in set(LABELS)}
    assert len({e.id for e in train}) == len(train)  # a repeat has an id of its own: a suite accepts it
    assert rep["balance"]["before"] == {"billing": 48, "shipping": 24, "returns": 8}
    assert rep["labels"]["test"] == {"billing": 6, "shipping": 3, "returns": 1}  # the true distribution
    again = prepare(src, tmp_path / "o", fmt="label", split=(0.8, 0.1, 0.1), stratify=True, balance=how, seed=1,
                    force=True)
    assert again["balance"] == rep["balance"]
    assert [e.id for e in read_examples(tmp_path / "o" / "train.jsonl", task="classification")] == [e.id for e in train]


# ---- bad rows, existing output, bad flags -----------------------------------------------------------

def _with_bad_rows(tmp_path) -> Path:
    src = write_jsonl(tmp_path / "l.jsonl", label_rows(10))
    lines = src.read_text().splitlines()
    lines[3] = '{"text": "broken", '
    lines[6] = '{"text": "no label here"}'
    src.write_text("\n".join(lines) + "\n")
    return src


def test_a_bad_row_stops_with_its_line_and_nothing_is_written(tmp_path, capsys):
    src = _with_bad_rows(tmp_path)
    code, err = cli(capsys, src, tmp_path / "out", "--format", "label", "--split", "0.6/0.2/0.2")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {src}:4: malformed JSON"), err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_skip_bad_drops_and_lists_the_bad_rows(tmp_path, capsys):
    src = _with_bad_rows(tmp_path)
    code, err = cli(capsys, src, tmp_path / "o.jsonl", "--format", "label", "--skip-bad")
    assert code == 0, err
    bad = report_of(tmp_path / "o.jsonl")["dropped"]["malformed"]
    assert bad["count"] == 2 and [b["line"] for b in bad["listed"]] == [4, 7]
    assert "malformed JSON" in bad["listed"][0]["message"] and bad["listed"][1]["message"].startswith("answer:")
    assert len(read_examples(tmp_path / "o.jsonl", task="classification")) == 8


def test_out_is_replaced_only_with_force_and_only_when_prepare_wrote_it(tmp_path, capsys):
    src = write_jsonl(tmp_path / "l.jsonl", label_rows(10))
    out = tmp_path / "o"
    assert cli(capsys, src, out, "--format", "label", "--split", "0.6/0.2/0.2")[0] == 0
    code, err = cli(capsys, src, out, "--format", "qa", "--split", "0.6/0.2/0.2")
    assert code == 2 and err == [f"error: {out}: already exists (--force replaces it once everything is written)"]
    assert cli(capsys, src, out, "--format", "qa", "--split", "0.6/0.2/0.2", "--force")[0] == 0
    assert report_of(out)["format"] == "qa" and leftovers(tmp_path) == []
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, err = cli(capsys, src, foreign, "--format", "qa", "--split", "0.6/0.2/0.2", "--force")
    assert code == 2 and "prepare does not write" in err[0] and (foreign / "notes.txt").exists()


def test_a_failure_while_writing_leaves_the_old_output_and_no_temporary(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "l.jsonl", label_rows(10))
    out = tmp_path / "o.jsonl"
    prepare(src, out, fmt="label")
    before = out.read_text()
    calls = []

    def fail_on_the_fifth(ex, fmt, copy=0):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return {"text": ex.input}

    monkeypatch.setattr("toolkit.checks.prepare.output_row", fail_on_the_fifth)
    with pytest.raises(OSError):
        prepare(src, out, fmt="qa", force=True)
    assert out.read_text() == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("extra, flag, words", [
    (["--split", "0.7/0.1/0.1"], "--split", "fractions must add up to 1 (got 0.9)"),
    (["--split", "0.8/0.2"], "--split", "TRAIN/VALIDATION/TEST"),
    (["--split", "0.9/0.1/0"], "--split", "above 0"),
    (["--balance", "oversample", "--task", "qa"], "--balance", "the task is qa"),
    (["--split", "0.8/0.1/0.1", "--stratify"], "--stratify", "the task is qa"),
    (["--stratify", "--format", "label"], "--stratify", "needs --split"),
    (["--fields", "input"], "--fields", "OURS=THEIRS"),
    (["--fields", "question=q,stars=s"], "--fields", "'stars' is not a field"),
    (["--dedupe", "near", "--near", "1.5"], "--near", "at most 1"),
    (["--hf-split", "train"], "--hf-split", "save_to_disk"),
    (["--seed", "-1"], "--seed", "0 or more"),
])
def test_bad_flags_are_one_line_naming_the_flag(tmp_path, capsys, extra, flag, words):
    src = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(20)])
    out = tmp_path / ("o" if "--split" in extra else "o.jsonl")
    args = [src, out, *extra] if "--format" in extra else [src, out, "--format", "qa", *extra]
    code, err = cli(capsys, *args)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {flag}: ") and words in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("out, words", [
    ("qa.jsonl", "OUT is IN itself"), ("o", "without --split OUT is one JSON Lines file"),
])
def test_bad_out_paths(tmp_path, capsys, out, words):
    src = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q?", "answer": "a"}])
    code, err = cli(capsys, src, tmp_path / out, "--format", "qa")
    assert code == 2 and len(err) == 1 and words in err[0], err
    code, err = cli(capsys, src, tmp_path / "o.jsonl", "--format", "qa", "--split", "0.5/0/0.5")
    assert code == 2 and "with --split OUT is a folder" in err[0]


def test_too_few_rows_for_the_split(tmp_path):
    src = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}?", "answer": "a"} for i in range(3)])
    with pytest.raises(UserError) as e:
        prepare(src, tmp_path / "o", fmt="qa", split=(0.8, 0.1, 0.1))
    assert e.value.field == "--split" and "3 rows are too few" in str(e.value)


def test_importing_prepare_loads_nothing_heavy():
    code = ("import sys, toolkit.checks.prepare; heavy = {'torch', 'datasets', 'sentence_transformers', "
            "'toolkit.starter', 'toolkit.models'} & set(sys.modules); assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
