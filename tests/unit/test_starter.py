"""`adaptbench init`: from a user's own file to a suite that `validate` (and so `run`) accepts."""

from __future__ import annotations

import csv
import json

import pytest

from toolkit.cli import main
from toolkit.data.suite_data import load_task_data
from toolkit.suites import load_suite


def test_init_writes_a_classification_suite_for_a_csv_with_its_own_column_names(tmp_path, capsys):
    data = tmp_path / "tickets.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ticket_id", "body", "team"])
        for i in range(90):
            w.writerow([i, f"My order {i} is {['late', 'broken', 'wrong'][i % 3]}, please help", ["shipping", "repairs",
                                                                                               "returns"][i % 3]])
    out = tmp_path / "suite.yaml"
    assert main(["init", str(data), "--input", "body", "-o", str(out)]) == 0
    assert "task classification" in capsys.readouterr().out
    loaded = load_suite(out)
    assert loaded.suite.task == "classification" and set(loaded.arms) == {"zero_shot", "few_shot", "finetune"}
    assert loaded.suite.data.file.fields == {"input": "body", "label": "team"}
    assert sorted(load_task_data(loaded).labels) == ["repairs", "returns", "shipping"]
    assert "# " in out.read_text()  # every setting says what it is
    assert main(["init", str(data), "--input", "body", "-o", str(out)]) == 2  # never overwrites unasked
    assert main(["validate", str(out)]) == 0


def test_init_on_a_folder_of_jsonl_splits_with_documents_adds_the_retrieving_arms(tmp_path):
    folder = tmp_path / "faq"
    folder.mkdir()
    for split, n in (("train", 12), ("test", 6)):
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"question": f"{split} question number {i}?", "answer": f"answer {i}"}) + "\n" for i in range(n)))
    kb = tmp_path / "docs"
    kb.mkdir()
    (kb / "a.md").write_text("# A\n\nSome facts.\n")
    out = tmp_path / "sub" / "faq.yaml"
    out.parent.mkdir()
    assert main(["init", str(folder), "--kb", str(kb), "-o", str(out)]) == 0
    loaded = load_suite(out)
    assert loaded.suite.task == "qa" and {"rag", "rag_finetune"} <= set(loaded.arms)
    assert loaded.suite.data.train.path == "../faq/train.jsonl"  # relative to the suite it wrote
    assert len(load_task_data(loaded).splits.test) == 6


@pytest.mark.parametrize("rows,task", [
    ([{"review": f"text {i}", "stars": str(i % 50 + 0.5)} for i in range(60)], "regression"),
    ([{"prompt": f"p{i}", "completion": f"a long free answer number {i}"} for i in range(60)], "qa"),
])
def test_init_tells_regression_and_qa_apart(tmp_path, rows, task):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "s.yaml"
    args = ["init", str(data), "-o", str(out)] + (["--input", "review", "--target", "stars"] if "review" in rows[0]
                                                  else [])
    assert main(args) == 0
    assert load_suite(out).suite.task == task


def test_init_refuses_what_it_cannot_read_in_one_line(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    assert main(["init", str(tmp_path / "x.csv"), "-o", str(tmp_path / "s.yaml")]) == 2
    assert main(["init", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--input COLUMN --target COLUMN" in err[0] and "no such file" in err[1]
    assert not (tmp_path / "s.yaml").exists() and [p.name for p in tmp_path.iterdir()] == ["x.csv"]
