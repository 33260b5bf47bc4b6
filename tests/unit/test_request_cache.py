"""The request cache is keyed on content: the model's identity, the rendered request and
the settings that change an answer, never on an example id or an arm's name."""

from __future__ import annotations

import json

import yaml

from toolkit.backends import GenRequest, Settings
from toolkit.config import GeneratorConfig
from toolkit.harness import run_suite
from toolkit.suites import load_suite


class Counting:
    """Wraps a backend and records the requests that reach the model."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, requests, **kw):
        self.seen += requests
        return self.inner.generate(requests, **kw)


def cached_backend(tiny_llama, tmp_path, **cfg):
    from toolkit.backends.cache import CachedBackend
    from toolkit.backends.local import TransformersBackend
    from toolkit.cache import PredictionCache
    inner = Counting(TransformersBackend(GeneratorConfig(model=str(tiny_llama), dtype="float32", **cfg)))
    return CachedBackend(inner, PredictionCache(tmp_path / "c.sqlite")), inner


def ask(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def test_the_key_ignores_batch_size_but_not_settings_and_sampling_needs_a_seed(tiny_llama, tmp_path):
    be, inner = cached_backend(tiny_llama, tmp_path, batch_size=2)
    greedy = Settings(max_tokens=4, stop=("\n",))
    first = be.generate([GenRequest(ask("Hi"), greedy), GenRequest(ask("Bye"), greedy)])
    assert len(inner.seen) == 2 and not any(c.cached for c in first)
    be8, inner8 = cached_backend(tiny_llama, tmp_path, batch_size=8)  # same cache file, another batch size
    again = be8.generate([GenRequest(ask("Hi"), greedy)])
    assert inner8.seen == [] and again[0].cached and again[0].text == first[0].text
    be8.generate([GenRequest(ask("Hi"), Settings(max_tokens=5, stop=("\n",)))])  # another setting: asked
    be8.generate([GenRequest(ask("Hi"), Settings(max_tokens=4, stop=(".",)))])
    assert len(inner8.seen) == 2
    sampled = Settings(max_tokens=4, temperature=0.8)
    be8.generate([GenRequest(ask("Hi"), sampled)])
    be8.generate([GenRequest(ask("Hi"), sampled)])  # no seed: never reused
    assert len(inner8.seen) == 4
    seeded = Settings(max_tokens=4, temperature=0.8, seed=7)
    a = be8.generate([GenRequest(ask("Hi"), seeded)])[0]
    b = be8.generate([GenRequest(ask("Hi"), seeded)])[0]
    assert len(inner8.seen) == 5 and b.cached and a.text == b.text


def _suite(tiny_suite_path, arms: dict) -> object:
    cfg = yaml.safe_load(tiny_suite_path.read_text())
    cfg["strategies"] = arms
    cfg["metrics"] = ["exact_match", "token_f1", "perplexity"]
    tiny_suite_path.write_text(yaml.safe_dump(cfg))
    return load_suite(tiny_suite_path)


def _rows(run) -> dict:
    rows = [json.loads(line) for line in (run.path / "samples.jsonl").read_text().splitlines()]
    return {(r["strategy"], r["id"]): r for r in rows}


def test_editing_a_question_that_keeps_its_id_gives_a_fresh_answer(tiny_suite_path, tmp_path):
    test_file = tiny_suite_path.parent / "data" / "test.jsonl"
    rows = [json.loads(line) for line in test_file.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["id"] = f"q{i}"
    test_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = _suite(tiny_suite_path, {"zero_shot": {}})
    run_suite(loaded, out=tmp_path / "r1")
    _, res = run_suite(loaded, out=tmp_path / "r2")
    assert res.strategies["zero_shot"].cost.cached_answers == len(rows)
    rows[0]["question"] = "Who sells the Alder 5 sensor, and where?"
    test_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run, res = run_suite(load_suite(tiny_suite_path), out=tmp_path / "r3")
    assert res.strategies["zero_shot"].cost.cached_answers == len(rows) - 1
    got = _rows(run)
    assert got[("zero_shot", "q0")]["cached"] is False and got[("zero_shot", "q1")]["cached"] is True
    assert got[("zero_shot", "q0")]["input"] == "Who sells the Alder 5 sensor, and where?"


def test_changing_one_arms_setting_recomputes_only_that_arm(tiny_suite_path, tmp_path):
    arms = {"zero_shot": {}, "short": {"type": "zero_shot", "generator": {"max_new_tokens": 3}}}
    run_suite(_suite(tiny_suite_path, arms), out=tmp_path / "r1")
    arms["short"]["generator"]["max_new_tokens"] = 4
    run, res = run_suite(_suite(tiny_suite_path, arms), out=tmp_path / "r2")
    n = res.data.test_scored
    assert res.strategies["zero_shot"].cost.cached_answers == n
    assert res.strategies["short"].cost.cached_answers == 0
    # the same prompt to the same model: the gold answers' likelihood is shared, not recomputed
    assert res.strategies["short"].metrics["perplexity"] == res.strategies["zero_shot"].metrics["perplexity"]


def test_judge_scores_are_keyed_on_the_answer_text(tmp_path):
    from types import SimpleNamespace

    from toolkit.cache import PredictionCache
    from toolkit.data import Example, Prediction
    from toolkit.harness import add_judge_scores
    from toolkit.scoring.judge import JudgeRun

    class CountingJudge:  # stands in for ragas; the keying and the store are real
        fingerprint = {"base_url": "http://127.0.0.1:1/v1", "model": "judge", "max_tokens": 512}
        embedder_name = "all-minilm-l6-v2"
        cfg = SimpleNamespace(model="judge", concurrency=1)
        asked: list[str] = []

        def score(self, examples, preds, metrics, *, retrieves):
            self.asked += [p.output for p in preds]
            return JudgeRun([{"answer_relevancy": float(len(p.output))} for p in preds])

    judge, store = CountingJudge(), PredictionCache(tmp_path / "c.sqlite")
    ex = [Example(id="1", input="When was the Alder 5 launched?", target="2014")]
    for answer in ["2014", "2014", "in 2014"]:
        scores = [{}]
        add_judge_scores(judge, ["answer_relevancy"], False, ex, [Prediction("1", answer)], scores, store)
        assert scores[0]["answer_relevancy"] == float(len(answer))
    assert judge.asked == ["2014", "in 2014"]  # the same id with another answer is judged again


def test_answers_are_stored_batch_by_batch_so_a_kill_keeps_the_finished_ones(tiny_llama, tmp_path):
    """The generator fails in its third batch (as a killed process stops): the two batches it
    had answered are in the cache, and asking again sends only the rest to the model."""
    be, inner = cached_backend(tiny_llama, tmp_path, batch_size=2, max_new_tokens=3)
    reqs = [GenRequest(ask(f"Question number {i} about sensors?"), Settings(3)) for i in range(6)]
    gen = inner.inner.generator
    real, calls = gen.generate, []

    def dies_in_third_batch(prompts, **kw):
        done = kw["on_done"]

        def counted(idx, gens):
            calls.append(len(idx))
            if len(calls) == 3:
                raise KeyboardInterrupt  # what a kill leaves: the process stops between batches
            done(idx, gens)
        return real(prompts, **{**kw, "on_done": counted})

    gen.generate = dies_in_third_batch
    try:
        be.generate(reqs)
    except KeyboardInterrupt:
        pass
    finally:
        gen.generate = real
    inner.seen.clear()
    again = be.generate(reqs)
    assert sum(c.cached for c in again) == 4 and len(inner.seen) == 2  # two batches kept, one asked again
