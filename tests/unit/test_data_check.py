"""`adaptbench data check`, and the hostile files every reader meets: each problem is found with
its file and line, the report says what it found, and `run` stops on what it cannot read."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import SHARED_DATA, write_jsonl
from toolkit.cli import main
from toolkit.data import read_examples
from toolkit.errors import UserError

FAST = ["--no-probe", "--near", "0"]


def check(capsys, target, *extra, out=None) -> tuple[int, dict, str]:
    out = out or (os.path.dirname(str(target)) + "/report")
    code = main(["data", "check", str(target), "-o", str(out), *extra])
    captured = capsys.readouterr()
    report = json.loads((__import__("pathlib").Path(out) / "data_report.json").read_text())
    return code, report, captured.err


def codes(report: dict) -> dict[str, dict]:
    return {f["code"]: f for f in report["findings"]}


def qa_rows(n: int, prefix: str = "q") -> list[dict]:
    return [{"question": f"{prefix} question number {i} about item {i * 7}?", "answer": f"answer {i}"} for i in range(n)]


# ------------------------------------------------------------------ hostile files

@pytest.mark.parametrize("name,content,message,line", [
    ("binary.jsonl", b"\x00\x01\x02PK\x03\x04" * 100, "a binary file", None),
    ("parquet.jsonl", b"PAR1" + b"\x00" * 64, "a Parquet file with a text extension", None),
    ("latin1.csv", "question,answer\ncaf\xe9?,yes\n".encode("latin-1"), "not valid UTF-8", 2),
    ("object.json", b'{\n  "data": [\n    {"question": "a?", "answer": "b"}\n  ]\n}\n', "one JSON object (keys: data)",
     None),
    ("broken.jsonl", b'{"question": "a?", "answer": "b"}\n{"question": "c?", "answer": \n', "malformed JSON", 2),
    ("broken.json", b'[{"question": "a?", "answer": "b"},\n {"question": "c?" "answer": "d"}]', "malformed JSON array",
     2),
])
def test_a_hostile_file_is_one_line_naming_file_and_line(tmp_path, name, content, message, line):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(UserError) as e:
        read_examples(p, task="qa")
    assert message in e.value.message and e.value.file == str(p) and e.value.line == line
    assert "\n" not in str(e.value)


def test_an_empty_file_and_a_100_mb_line_are_errors_not_crashes(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="no examples"):
        read_examples(empty, task="qa")
    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:
        f.write(b'{"question": "first?", "answer": "yes"}\n{"question": "')
        chunk = b"x" * (1 << 20)
        for _ in range(100):
            f.write(chunk)
        f.write(b'", "answer": "no"}\n{"question": "third?", "answer": "maybe"}\n')
    with pytest.raises(UserError) as e:
        read_examples(big, task="qa")
    assert e.value.line == 2 and "MiB" in e.value.message
    rows = tmp_path / "d"
    rows.mkdir()
    (rows / "train.jsonl").write_bytes(big.read_bytes())
    write_jsonl(rows / "test.jsonl", qa_rows(4, "t"))
    code, report, _ = check(capsys, rows, *FAST, out=tmp_path / "r")
    assert code == 2 and "train.jsonl:2: a line of 100 MiB" in codes(report)["malformed_line"]["where"][0]
    assert report["splits"]["train"] == 2  # the lines around it still read


def test_bom_crlf_and_a_json_array_are_accepted_and_reported(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    rows = qa_rows(30)
    (d / "train.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    (d / "test.csv").write_bytes(b"\xef\xbb\xbfquestion,answer\r\n" + b"".join(
        f"test question {i}?,answer {i}\r\n".encode() for i in range(10)))
    assert [e.input for e in read_examples(d / "test.csv", task="qa")][:1] == ["test question 0?"]
    assert read_examples(d / "train.json", task="qa")[3].origin.endswith("train.json:5")  # the line a row starts on
    code, report, _ = check(capsys, d, *FAST, out=tmp_path / "r")
    found = codes(report)
    assert {"bom", "crlf", "json_array"} <= set(found) and code in (0, 1)
    assert all(found[c]["level"] == "info" for c in ("bom", "crlf", "json_array"))
    assert report["splits"] == {"train": 30, "validation": 0, "test": 10}


def test_mixed_shapes_and_a_parquet_file_of_the_wrong_schema(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "mixed"
    d.mkdir()
    rows = qa_rows(20) + [{"prompt": f"extra prompt {i}", "completion": f"c {i}"} for i in range(5)]
    write_jsonl(d / "train.jsonl", rows)
    pq.write_table(pa.table({"id": [1, 2], "body": ["x", "y"]}), d / "test.parquet")
    with pytest.raises(UserError) as e:
        read_examples(d / "test.parquet", task="qa")
    assert e.value.line == 1 and "no question" in e.value.message and "columns: id, body" in e.value.message
    code, report, _ = check(capsys, d / "train.jsonl", *FAST, out=tmp_path / "r")
    assert "columns from line 1, prompt_completion from line 21" in codes(report)["mixed_shapes"]["where"][0]


# ------------------------------------------------------------------ what the check finds

def test_a_messy_file_gets_each_problem_reported_with_its_line(tmp_path, capsys, tiny_llama):
    """Duplicates, a conflicting answer, leakage (exact and near), imbalance, a rare and an
    unseen label, truncation and malformed lines: each found, each with its line."""
    train = [{"text": f"my parcel number {i} has not arrived yet", "label": "shipping"} for i in range(40)]
    train += [{"text": f"please refund the double charge on invoice {i}", "label": "billing"} for i in range(3)]
    train += [{"text": "my parcel number 0 has not arrived yet", "label": "shipping"},   # line 44: a repeat of line 1
              {"text": "my parcel number 1 has not arrived yet", "label": "billing"},    # line 45: conflicts with 2
              {"text": "word " * 300, "label": "shipping"}]                              # line 46: 300+ tokens
    lines = [json.dumps(r) for r in train] + ['{"text": "broken', '["not", "an", "object"]']
    d = tmp_path / "tickets"
    d.mkdir()
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(d / "test.jsonl", [
        {"text": "my parcel number 5 has not arrived yet", "label": "shipping"},       # exact leak of line 6
        {"text": "My parcel, number 7, has not arrived yet!", "label": "shipping"},    # the same once normalised
        {"text": "my parcel no. 9 hasn't arrived yet", "label": "shipping"},           # near leak of line 10
        {"text": "how do I change my password", "label": "account"}])                 # unseen in train
    suite = tmp_path / "s.yaml"
    suite.write_text(f"""name: tickets
