"""ragas' judged metrics through a live OpenAI-compatible HTTP server on loopback."""

import json
import math
import threading

import pytest
import yaml
from conftest import scripted_app

from toolkit.config import JudgeConfig
from toolkit.data import Example, Passage, Prediction
from toolkit.harness import run_suite
from toolkit.scoring.judge import Judge
from toolkit.serving.app import LoopbackServer
from toolkit.suites import load_suite


def _input_of(prompt: str) -> dict:
    body = prompt.split("Now perform the same with the following input\ninput: ", 1)[1]
    return json.loads(body.rsplit("\nOutput: ", 1)[0])


class ScriptedJudge:
    """A deterministic judge model for ragas' faithfulness prompts: the answer is one
    statement, supported (verdict 1) when it appears in the context. Every third request
    fails with HTTP 500 (the client must retry), and an answer containing 'GARBLE' gets
    output that is not JSON (the row must end up unmeasured, not 0)."""

    def __init__(self):
        self.calls = self.failed = 0
        self.lock = threading.Lock()

    def __call__(self, messages, n, temperature, max_tokens, stop):
        with self.lock:
            self.calls += 1
            if self.calls % 3 == 0:
                self.failed += 1
                raise RuntimeError("transient failure")
        prompt = messages[-1]["content"]
        if "GARBLE" in prompt:
            text = "I would rather not say."
        elif prompt.startswith("Given a question and an answer"):
            text = json.dumps({"statements": [_input_of(prompt)["answer"]]})
        elif prompt.startswith("Your task is to judge the faithfulness"):
            data = _input_of(prompt)
            text = json.dumps({"statements": [
                {"statement": s, "reason": "checked", "verdict": int(s.lower() in data["context"].lower())}
                for s in data["statements"]]})
        else:
            text = "unexpected prompt"
        return [(text, len(prompt.split()), len(text.split()))] * n


def test_judge_scores_through_a_loopback_server_with_retries_and_unmeasured_rows():
    backend = ScriptedJudge()
    ex = [Example(id=str(i), input=f"When was the Alder {i} launched?", target="2014") for i in range(4)]
    ctx = [Passage("p/alder", "The Alder sensor was launched in 2014. It is assembled in Kestlewick.", 0.9)]
    preds = [Prediction("0", "launched in 2014", ctx), Prediction("1", "assembled in Kestlewick", ctx),
             Prediction("2", "made of gold", ctx), Prediction("3", "GARBLE", ctx)]
    with LoopbackServer(scripted_app(backend, "scripted")) as server:
        judge = Judge(JudgeConfig(base_url=server.base_url, model="scripted", concurrency=4, max_retries=3),
                      "all-minilm-l6-v2")
        run = judge.score(ex, preds, ["faithfulness"], retrieves=True)
        judge.close()
    scores = [r["faithfulness"] for r in run.rows]
    assert scores[:3] == [1.0, 1.0, 0.0]
    assert math.isnan(scores[3])  # unparseable judge output: unmeasured, not 0
    assert backend.failed >= 2  # 500s happened, and retries still measured every parseable row
    assert run.input_tokens > 0 and run.output_tokens > 0
    assert sum(run.errors.values()) >= 1  # the GARBLE row's failure, counted by kind instead of printed


def test_closing_the_engine_refuses_queued_requests_and_waits_for_the_batch_in_flight():
    import time
    from types import SimpleNamespace

    from toolkit.backends import Settings
    from toolkit.serving.engine import Engine, ServerClosing

    done = []

    class Slow:  # a generator that takes half a second per batch
        def generate(self, prompts, description=None, settings=None, stop_rows=None):
            time.sleep(0.5)
            done.extend(prompts)
            return [SimpleNamespace(text="ok", prompt_tokens=1, completion_tokens=1) for _ in prompts]

    engine = Engine(Slow(), max_batch=1)
    first = engine.generate(0, "first", Settings(8))
    time.sleep(0.1)
    second = engine.generate(0, "second", Settings(8))
    time.sleep(0.1)
    t0 = time.perf_counter()
    engine.close()
    assert time.perf_counter() - t0 > 0.2  # waited for the batch in flight
    assert first.result(5) == ("ok", 1, 1)
    with pytest.raises(ServerClosing):
        second.result(5)
    assert done == ["first"]
    with pytest.raises(ServerClosing):
        engine.generate(0, "third", Settings(8))


