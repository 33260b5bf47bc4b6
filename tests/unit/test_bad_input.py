"""Bad input through the command line: exit 2, one line naming file, line and field, no
traceback, no run directory and nothing in the cache. Every case is caught before a
model loads (the tests would take minutes otherwise)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import MINIMAL_SUITE as SUITE
from tests.conftest import REPO, write_jsonl
from toolkit.cli import main


def cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def case(tmp_path, monkeypatch, isolated_cache):
    """A folder with a valid suite, data and knowledge base; returns a function that writes
    the given suite text and runs `adaptbench run` on it."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(6)])
    write_jsonl(tmp_path / "validation.jsonl", [{"question": "v?", "answer": "v"}])
    write_jsonl(tmp_path / "test.jsonl", [{"question": f"t{i}?", "answer": f"a{i}"} for i in range(4)])
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "doc.md").write_text("The answer is a0.\n")

    def run(suite_text: str = SUITE, *flags: str, out: Path | None = None):
        (tmp_path / "s.yaml").write_text(textwrap.dedent(suite_text))
        out = out or tmp_path / "run"
        return out, ["run", tmp_path / "s.yaml", "--out", out, *flags]

    return run


def assert_refused(code: int, lines: list[str], expect: list[str], out: Path, cache: Path) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert not any("Traceback" in line for line in lines)
    for e in expect:
        assert e in lines[0], (e, lines[0])
    assert not out.exists(), "a run directory was created"
    assert not any(p.is_file() for p in cache.rglob("*")), "something was written to the cache"


