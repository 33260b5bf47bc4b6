import json

import pytest

from tests.conftest import SHARED_DATA, write_jsonl
from toolkit.data import dedup, read_examples, split_examples
from toolkit.errors import UserError


def test_three_jsonl_shapes(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1?"},
                      {"role": "assistant", "content": "A1"}]},
        {"prompt": "Q2?", "completion": " A2 "},
        {"question": "Q3?", "answer": "A3", "context_ids": ["doc-1"], "id": "x3"},
    ])
    ex = read_examples(p, task="qa")
    assert [(e.input, e.target) for e in ex] == [("Q1?", "A1"), ("Q2?", "A2"), ("Q3?", "A3")]
    assert ex[0].system == "Be brief." and ex[2].context_ids == ["doc-1"] and ex[2].id == "x3"


@pytest.mark.parametrize("row, field", [
    ({"question": "Q"}, "answer"),
    ({"question": "", "answer": "A"}, "question"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "messages"),
    ({"question": "Q", "answer": "A", "context_ids": [1.5]}, "context_ids"),
    ({"foo": "bar"}, "question"),
])
def test_bad_rows_name_file_line_field(tmp_path, row, field):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"question": "ok", "answer": "ok"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(UserError) as e:
        read_examples(p, task="qa")
    assert e.value.line == 2 and e.value.field == field and str(p) in str(e.value)


def test_classification_label_and_csv_field_mapping(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,category\nwhere is my card?,card_arrival\nI lost my card,lost_card\n")
    ex = read_examples(p, task="classification", fields={"input": "text", "label": "category"})
    assert [(e.input, e.label, e.target) for e in ex] == [("where is my card?", "card_arrival", "card_arrival"),
                                                         ("I lost my card", "lost_card", "lost_card")]


def test_dedup_and_stratified_split(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 3 else "b"} for i in range(60)] + [{"text": "t1", "label": "a"}]
    ex = read_examples(write_jsonl(tmp_path / "d.jsonl", rows), task="classification")
    kept, n = dedup(ex)
    assert n == 1 and len(kept) == 60
    train, val, test = split_examples(kept, fractions=(0.1, 0.2), seed=0, stratify=True)
    assert (len(train), len(val), len(test)) == (42, 6, 12)
    assert sum(e.label == "b" for e in test) == 4  # 1/3 of test, like the whole
    again = split_examples(kept, fractions=(0.1, 0.2), seed=0, stratify=True)
    assert [e.id for e in again[2]] == [e.id for e in test]


@pytest.mark.skipif(not (SHARED_DATA / "covid_faq").exists(), reason="../shared/datasets not beside the checkout")
def test_covid_faq_loader_reads_shared_data():
    from pathlib import Path

    from toolkit.data.loaders import covid_faq
    train, val, test, kb = covid_faq(SHARED_DATA / "covid_faq", suite_path=Path("x.yaml"))
    assert len(kb.documents) == 213 and len(train) == 213
    assert len(val) == 24 and len(test) > 200
    assert len({e.input for e in val + test}) == len(val) + len(test)
    ids = {d.id for d in kb.documents}
    assert all(e.context_ids[0] in ids for e in test)


def test_multiple_choice_rows_take_index_letter_or_text(tmp_path):
    p = write_jsonl(tmp_path / "mc.jsonl", [
        {"question": "Capital of France?", "choices": ["Berlin", "Paris", "Rome"], "answer": 1},
        {"question": "2 + 2?", "choices": ["3", "4"], "answer": "b"},
        {"question": "Colour of the sky?", "options": ["green", "blue"], "answer": "Blue"},
    ])
    ex = read_examples(p, task="multiple_choice")
    assert [e.label for e in ex] == ["B", "B", "B"] and all(e.target == e.label for e in ex)
    assert ex[0].input == "Capital of France?\nA. Berlin\nB. Paris\nC. Rome"
    assert ex[0].to_query().options == ("A", "B", "C") and ex[1].to_query().options == ("A", "B")


def test_likelihood_choice_stays_within_the_items_own_options():
    from types import SimpleNamespace

    from strategies.base import Strategy
    from toolkit.data import Query

    class Scores:  # "E" is the most likely label for every prompt
        def choice_loglikelihood(self, prompts, labels):
            return [[5.0, 4.0, 3.0, 2.0, 1.0] for _ in prompts]

        def count_tokens(self, messages):
            return 1

    me = SimpleNamespace(res=SimpleNamespace(labels=["A", "B", "C", "D", "E"]))
    qs = [Query("q1", "two choices", ("A", "B")), Query("q2", "five", ("A", "B", "C", "D", "E")), Query("q3", "x")]
    got = Strategy.most_likely_label(me, Scores(), [[], [], []], qs, [[], [], []])
    assert [p.output for p in got] == ["B", "E", "E"]


@pytest.mark.parametrize("row, field, words", [
    ({"question": "Q", "choices": ["a", "b"], "answer": 2}, "answer", "one of the 2 choices"),
    ({"question": "Q", "choices": ["a", "b"], "answer": "purple"}, "answer", "one of the 2 choices"),
    ({"question": "Q", "choices": ["only"], "answer": 0}, "choices", "2 to 26"),
    ({"question": "Q", "answer": 0}, "choices", "2 to 26"),
])
def test_bad_multiple_choice_rows_name_line_and_field(tmp_path, row, field, words):
    p = write_jsonl(tmp_path / "mc.jsonl", [{"question": "ok", "choices": ["x", "y"], "answer": 0}, row])
    with pytest.raises(UserError) as e:
        read_examples(p, task="multiple_choice")
    assert e.value.line == 2 and e.value.field == field and words in str(e.value)