def test_judge_metrics_without_a_judge_are_not_measured(tiny_suite_path, tmp_path):
    cfg = yaml.safe_load(tiny_suite_path.read_text())
    cfg["strategies"] = {"zero_shot": {}, "rag": {"top_k": 2, "chunk_size": 64, "chunk_overlap": 8}}
    cfg["metrics"] = ["token_f1", "faithfulness", "factual_correctness"]
    tiny_suite_path.write_text(yaml.safe_dump(cfg))
    _, res = run_suite(load_suite(tiny_suite_path), out=tmp_path / "run")
    for arm in ("zero_shot", "rag"):
        r = res.strategies[arm]
        assert set(r.metrics) == {"token_f1"}
        assert "no judge configured" in r.not_measured["faithfulness"]
        assert "faithfulness" not in r.not_applicable


def test_local_judge_model_served_on_loopback_end_to_end(tiny_suite_path, tiny_llama, tmp_path):
    """`judge: {model: <local folder>}`: adaptbench serves the model itself and ragas talks
    HTTP to it. The random model never writes valid JSON, so every row is unmeasured and
    the report says so instead of averaging zeros."""
    from toolkit.reporting.report import render_run

    cfg = yaml.safe_load(tiny_suite_path.read_text())
    cfg["strategies"] = {"rag": {"top_k": 2, "chunk_size": 64, "chunk_overlap": 8}, "zero_shot": {}}
    cfg["metrics"] = ["token_f1", "faithfulness", "llm_context_recall"]
    cfg["judge"] = {"model": str(tiny_llama), "max_tokens": 24, "max_retries": 1}
    cfg["prices"] = {"input_per_1m_tokens": 0.15, "output_per_1m_tokens": 0.6}
    tiny_suite_path.write_text(yaml.safe_dump(cfg))
    run, res = run_suite(load_suite(tiny_suite_path), out=tmp_path / "run")
    rag = res.strategies["rag"]
    assert rag.unmeasured == {"faithfulness": 6, "llm_context_recall": 6}
    assert "could not be scored" in rag.not_measured["faithfulness"]
    judge_cost = rag.cost.judge
    assert judge_cost.input_tokens > 0 and judge_cost.usd > 0
    assert sum(judge_cost.errors.values()) > 0
    assert res.strategies["zero_shot"].not_measured["faithfulness"] == "this arm retrieves no passages"
    assert rag.cost.api_usd_per_1k_queries is not None
    samples = [json.loads(l) for l in (run.path / "samples.jsonl").read_text().splitlines()]
    assert sum(1 for s in samples if s["strategy"] == "rag" and s["scores"]["faithfulness"] is None) == 6
    md, _ = render_run(run.path)
    text = md.read_text()
    assert "Not measured" in text and "could not be scored" in text and "failed judge calls" in text



def test_a_local_judge_is_reached_through_the_request_layer_without_a_server(tiny_llama, monkeypatch):
    """A local judge model answers ragas through toolkit.backends (no HTTP server, no serving
    import). The tiny random model writes no parseable verdicts: its rows are unmeasured."""
    import sys

    from toolkit.scoring import judge as judge_mod

    calls = []
    real = judge_mod.local_chat_model

    def spy(backend, max_tokens):
        calls.append(type(backend).__name__)
        return real(backend, max_tokens)

    monkeypatch.setattr(judge_mod, "local_chat_model", spy)
    ex = [Example(id="0", input="When was the Alder 5 launched?", target="2014")]
    ctx = [Passage("p/alder", "The Alder sensor was launched in 2014.", 0.9)]
    judge = Judge(JudgeConfig(model=str(tiny_llama), max_tokens=16, max_retries=0), "all-minilm-l6-v2")
    run = judge.score(ex, [Prediction("0", "launched in 2014", ctx)], ["faithfulness"], retrieves=True)
    judge.close()
    assert calls == ["TransformersBackend"] and len(run.rows) == 1
    assert math.isnan(run.rows[0]["faithfulness"]) or 0 <= run.rows[0]["faithfulness"] <= 1
    assert not any(m.startswith("toolkit.serving") for m in sys.modules if "judge" in m)