# (id, suite text, expected words in the one line); lines counted in SUITE (conftest.MINIMAL_SUITE)
SUITE_CASES = [
    ("duplicate-arm", SUITE + "  zero_shot: {}\n", ["s.yaml:9:", "strategies.zero_shot", "duplicate key"]),
    ("duplicate-top-key", SUITE + "task: classification\n", ["s.yaml:9:", "task", "duplicate key", "line 2"]),
    ("split-over-one", SUITE.replace("  train: train.jsonl\n  test: test.jsonl\n",
                                     "  file: train.jsonl\n  split: {validation: 0.7, test: 0.6}\n"),
     ["s.yaml:6:", "data.split", "sum to less than 1"]),
    ("embedder-missing-folder", SUITE + "embedder: {model: ./no/such/embedder}\n",
     ["s.yaml:9:", "embedder.model", "./no/such/embedder"]),
    ("judge-not-a-url", SUITE + "judge: {base_url: not a url, model: m}\n", ["s.yaml:9:", "judge.base_url", "URL"]),
    ("judge-ftp-url", SUITE + "judge: {base_url: 'ftp://host/v1', model: m}\n", ["judge.base_url", "http"]),
    ("judge-key-in-suite", SUITE + "judge: {base_url: 'http://localhost:1/v1', model: m, api_key_env: sk-abc123}\n",
     ["judge.api_key_env", "not an environment variable name"]),
    ("judge-local-model-missing", SUITE + "judge: {model: ./no/judge}\n", ["s.yaml:9:", "judge.model"]),
    ("arm-generator-not-a-url", SUITE + "  api: {type: zero_shot, generator: {backend: openai, base_url: 'localhost:8000', "
     "model: m}}\n", ["s.yaml:9:", "strategies.api.generator.base_url", "not an http(s) URL"]),
    ("arm-generator-key-in-suite", SUITE + "  api: {type: zero_shot, generator: {backend: openai, model: m, "
     "api_key_env: sk-abc}}\n", ["strategies.api.generator.api_key_env", "not an environment variable name"]),
    ("finetune-through-an-api", SUITE + "  finetune: {generator: {backend: openai, model: gpt-4o-mini}}\n",
     ["strategies.finetune.generator.backend", "needs `backend: transformers`"]),
    ("api-field-on-a-local-model", SUITE + "generator: {tokenizer: x}\n", ["generator", "`tokenizer` is for `backend: openai`"]),
    ("openai-without-a-key", SUITE + "  api: {type: zero_shot, generator: {backend: openai, model: gpt-4o-mini}}\n",
     ["strategies.api.generator", "OpenAI needs a key"]),
    ("negative-seed", SUITE + "seed: -1\n", ["s.yaml:9:", "seed", "greater than or equal to 0"]),
    ("version-2", "version: 2\n" + SUITE, ["s.yaml:1:", "version"]),
    ("labels-twice", SUITE.replace("task: qa", "task: classification") + "labels: [a0, a0]\n",
     ["s.yaml:9:", "labels", "listed twice"]),
    ("metric-twice", SUITE + "metrics: [token_f1, token_f1]\n", ["s.yaml:9:", "metrics", "listed twice"]),
    ("weights-all-zero", SUITE + "decision: {weights: {quality: 0, latency: 0, cost_per_query: 0, setup: 0, "
                                 "knowledge_update: 0, data_needed: 0}}\n", ["decision.weights", "above 0"]),
    ("chunk-overlap", SUITE.replace("zero_shot: {}", "rag: {chunk_size: 64, chunk_overlap: 64}") + "knowledge_base: kb\n",
     ["s.yaml:8:", "strategies.rag", "chunk_overlap"]),
    ("target-modules-empty", SUITE.replace("zero_shot: {}", "finetune: {target_modules: []}"),
     ["strategies.finetune.target_modules", "at least one"]),
    ("target-modules-string", SUITE.replace("zero_shot: {}", "finetune: {target_modules: q_proj}"),
     ["strategies.finetune.target_modules", "all-linear"]),
    ("search-bad-value", SUITE.replace("zero_shot: {}", "finetune: {search: {space: {learning_rate: [fast]}}}")
     .replace("  test: test.jsonl", "  test: test.jsonl\n  validation: validation.jsonl"),
     ["strategies.finetune", "search.space.learning_rate", "'fast'"]),
    ("early-stopping-without-validation", SUITE.replace("zero_shot: {}", "finetune: {early_stopping_patience: 2}"),
     ["s.yaml:8:", "strategies.finetune.early_stopping_patience", "validation split"]),
    ("task-metric-without-validation", SUITE.replace("zero_shot: {}", "finetune: {metric_for_best_model: token_f1}"),
     ["strategies.finetune.metric_for_best_model", "validation split"]),
    ("augment-model-missing", SUITE.replace("zero_shot: {}", "finetune: {augment: {model: ./nope}}"),
     ["strategies.finetune.augment.model", "./nope"]),
    ("fields-unknown", SUITE.replace("  train: train.jsonl", "  train: {path: train.jsonl, fields: {inptu: text}}"),
     ["s.yaml:", "data.train.fields", "'inptu'"]),
    ("hub-id-offline", SUITE + "generator: {model: no-such-org/no-such-model}\n",
     ["s.yaml:9:", "generator.model", "HF_HUB_OFFLINE"]),
    ("generator-is-a-file", SUITE + "generator: {model: train.jsonl}\n", ["generator.model", "is a file"]),
    ("generator-empty-folder", SUITE + "generator: {model: kb}\n", ["generator.model", "no config.json"]),
    ("cuda-without-gpu", SUITE + "generator: {device: cuda}\n", ["s.yaml:9:", "generator.device", "CUDA"]),
    ("qlora-on-cpu", SUITE.replace("zero_shot: {}", "finetune: {method: qlora}"),
     ["s.yaml:8:", "strategies.finetune.method", "CUDA"]),
    ("rag-without-kb", SUITE.replace("zero_shot: {}", "rag: {}"), ["strategies.rag", "knowledge_base"]),
    # names that would become paths: a suite name is a run folder, an arm name an adapter folder
    ("suite-name-with-slash", SUITE.replace("name: t", "name: a/b"), ["s.yaml:1:", "name", "not a safe name"]),
    ("suite-name-escapes", SUITE.replace("name: t", "name: ../../escape"), ["s.yaml:1:", "name", "not a safe name"]),
    ("suite-name-dotdot", SUITE.replace("name: t", "name: '..'"), ["s.yaml:1:", "name", "not a safe name"]),
    ("arm-name-absolute-path", SUITE.replace("zero_shot: {}", "/some/dir: {type: finetune}"),
     ["s.yaml:8:", "strategies./some/dir", "not a safe name"]),
    ("arm-name-up", SUITE.replace("zero_shot: {}", "../up: {type: zero_shot}"),
     ["s.yaml:8:", "strategies.../up", "not a safe name"]),
]


