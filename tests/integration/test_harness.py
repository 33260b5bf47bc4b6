"""Harness tests with a scripted fake strategy: no model is run."""

import json
from typing import ClassVar

import pytest
import yaml

from strategies import registry
from strategies.base import Strategy
from strategies.configs import StrategyConfig
from tests.conftest import write_jsonl
from toolkit.data import Prediction
from toolkit.harness import run_suite
from toolkit.reporting.report import render_run
from toolkit.suites import load_suite

CALLS: list[int] = []


class ScriptConfig(StrategyConfig):
    answers: dict[str, str] = {}
    probs: dict[str, dict[str, float]] = {}  # question -> label probabilities (as a likelihood arm has them)
    fail: bool = False


class Scripted(Strategy):
    """Answers from its config's script; counts how often it is asked."""

    type: ClassVar[str] = "scripted"
    scores_likelihood: ClassVar[bool] = False

    def prompts(self, queries):
        return [[] for _ in queries], [[] for _ in queries]

    def answer(self, queries):
        if self.config.fail:
            raise RuntimeError("scripted failure")
        CALLS.append(len(queries))
        return [Prediction(id=q.id, output=self.config.answers.get(q.input, "no idea"), prompt_tokens=3,
                           completion_tokens=2, latency_s=0.01, compute_s=0.01,
                           label_probs=self.config.probs.get(q.input, {})) for q in queries]

    def single_latency(self, queries):  # answers without a backend: nothing to time alone
        return []


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setitem(registry.STRATEGY_TYPES, "scripted", (f"{__name__}:Scripted", ScriptConfig))
    CALLS.clear()


def make_suite(tmp_path, tiny_llama, arms: dict) -> object:
    write_jsonl(tmp_path / "train.jsonl", [{"question": "train q", "answer": "x"}])
    write_jsonl(tmp_path / "test.jsonl", [
        {"question": "Capital of France?", "answer": "Paris"},
        {"question": "2+2?", "answer": "4"},
        {"question": "<script>alert('q')</script>", "answer": "<b onmouseover=alert(1)>gold</b>"},
        {"question": "Colour of the sky?", "answer": "blue"},
    ])
    suite = {"name": "scripted", "task": "qa", "instruction": "Answer.",
             "data": {"train": "train.jsonl", "test": "test.jsonl"},
             "generator": {"model": str(tiny_llama)}, "strategies": arms,
             "metrics": ["exact_match", "token_f1", "contains"]}
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(suite))
    return load_suite(p)


SCRIPT = {"Capital of France?": "Paris", "2+2?": "5", "<script>alert('q')</script>": "<img src=x onerror=alert(2)>",
          "Colour of the sky?": "Blue."}


def test_run_directory_contract_and_scores(tmp_path, tiny_llama, scripted):
    loaded = make_suite(tmp_path, tiny_llama, {"echo": {"type": "scripted", "answers": SCRIPT}})
    run, results = run_suite(loaded, out=tmp_path / "run")
    for f in ("config.yaml", "env.json", "samples.jsonl", "results.json"):
        assert (run.path / f).exists(), f
    on_disk = json.loads((run.path / "results.json").read_text())
    assert on_disk["status"] == "success" and on_disk["suite"] == "scripted"
    arm = on_disk["strategies"]["echo"]
    em = arm["metrics"]["exact_match"]
    assert em["mean"] == pytest.approx(0.5) and em["n"] == 4 and em["ci_low"] <= 0.5 <= em["ci_high"]
    for k in ("setup_s", "latency_p50_s", "latency_p95_s", "prompt_tokens_mean", "completion_tokens_mean"):
        assert k in arm["cost"]
    samples = [json.loads(l) for l in (run.path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {s["strategy"] for s in samples} == {"echo"}
    assert yaml.safe_load((run.path / "config.yaml").read_text())["strategies"]["echo"]["type"] == "scripted"
    assert json.loads((run.path / "env.json").read_text())["packages"]["torch"]


def test_a_failing_arm_keeps_the_finished_ones(tmp_path, tiny_llama, scripted):
    loaded = make_suite(tmp_path, tiny_llama, {"good": {"type": "scripted", "answers": SCRIPT},
                                           "bad": {"type": "scripted", "fail": True}})
    run, results = run_suite(loaded, out=tmp_path / "run")
    on_disk = json.loads((run.path / "results.json").read_text())
    assert on_disk["status"] == "error"
    assert on_disk["strategies"]["good"]["status"] == "success"
    assert "scripted failure" in on_disk["strategies"]["bad"]["error"]
    assert "scripted failure" in (run.path / "errors.log").read_text()


def test_report_escapes_hostile_text(tmp_path, tiny_llama, scripted):
    loaded = make_suite(tmp_path, tiny_llama, {"echo": {"type": "scripted", "answers": SCRIPT}})
    run, _ = run_suite(loaded, out=tmp_path / "run")
    md, html = render_run(run.path)
    page = html.read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "<b onmouseover" not in page
    assert "&lt;script&gt;alert" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert 'id="recommendation"' in page and "<svg" in page


def test_strategies_never_see_gold(tmp_path, tiny_llama, scripted, monkeypatch):
    seen = []
    orig = Scripted.answer

    def spy(self, queries):
        seen.extend(queries)
        return orig(self, queries)

    monkeypatch.setattr(Scripted, "answer", spy)
    loaded = make_suite(tmp_path, tiny_llama, {"echo": {"type": "scripted", "answers": SCRIPT}})
    run_suite(loaded, out=tmp_path / "run")
    # options (a multiple-choice item's own letters, shown in its input anyway) are empty here
    assert seen and all(set(vars(q)) == {"id", "input", "options"} and q.options == () for q in seen)