task: classification
instruction: Classify the ticket.
data: {{train: {{path: tickets/train.jsonl, fields: {{input: text}}}}, test: {{path: tickets/test.jsonl, fields: {{input: text}}}}}}
generator: {{model: "{tiny_llama}"}}
strategies:
  finetune: {{max_seq_length: 64, num_train_epochs: 2, per_device_train_batch_size: 2}}
""")
    code, report, err = check(capsys, suite, "--near", "0.9", out=tmp_path / "r")
    found = codes(report)
    assert code == 2
    where = lambda c: " | ".join(found[c]["where"])  # noqa: E731
    assert found["malformed_line"]["count"] == 1 and "train.jsonl:47: malformed JSON" in where("malformed_line")
    assert "train.jsonl:48: each line must be a JSON object" in where("data_type")
    assert "train.jsonl:44: a repeat of" in where("duplicate_exact") and where("duplicate_exact").endswith(":1")
    assert "train.jsonl:45:" in where("conflicting_answers")
    assert found["leakage_exact"]["count"] == 2 and "test.jsonl:1: also at" in where("leakage_exact")
    assert "test.jsonl:3 ~" in where("leakage_near") and "train.jsonl:10" in where("leakage_near")
    assert found["imbalance"]["level"] == "warning" and report["labels"]["imbalance"]["ratio"] >= 10
    assert "'billing': 4" in where("rare_labels") and "'account'" in where("unseen_labels")
    assert "train.jsonl:46:" in where("truncation") and report["truncation"]["finetune"]["examples_over"] == 1
    assert report["truncation"]["finetune"]["suggested_max_seq_length"] >= 64
    est = report["estimate"]["arms"]["finetune"]
    assert est["tokens"] > 0 and est["seconds"] > 0 and report["estimate"]["probe"]["tokens_per_s"] > 0
    assert report["exit_code"] == 2 and any("max_seq_length" in r for r in report["recommendations"])
    assert "train.jsonl:47" in err and (tmp_path / "r" / "data_report.html").stat().st_size > 5000


def test_chat_rows_get_the_cookbook_error_types(tmp_path, capsys):
    ok = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"hello {i}?"},
                        {"role": "assistant", "content": f"hi {i}"}]} for i in range(12)]
    bad = [{"messages": [{"role": "user", "content": "no answer"}]},                                    # line 13
           {"messages": "not a list"},                                                                  # line 14
           {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},                    # line 15
           {"messages": [{"role": "user", "content": "q?", "lang": "en"}, {"role": "assistant", "content": "a"}]},
           {"messages": [{"role": "robot", "content": "q?"}, {"role": "user", "content": "q2?"},
                         {"role": "assistant", "content": "a"}]},                                      # line 17
           {"messages": [{"role": "user", "content": "q3?"}, {"role": "assistant", "content": "  "}]}]  # line 18
    p = write_jsonl(tmp_path / "chat.jsonl", ok + bad)
    code, report, _ = check(capsys, p, *FAST, out=tmp_path / "r")
    found = codes(report)
    assert code == 2
    assert ":13:" in found["example_missing_assistant_message"]["where"][0]
    assert ":14:" in found["missing_messages_list"]["where"][0]
    assert ":15:" in found["message_missing_key"]["where"][0]
    assert found["message_unrecognized_key"]["level"] == "warning" and "lang" in found["message_unrecognized_key"]["where"][0]
    assert found["unrecognized_role"]["level"] == "warning" and ":17:" in found["unrecognized_role"]["where"][0]
    assert ":18:" in found["missing_content"]["where"][0]


def test_prompt_completion_rows_get_the_legacy_prepare_data_checks(tmp_path, capsys):
    rows = [{"prompt": f"Classify: ticket {i} says the parcel is late\n\n###\n\n", "completion": f" LATE PARCEL {i} END"}
            for i in range(30)]
    p = write_jsonl(tmp_path / "pc.jsonl", rows)
    code, report, _ = check(capsys, p, *FAST, out=tmp_path / "r")
    found = codes(report)
    assert "'Classify: ticket '" in found["prompt_prefix"]["message"]
    assert "###" in found["prompt_separator"]["message"] and "END" in found["stop_sequence"]["message"]
    assert found["leading_whitespace"]["count"] == 30 and "uppercase" in found
    assert found["few_examples"]["level"] == "warning"  # 30 rows split: fewer than 100 to train on


def test_run_stops_on_data_errors_listing_each_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [json.dumps(r) for r in qa_rows(10)]
    lines[3] = '{"question": "q?"'
    lines[7] = '{"answer": "no question"}'
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(tmp_path / "test.jsonl", qa_rows(5, "t"))
    (tmp_path / "s.yaml").write_text("name: t\ntask: qa\ninstruction: Answer.\ndata: {train: train.jsonl, "
                                     "test: test.jsonl}\nstrategies: {zero_shot: {}}\n")
    assert main(["run", "s.yaml", "-q"]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl:4: malformed JSON" in err and "train.jsonl:8: question:" in err
    assert err.strip().splitlines()[-1].startswith("error: s.yaml: 2 problems in the data")
    assert not (tmp_path / "reports").exists()


def test_check_flags_are_checked(tmp_path, capsys):
    write_jsonl(tmp_path / "d.jsonl", qa_rows(10))
    assert main(["data", "check", str(tmp_path / "d.jsonl"), "--near", "2"]) == 2
    assert main(["data", "check", "demo", "--task", "qa"]) == 2
    assert main(["data", "check", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--near" in err[0] and "--task" in err[1] and "no such file" in err[2]


@pytest.mark.parametrize("suite", ["demo", "knowledge_injection", "served"])
def test_the_bundled_suites_check_clean_of_errors(tmp_path, capsys, suite):
    code, report, _ = check(capsys, suite, *FAST, out=tmp_path / "r")
    assert code in (0, 1) and not [f for f in report["findings"] if f["level"] == "error"]
    assert report["splits"]["test"] == 96 and all(t["examples_over"] == 0 for t in report["truncation"].values())
    assert report["tokens"]["tokenizer"] == "smollm2-135m-instruct"


@pytest.mark.parametrize("fmt,task", [("chat", "qa"), ("prompt_completion", "qa"), ("qa", "qa")])
def test_the_bundled_demo_data_prepares_into_every_format(tmp_path, fmt, task):
    from toolkit.bundled import bundled_suites

    src = bundled_suites()["demo"].parent / "demo" / "train.jsonl"
    out = tmp_path / "train.jsonl"
    assert main(["data", "prepare", str(src), str(out), "--format", fmt, "-q"]) == 0
    assert [e.target for e in read_examples(out, task=task)] == [e.target for e in read_examples(src, task=task)]


@pytest.mark.skipif(not (SHARED_DATA / "banking77").is_dir(), reason="needs ../shared/datasets")
@pytest.mark.parametrize("suite", ["banking77", "covid_qa", "pubmedqa", "covid_faq", "banking77_imbalanced"])
def test_the_public_data_suites_check_without_errors(tmp_path, capsys, suite):
    code, report, _ = check(capsys, suite, *FAST, "--data-dir", str(SHARED_DATA), out=tmp_path / "r")
    assert code in (0, 1), [f for f in report["findings"] if f["level"] == "error"]
    assert report["splits"]["test"] > 0 and report["tokens"]["train"]["user"]["max"] > 0


def test_squad_files_and_objects_of_rows_keyed_by_id_are_read_as_rows(tmp_path):
    squad = {"version": "1", "data": [{"title": "t", "paragraphs": [
        {"context": "The sky is blue.", "document_id": 7,
         "qas": [{"id": "a1", "question": "What colour is the sky?", "answers": [{"text": "blue", "answer_start": 11}]},
                 {"id": "a2", "question": "Is it blue?", "answers": [{"text": "yes"}]}]}]}]}
    for name, text in (("one_line.json", json.dumps(squad)), ("pretty.json", json.dumps(squad, indent=2))):
        (tmp_path / name).write_text(text)
        got = read_examples(tmp_path / name, task="qa")
        assert [(e.id, e.input, e.target) for e in got] == [("a1", "What colour is the sky?", "blue"),
                                                           ("a2", "Is it blue?", "yes")]
    by_id = {"123": {"QUESTION": "Does it work?", "final_decision": "yes"},
             "456": {"QUESTION": "Does it fail?", "final_decision": "no"}}
    (tmp_path / "by_id.json").write_text(json.dumps(by_id, indent=1))
    got = read_examples(tmp_path / "by_id.json", task="classification", fields={"input": "QUESTION",
                                                                                "label": "final_decision"})
    assert [(e.id, e.label) for e in got] == [("123", "yes"), ("456", "no")]


@pytest.mark.skipif(not (SHARED_DATA / "covid_qa").is_dir(), reason="needs ../shared/datasets")
def test_public_json_files_check_and_prepare_as_they_are(tmp_path, capsys):
    """COVID-QA's SQuAD file and PubMedQA's object of rows, given as files, not through loaders."""
    code, report, _ = check(capsys, SHARED_DATA / "covid_qa" / "200423_covidQA.json", *FAST, out=tmp_path / "r1")
    assert code in (0, 1) and report["task"] == "qa" and sum(report["splits"].values()) > 1000
    pm = SHARED_DATA / "pubmedqa" / "ori_pqal.json"
    code, report, _ = check(capsys, pm, *FAST, "--task", "classification", "--input", "QUESTION", "--target",
                            "final_decision", out=tmp_path / "r2")
    assert code in (0, 1) and set(report["labels"]["counts"]["train"]) == {"yes", "no", "maybe"}
    out = tmp_path / "pm"
    assert main(["data", "prepare", str(pm), str(out), "--format", "label", "--fields",
                 "input=QUESTION,label=final_decision", "--split", "0.8/0.1/0.1", "--stratify", "-q"]) == 0
    assert sum(len(read_examples(out / f"{s}.jsonl", task="classification")) for s in
               ("train", "validation", "test")) == 1000
    b77 = tmp_path / "b77.jsonl"  # banking77's CSV, columns guessed
    assert main(["data", "prepare", str(SHARED_DATA / "banking77" / "train.csv"), str(b77), "--format", "label",
                 "--dedupe", "exact", "-q"]) == 0
    got = read_examples(b77, task="classification")
    assert 9900 < len(got) <= 10003 and len({e.label for e in got}) == 77


def test_what_the_run_refuses_is_an_error_of_the_check_too(tmp_path, capsys):
    """Repeated ids, gold documents the knowledge base lacks, an empty test file next to other
    findings, and a test split that train asks in full."""
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.md").write_text("# A\n\nFacts.\n")
    write_jsonl(tmp_path / "train.jsonl", [{"id": "x", "question": "q1?", "answer": "a"},
                                          {"id": "x", "question": "q2?", "answer": "b"},
                                          {"question": "q3?", "answer": "c", "context_ids": ["a", "nope"]}])
    write_jsonl(tmp_path / "test.jsonl", [{"question": "t?", "answer": "d", "context_ids": ["a"]}])
    (tmp_path / "s.yaml").write_text("name: t\ntask: qa\ninstruction: A.\nknowledge_base: kb\ndata: {train: "
                                     "train.jsonl, test: test.jsonl}\nstrategies: {rag: {}}\n")
    code, report, _ = check(capsys, tmp_path / "s.yaml", *FAST, out=tmp_path / "r")
    found = codes(report)
    assert code == 2 and "train.jsonl:2: id: duplicate id 'x'" in found["duplicate_id"]["where"][0]
    assert "train.jsonl:3: context_ids: document 'nope'" in found["unknown_document"]["where"][0]
    (tmp_path / "test.jsonl").write_text("\ufeff\n")  # empty, with a BOM (an info finding)
    code, report, _ = check(capsys, tmp_path / "s.yaml", *FAST, out=tmp_path / "r")
    assert code == 2 and "empty_file" in codes(report) and "bom" in codes(report)
    write_jsonl(tmp_path / "train.jsonl", [{"question": "t?", "answer": "d"}, {"question": "u?", "answer": "e"}])
    write_jsonl(tmp_path / "test.jsonl", [{"question": "T?", "answer": "d"}])
    code, report, _ = check(capsys, tmp_path / "s.yaml", *FAST, out=tmp_path / "r")
    assert code == 2 and "all 1 test questions also appear in train" in codes(report)["every_test_in_train"]["where"][0]


def test_check_out_must_be_a_folder_and_hostile_labels_draw(tmp_path, capsys):
    rows = [{"text": f"row {i} text", "label": ["$\\foo$", "a_b$", "plain"][i % 3]} for i in range(30)]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "afile").write_text("x")
    assert main(["data", "check", str(p), "-o", str(tmp_path / "afile"), *FAST]) == 2
    assert "--out: is a file" in capsys.readouterr().err
    code, report, _ = check(capsys, p, *FAST, out=tmp_path / "r")
    assert code in (0, 1) and "$\\foo$" in report["labels"]["counts"]["train"]
    assert (tmp_path / "r" / "data_report.html").read_text().count("<svg") >= 1


def test_the_reader_goes_on_after_a_bad_first_line_and_never_swallows_the_rest(tmp_path):
    from toolkit.data.rows import iter_rows

    cases = {
        "bad_first.jsonl": ('{"question": "a?", "answer":\n{"question": "b?", "answer": "c"}\n', [2], ["1"]),
        "like_an_object.jsonl": ('{"a": {"question": "x?", "answer": "y"}, "b": {"question": "z?", "answer": "w"}}\n'
                                 '{"question": "d?", "answer": "e"}\n', [1, 2], []),
        "bigint.jsonl": ('{"question": "q?", "answer": ' + "9" * 5000 + '}\n{"question": "r?", "answer": "s"}\n', [2],
                         ["1"]),
        "long_field.csv": ("question,answer\n" + "x" * 300_000 + "?,yes\n", [2], []),
    }
    for name, (text, lines, bad) in cases.items():
        errors = []
        (tmp_path / name).write_text(text)
        assert [n for n, _ in iter_rows(tmp_path / name, errors=errors)] == lines, name
        assert [str(e.line) for e in errors] == bad, name
    (tmp_path / "after.json").write_text('[{"question": "a?", "answer": "b"}]\n[{"question": "c?", "answer": "d"}]\n')
    (tmp_path / "squad.json").write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": 5}]}]}))
    for name, message in (("after.json", "more after the JSON array"), ("squad.json", "not SQuAD's layout")):
        with pytest.raises(UserError, match=message):
            read_examples(tmp_path / name, task="qa")


def test_prepare_force_replaces_only_its_own_output(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("question,answer\n" + "".join(f"q{i}?,a{i}\n" for i in range(8)))
    (tmp_path / "notes.txt").write_text("mine")
    split = ["--split", "0.5/0.25/0.25", "--force", "-q"]
    assert main(["data", "prepare", str(src), str(tmp_path / "notes.txt"), "--format", "qa", *split]) == 2
    assert main(["data", "prepare", str(src), str(tmp_path / "o.jsonl"), "--format", "qa", "-q"]) == 0
    report = tmp_path / "o.jsonl.prepare_report.json"
    assert main(["data", "prepare", str(report), str(tmp_path / "o.jsonl"), "--format", "qa", "--force", "-q"]) == 2
    assert main(["data", "prepare", str(src), str(tmp_path / "notes.txt" / "x.jsonl"), "--format", "qa", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "is a file, and OUT would be a folder" in err[0] and "would replace IN" in err[1]
    assert "the folder OUT goes in is a file" in err[2]
    assert (tmp_path / "notes.txt").read_text() == "mine" and report.is_file()