@pytest.mark.parametrize("text, expect", [c[1:] for c in SUITE_CASES], ids=[c[0] for c in SUITE_CASES])
def test_bad_suite_is_refused_before_any_work(case, capsys, isolated_cache, text, expect):
    out, argv = case(text)
    code, lines = cli(argv, capsys)
    assert_refused(code, lines, expect, out, isolated_cache)


def test_gpu_absent_for_cuda_cases():
    import torch
    assert not torch.cuda.is_available(), "the cuda and qlora cases above assume a machine without CUDA"


@pytest.mark.parametrize("target, words", [
    (["no_such_proj"], ["'no_such_proj'", "q_proj", "all-linear"]),
    (["norm"], ["'norm'", "linear layers"]),
])
def test_lora_target_modules_are_checked_against_the_model(case, capsys, isolated_cache, tiny_llama, target, words):
    text = SUITE.replace("zero_shot: {}", f"finetune: {{target_modules: {json.dumps(target)}}}") \
        + f"generator: {{model: '{tiny_llama}'}}\n"
    out, argv = case(text)
    code, lines = cli(argv, capsys)
    assert_refused(code, lines, ["s.yaml:8:", "strategies.finetune.target_modules", *words], out, isolated_cache)


def test_valid_target_modules_pass_the_check(tiny_llama):
    from toolkit.preflight import check_target_modules
    check_target_modules(str(tiny_llama), ["q_proj", "v_proj", "down_proj"])  # no error


DATA_CASES = [
    ("non-utf8", "train.jsonl", b'{"question": "q1?", "answer": "a"}\n{"question": "caf\xe9?", "answer": "b"}\n',
     ["train.jsonl:2:", "not valid UTF-8", "0xe9"]),
    ("truncated-json", "train.jsonl", b'{"question": "q1?", "answer": "a"}\n{"question": "q3", \n',
     ["train.jsonl:2:", "malformed JSON"]),
    ("not-an-object", "test.jsonl", b'["q", "a"]\n', ["test.jsonl:1:", "JSON object"]),
    ("no-answer", "test.jsonl", b'{"question": "q?"}\n', ["test.jsonl:1:", "answer", "missing"]),
    ("messages-no-assistant", "train.jsonl", b'{"messages": [{"role": "user", "content": "q"}]}\n',
     ["train.jsonl:1:", "messages", "assistant"]),
    ("answer-is-a-list", "test.jsonl", b'{"question": "q?", "answer": ["a"]}\n', ["test.jsonl:1:", "answer"]),
    ("duplicate-id", "test.jsonl", b'{"id": "x", "question": "q?", "answer": "a"}\n{"id": "x", "question": "r?", '
                                   b'"answer": "b"}\n', ["test.jsonl:2:", "id", "duplicate"]),
    ("empty-file", "test.jsonl", b"\n\n", ["test.jsonl", "no examples"]),
    ("deeply-nested", "test.jsonl", b"[" * 100000 + b"\n", ["test.jsonl:1:", "malformed JSON"]),
]


