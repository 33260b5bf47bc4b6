import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import MINIMAL_SUITE
from toolkit.errors import UserError
from toolkit.suites import load_suite

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(text))
    return p


BASE = textwrap.indent(MINIMAL_SUITE, "    ")  # write() dedents


def test_bundled_suites_validate():
    loaded = load_suite(REPO / "eval_suites" / "demo.yaml")
    assert set(loaded.arms) == {"zero_shot", "few_shot", "rag", "finetune", "rag_finetune"}
    assert loaded.arms["rag"][1].top_k == loaded.arms["rag_finetune"][1].top_k == 2  # the same retrieval, trained or not
    assert loaded.arms["finetune"][1].learning_rate == pytest.approx(2e-3)


def test_defaults_and_arm_variants(tmp_path):
    p = write(tmp_path, BASE.replace("  zero_shot: {}", "  zero_shot:\n      rag_k5: {type: rag, top_k: 5}")
              .replace("    strategies:", "    knowledge_base: kb\n    strategies:"))
    loaded = load_suite(p)
    assert loaded.arms["rag_k5"][0] == "rag" and loaded.arms["rag_k5"][1].top_k == 5
    assert loaded.arms["zero_shot"][0] == "zero_shot"
    assert loaded.suite.generator.model == "smollm2-135m-instruct"


def test_knowledge_base_hnsw_settings(tmp_path):
    plain = load_suite(write(tmp_path, BASE.replace("    strategies:", "    knowledge_base: kb\n    strategies:"))).suite
    assert plain.kb_hnsw.settings() == {"space": "cosine", "ef_construction": 100, "ef_search": 100, "max_neighbors": 16}
    dense = load_suite(write(tmp_path, BASE.replace("    strategies:", "    knowledge_base:\n      path: kb\n"
                                                    "      hnsw: {max_neighbors: 32, ef_construction: 200}\n"
                                                    "    strategies:"))).suite
    assert dense.kb_hnsw.settings() == {"space": "cosine", "ef_construction": 200, "ef_search": 100, "max_neighbors": 32}
    with pytest.raises(UserError) as e:
        load_suite(write(tmp_path, BASE.replace("    strategies:", "    knowledge_base:\n      path: kb\n"
                                                "      hnsw: {max_neighbors: 1000}\n    strategies:")))
    assert e.value.field == "knowledge_base.hnsw.max_neighbors" and e.value.line == 9


@pytest.mark.parametrize("text, line, field, words", [
    (BASE.replace("task: qa", "task: summarise"), 2, "task", "qa"),
    (BASE.replace("zero_shot: {}", "telepathy: {}"), 8, "strategies.telepathy", "unknown strategy"),
    (BASE.replace("zero_shot: {}", "few_shot: {num_fewshot: many}"), 8, "strategies.few_shot.num_fewshot", "integer"),
    (BASE.replace("instruction: Answer.", "instruction: Answer.\n    temprature: 0.2"), 4, "temprature", "unknown field"),
    (BASE.replace("    name: t\n", ""), None, "name", "required"),
    (BASE + "    metrics: [bleurt]\n", 9, "metrics.0", "unknown metric"),
    (BASE.replace("zero_shot: {}", "rag: {}"), 8, "strategies.rag", "knowledge_base"),
    (BASE.replace("task: qa", "task: qa\n    classification_mode: likelihood"), 3, "classification_mode", "only for task"),
])
def test_errors_name_line_and_field(tmp_path, text, line, field, words):
    p = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_suite(p)
    err = e.value
    assert err.file == str(p) and err.field == field and words in str(err)
    if line is not None:
        assert err.line == line


def test_malformed_yaml_names_line(tmp_path):
    p = write(tmp_path, "name: t\ntask: qa\n  bad: [indent\n")
    with pytest.raises(UserError) as e:
        load_suite(p)
    assert "malformed YAML" in str(e.value) and e.value.line is not None


def test_data_dir_placeholder_needs_a_directory(tmp_path, monkeypatch):
    from toolkit.data.suite_data import load_task_data
    monkeypatch.delenv("ADAPTBENCH_DATA_DIR", raising=False)
    p = write(tmp_path, BASE.replace("train: train.jsonl", "train: '{data_dir}/x.jsonl'"))
    loaded = load_suite(p)
    with pytest.raises(UserError, match="data directory"):
        load_task_data(loaded)


def test_validate_and_help_do_not_import_torch():
    code = ("import sys; from toolkit.cli import main; main(['validate', 'eval_suites/demo.yaml']); "
            "main(['ls']); assert 'torch' not in sys.modules and 'chromadb' not in sys.modules, 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("suite_text, data, expect", [
    (BASE.replace("task: qa", "task: poetry"), None, "task"),
    (BASE.replace("zero_shot: {}", "telepathy: {}"), None, "unknown strategy"),
    (BASE, "bad", "train.jsonl:2: malformed JSON"),
    (BASE, "missing", "data file not found"),
    ("name: [unclosed\n", None, "malformed YAML"),
    (BASE.replace("zero_shot: {}", "rag: {}") + "    knowledge_base: empty_kb\n", "emptykb", "knowledge base is empty"),
    (BASE.replace("task: qa", "task: regression"), None, "train.jsonl:1: answer: must be a number"),
])
def test_cli_bad_input_exit_2_one_line_no_run_dir(tmp_path, suite_text, data, expect):
    p = write(tmp_path, suite_text)
    (tmp_path / "train.jsonl").write_text('{"question": "q1", "answer": "a"}\n')
    (tmp_path / "test.jsonl").write_text('{"question": "q2", "answer": "a"}\n')
    if data == "bad":
        (tmp_path / "train.jsonl").write_text('{"question": "q1", "answer": "a"}\n{"question": "q3", \n')
    if data == "missing":
        (tmp_path / "test.jsonl").unlink()
    if data == "emptykb":
        (tmp_path / "empty_kb").mkdir()
    out_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(p), "--out", str(out_dir)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    if "regression" in suite_text:  # both files are wrong: one line each, then what to do
        assert [expect in l for l in lines] == [True, False, False], r.stderr
        assert "test.jsonl:1: answer: must be a number" in lines[1] and "2 problems in the data" in lines[2]
    else:
        assert len(lines) == 1 and expect in lines[0], r.stderr
    assert all(l.startswith("error: ") for l in lines) and "Traceback" not in r.stderr
    assert not out_dir.exists()


@pytest.mark.parametrize("name", ["demo", "knowledge_injection", "covid_faq", "covid_qa", "banking77", "pubmedqa",
                                  "banking77_imbalanced", "covid_qa_100k"])
def test_every_bundled_suite_loads_its_data(name, monkeypatch):
    from tests.conftest import SHARED_DATA
    from toolkit.data.suite_data import load_task_data

    if name not in ("demo", "knowledge_injection") and not SHARED_DATA.is_dir():
        pytest.skip("../shared/datasets not beside the checkout")  # as tests/unit/test_data.py does
    monkeypatch.setenv("ADAPTBENCH_DATA_DIR", str(SHARED_DATA))
    data = load_task_data(load_suite(REPO / "eval_suites" / f"{name}.yaml"))
    s = data.splits
    assert s.train and s.test
    if data.kb:  # gold documents point into the knowledge base
        ids = {d.id for d in data.kb.documents}
        assert all(set(e.context_ids) <= ids for e in s.test)
    if name == "covid_qa":
        assert len(data.kb.documents) == 98 and len(s.test) > 250 and all(e.context_ids for e in s.test)
    if name == "covid_qa_100k":  # covid_qa's questions and split, its papers among ~92,600 documents
        small = load_task_data(load_suite(REPO / "eval_suites" / "covid_qa.yaml"))
        assert [e.id for e in s.test] == [e.id for e in small.splits.test]
        docs = data.kb.documents
        assert len(docs) == 98 + 1000 + 91500 and len({d.id for d in docs}) == len(docs)
        assert data.kb.source.startswith("loader covid_qa_distractors ") and data.kb.source.endswith(" v2")
        from toolkit.data.loaders import make_filler
        abstracts = [d.text for d in docs[98:1098]]
        assert [d.text for d in make_filler(3, abstracts)] == [d.text for d in docs[1098:1101]]  # seeded: the same every run
        assert all(40 <= len(d.text.split()) <= 56 for d in docs[1098:])
    if name == "banking77_imbalanced":  # drawn from the official splits at run time, seeded
        from collections import Counter
        assert list(Counter(e.label for e in s.train).most_common()) == [
            ("card_arrival", 120), ("top_up_failed", 60), ("exchange_rate", 30), ("pin_blocked", 15),
            ("declined_transfer", 8), ("lost_or_stolen_card", 4)]
        # the official test rows of the six intents, 40 each, less the repeats the run's dedup drops
        assert all(36 <= n <= 40 for n in Counter(e.label for e in s.test).values()) and len(s.validation) == 30
        assert not {e.input for e in s.train} & {e.input for e in s.validation}
        again = load_task_data(load_suite(REPO / "eval_suites" / f"{name}.yaml")).splits
        assert [e.id for e in again.train] == [e.id for e in s.train]
    if name == "pubmedqa":
        assert len(s.test) == 500 and data.labels == ["yes", "no", "maybe"]
        assert s.test[0].input.startswith("Abstract: ") and "\n\nQuestion: " in s.test[0].input