@pytest.mark.parametrize("name, content, expect", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_file_is_refused(case, capsys, isolated_cache, tmp_path, name, content, expect):
    (tmp_path / name).write_bytes(content)
    out, argv = case()
    code, lines = cli(argv, capsys)
    assert_refused(code, lines, expect, out, isolated_cache)


def test_data_path_that_is_a_folder(case, capsys, isolated_cache, tmp_path):
    (tmp_path / "test.jsonl").unlink()
    (tmp_path / "test.jsonl").mkdir()
    out, argv = case()
    code, lines = cli(argv, capsys)
    assert_refused(code, lines, ["test.jsonl", "is a folder"], out, isolated_cache)


def test_csv_row_with_more_columns_than_the_header(case, capsys, isolated_cache, tmp_path):
    (tmp_path / "test.csv").write_text('question,answer\n"q1?",a\n"q2?",b,extra\n')
    out, argv = case(SUITE.replace("test: test.jsonl", "test: test.csv"))
    code, lines = cli(argv, capsys)
    assert_refused(code, lines, ["test.csv:3:", "columns"], out, isolated_cache)


def test_knowledge_base_document_not_utf8(case, capsys, isolated_cache, tmp_path):
    (tmp_path / "kb" / "old.txt").write_bytes(b"first line\nna\xefve\n")
    out, argv = case(SUITE.replace("zero_shot: {}", "rag: {}") + "knowledge_base: kb\n")
    code, lines = cli(argv, capsys)
    assert_refused(code, lines, ["old.txt:2:", "not valid UTF-8"], out, isolated_cache)


def test_suite_file_not_utf8_or_a_folder(case, capsys, isolated_cache, tmp_path):
    out, argv = case()
    (tmp_path / "s.yaml").write_bytes(SUITE.encode().replace(b"Answer.", b"R\xe9ponds."))
    code, lines = cli(argv, capsys)
    assert_refused(code, lines, ["s.yaml:3:", "not valid UTF-8"], out, isolated_cache)
    code, lines = cli(["run", tmp_path / "kb", "--out", out], capsys)
    assert_refused(code, lines, ["kb", "is a folder"], out, isolated_cache)


@pytest.mark.parametrize("flags, expect", [
    (["--limit", "0"], ["--limit", "at least 1"]),
    (["--limit", "abc"], ["--limit", "invalid int value"]),
    (["--seeds", "0"], ["--seeds", "at least 1"]),
    (["--strategies", "rag"], ["--strategies", "not an arm"]),
    (["--weights", "quality=abc"], ["--weights", "not a number"]),
    (["--weights", "speed=1"], ["--weights", "unknown criterion"]),
    (["--data-dir", "no/such/dir"], ["--data-dir", "not found"]),
    (["--judge-url", "not a url", "--judge-model", "m"], ["--judge-url", "URL"]),
    (["--judge-url", "http://localhost:1/v1"], ["--judge-model", "judge model"]),
    (["--bogus"], ["unrecognized arguments", "--help"]),
])
def test_bad_flags_are_refused(case, capsys, isolated_cache, flags, expect):
    out, argv = case(SUITE, *flags)
    code, lines = cli(argv, capsys)
    assert_refused(code, lines, expect, out, isolated_cache)


def test_out_that_is_a_file_or_holds_a_run(case, capsys, isolated_cache, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    _, argv = case(SUITE, out=f)
    code, lines = cli(argv, capsys)
    assert code == 2 and len(lines) == 1 and "--out" in lines[0] and "is a file" in lines[0]
    held = tmp_path / "old-run"
    held.mkdir()
    (held / "results.json").write_text("{}")
    _, argv = case(SUITE, out=held)
    code, lines = cli(argv, capsys)
    assert code == 2 and len(lines) == 1 and "already holds a run" in lines[0]
    assert sorted(p.name for p in held.iterdir()) == ["results.json"]
    assert not any(p.is_file() for p in isolated_cache.rglob("*"))


def test_cache_that_is_a_file(case, capsys, tmp_path, monkeypatch):
    f = tmp_path / "cache-file"
    f.write_text("x")
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(f))
    out, argv = case()
    code, lines = cli(argv, capsys)
    assert code == 2 and len(lines) == 1 and "ADAPTBENCH_CACHE" in lines[0] and not out.exists()


def test_validate_catches_the_same_settings_errors_without_torch(case, tmp_path):
    """`adaptbench validate` stays torch-free and still refuses what the data contradicts."""
    case(SUITE.replace("zero_shot: {}", "finetune: {early_stopping_patience: 2}"))
    code = ("import sys; from toolkit.cli import main; rc = main(['validate', sys.argv[1]]); "
            "assert 'torch' not in sys.modules; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.yaml")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "validation split" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_bom_at_the_start_of_a_data_file_is_accepted(tmp_path):
    from toolkit.data import read_examples
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"question": "q?", "answer": "a"}\r\n{"question": "r?", "answer": "b"}\r\n')
    assert [e.input for e in read_examples(p, task="qa")] == ["q?", "r?"]


def test_paths_built_from_names_stay_inside_their_parent(tmp_path):
    from toolkit.errors import check_name, inside

    assert inside(tmp_path, "rag_k5") == tmp_path / "rag_k5"
    for bad in ("../up", "/etc", "a/../../b"):
        with pytest.raises(ValueError, match="would leave"):
            inside(tmp_path, bad)
    for bad in (".", "..", "a/b", "/abs", "-rm", "", "x" * 65, None, "a b"):
        with pytest.raises(ValueError, match="not a safe name"):
            check_name(bad)
    assert check_name("demo-v1.2_b") == "demo-v1.2_b"