@pytest.mark.parametrize("args,field", [({"intents": ["card_arrival", "card_arrival"]}, "intents"),
                                        ({"intents": "card_arrival"}, "intents"),
                                        ({"validation_per_label": -1}, "validation_per_label"),
                                        ({"validation_per_label": "5"}, "validation_per_label"),
                                        ({"train_per_label": [120, 60, True, 15, 8, 4]}, "train_per_label"),
                                        ({"train_per_label": [1, 2]}, "train_per_label")])
def test_bad_banking77_imbalanced_arguments_name_their_field(args, field, tmp_path):
    from toolkit.data.loaders import banking77_imbalanced

    with pytest.raises(UserError) as e:
        banking77_imbalanced(tmp_path, suite_path=tmp_path / "suite.yaml", **args)
    assert e.value.field == f"data.loader_args.{field}"


@pytest.mark.parametrize("n", [-1, True, "100", 10**7])
def test_bad_filler_documents_name_their_field(n, tmp_path):
    from toolkit.data.loaders import covid_qa_distractors

    with pytest.raises(UserError) as e:
        covid_qa_distractors(tmp_path, suite_path=tmp_path / "suite.yaml", filler_documents=n)
    assert e.value.field == "data.loader_args.filler_documents"


def test_filler_needs_abstracts_to_draw_from(tmp_path):
    """The filler is a bigram model of PubMedQA's abstracts: without them it says which field is missing."""
    from toolkit.data.loaders import covid_qa_distractors, make_filler

    with pytest.raises(UserError) as e:
        covid_qa_distractors(tmp_path, suite_path=tmp_path / "suite.yaml", filler_documents=10)
    assert e.value.field == "data.loader_args.pubmedqa_path"
    source = ["The cohort was followed. Serum titers rose after the second dose.", "Fever resolved in most patients."]
    docs = make_filler(20, source, seed=3)
    vocab = {w for t in source for w in t.split()}
    assert all(set(d.text.split()) <= vocab and 40 <= len(d.text.split()) <= 56 for d in docs)
    assert [d.text for d in docs] == [d.text for d in make_filler(20, source, seed=3)]
    assert [d.text for d in docs] != [d.text for d in make_filler(20, source, seed=4)]


def test_every_generator_and_finetune_field_belongs_to_a_part():
    """Code asks a config for a part (what loads a model, what one request changes, what the
    trainer reads) by name; a field added without a part would silently fall out of all of them."""
    from strategies.configs import FinetuneConfig, RagFinetuneConfig
    from toolkit.config import GeneratorConfig, arm_generator
    from toolkit.parts import fields_of, part_of, values_of

    for model in (GeneratorConfig, FinetuneConfig, RagFinetuneConfig):
        assert [f for f in model.model_fields if part_of(model, f) is None] == [], model.__name__
    assert set(fields_of(GeneratorConfig, "generation")) == {"max_new_tokens", "stop", "temperature", "seed"}
    training = values_of(RagFinetuneConfig(num_train_epochs=1), "training")  # an override keeps its part
    assert training["num_train_epochs"] == 1 and "label_list" not in training and "search" not in training
    # another backend starts from its own defaults, but keeps how to answer
    api = arm_generator(GeneratorConfig(model="local", max_new_tokens=7, batch_size=4, dtype="float32"),
                        {"backend": "openai", "model": "gpt-4o-mini"})
    assert (api.model, api.max_new_tokens, api.batch_size, api.dtype) == ("gpt-4o-mini", 7, 4, "auto")
    with pytest.raises(ValueError, match="tokenizer"):
        GeneratorConfig(tokenizer="x")  # an api field without a default, on a local generator
