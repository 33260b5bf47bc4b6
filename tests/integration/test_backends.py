"""The request layer: the `transformers` and `openai` backends answer alike, the API path
retries what a server asks it to, and a bad endpoint is found before any arm runs. Every
server here is adaptbench's own app on loopback over real HTTP, called with the official
`openai` client."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import scripted_app

from toolkit.backends import GenRequest, LLRequest, NotMeasured, Settings
from toolkit.config import GeneratorConfig
from toolkit.runs import RunDir
from toolkit.serving.app import LoopbackServer
from toolkit.serving.engine import Engine
from toolkit.serving.serve import model_app

QUESTIONS = ["When was the Alder 5 launched?", "Where is the Birch 7 assembled?", "Name a colour.",
             "What is two plus two?", "Say hello.", "Which town builds the Fir 8 sensor, and since when?"]


def chat(q: str) -> list[dict]:
    return [{"role": "system", "content": "Answer with a few words."}, {"role": "user", "content": q}]


@pytest.fixture(scope="module")
def tiny_generator(tiny_llama):
    from toolkit.backends.generation import Generator
    return Generator.load(GeneratorConfig(model=str(tiny_llama), batch_size=4, dtype="float32"))


@pytest.fixture(scope="module")
def served(tiny_generator):
    """The tiny model behind adaptbench's OpenAI-compatible app (batching engine) on loopback."""
    engine = Engine(tiny_generator, max_batch=4)
    with LoopbackServer(model_app(engine, "tiny")) as server:
        yield server, engine
    engine.close()


def api_cfg(base_url: str, **kw) -> GeneratorConfig:
    return GeneratorConfig(**{"backend": "openai", "base_url": base_url, "model": "tiny", "max_new_tokens": 8, **kw})


def test_greedy_answers_through_the_api_equal_the_local_backend(tiny_llama, tiny_generator, served):
    from toolkit.backends.local import TransformersBackend
    from toolkit.backends.openai_api import OpenAIBackend

    server, engine = served
    settings = Settings(max_tokens=8, stop=("\n",))
    reqs = [GenRequest(chat(q), settings) for q in QUESTIONS]
    local = TransformersBackend(GeneratorConfig(model=str(tiny_llama), batch_size=4, dtype="float32"),
                                generator=tiny_generator).generate(reqs)
    api_backend = OpenAIBackend(api_cfg(server.base_url, concurrency=4))
    before = len(engine.batches)
    api = api_backend.generate(reqs)
    api_backend.close()
    assert [c.text for c in api] == [c.text for c in local]
    assert [(c.prompt_tokens, c.completion_tokens) for c in api] == [(c.prompt_tokens, c.completion_tokens) for c in local]
    assert all(c.latency_s > 0 for c in api)
    assert max(engine.batches[before:]) > 1  # concurrent requests were answered together


def test_likelihood_through_completions_echo_equals_the_local_one(tiny_llama, tiny_generator, served):
    from toolkit.backends.local import TransformersBackend
    from toolkit.backends.openai_api import OpenAIBackend

    server, _ = served
    reqs = [LLRequest(chat(q), t) for q, t in zip(QUESTIONS[:3], ["2014", "in Marrowby", "blue"])]
    local = TransformersBackend(GeneratorConfig(model=str(tiny_llama), dtype="float32"),
                                generator=tiny_generator).loglikelihood(reqs)
    api_backend = OpenAIBackend(api_cfg(server.base_url, tokenizer=str(tiny_llama)))
    api = api_backend.loglikelihood(reqs)
    api_backend.close()
    assert [a.tokens for a in api] == [b.tokens for b in local]
    for a, b in zip(api, local):
        assert a.nll == pytest.approx(b.nll, rel=1e-4)


def test_an_endpoint_without_prompt_logprobs_is_not_measured(tiny_llama):
    from toolkit.backends.openai_api import OpenAIBackend

    def chat_only(messages, n, temperature, max_tokens, stop):
        return [("fine", 3, 1)] * n

    with LoopbackServer(scripted_app(chat_only, "tiny")) as server:
        be = OpenAIBackend(api_cfg(server.base_url, tokenizer=str(tiny_llama)))
        with pytest.raises(NotMeasured, match="no prompt log-probabilities"):
            be.loglikelihood([LLRequest(chat("Hi"), "hello")])
        be.close()
    # and without a chat template to render the prompt with, nothing is sent at all
    no_tok = OpenAIBackend(api_cfg("http://127.0.0.1:9/v1", model="gpt-4o-mini"))
    with pytest.raises(NotMeasured, match="set `tokenizer:` in the generator"):
        no_tok.loglikelihood([LLRequest(chat("Hi"), "hello")])


def test_429_and_500_are_retried_honouring_retry_after(served):
    from starlette.responses import JSONResponse

    from toolkit.backends.openai_api import OpenAIBackend

    server, engine = served
    answers = []

    def scripted(messages, n, temperature, max_tokens, stop):
        answers.append(messages)
        return [("ok", 3, 1)] * n

    app = scripted_app(scripted, "tiny")
    seen = []

    @app.middleware("http")
    async def flaky(request, call_next):  # the first two calls are refused: rate limit, then a crash
        seen.append(time.perf_counter())
        if len(seen) == 1:
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, status_code=429,
                                headers={"Retry-After": "0.5"})
        if len(seen) == 2:
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        return await call_next(request)

    with LoopbackServer(app) as s:
        be = OpenAIBackend(api_cfg(s.base_url, max_retries=3, concurrency=1))
        got = be.generate([GenRequest(chat("Hi"), Settings(8))])
        be.close()
    assert [c.text for c in got] == ["ok"] and len(answers) == 1 and len(seen) == 3
    assert seen[1] - seen[0] >= 0.45  # waited as Retry-After asked


def _api_suite(tmp_path, tiny_suite_path, base_url: str, **gen) -> str:
    cfg = yaml.safe_load(tiny_suite_path.read_text())
    cfg["strategies"] = {"zero_shot": {}, "hosted": {"type": "rag", "top_k": 2, "chunk_size": 64, "chunk_overlap": 8,
                                                     "generator": {"backend": "openai", "base_url": base_url,
                                                                   "model": "tiny", **gen}}}
    cfg["metrics"] = ["token_f1", "contains", "hit_at_k", "perplexity"]
    tiny_suite_path.write_text(yaml.safe_dump(cfg))
    return str(tiny_suite_path)


def _cli(*args, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_a_dead_endpoint_a_refused_key_and_an_unknown_model_exit_2_before_any_work(tmp_path, tiny_suite_path):
    from toolkit.serving.app import free_port

    dead = _cli("run", _api_suite(tmp_path, tiny_suite_path, f"http://127.0.0.1:{free_port()}/v1"),
                "--out", str(tmp_path / "r1"))
    assert dead.returncode == 2 and "cannot reach http://127.0.0.1:" in dead.stderr, dead.stderr
    assert "strategies.hosted.generator.base_url" in dead.stderr and "Traceback" not in dead.stderr
    assert len(dead.stderr.strip().splitlines()) == 1 and not (tmp_path / "r1").exists()

    def ok(messages, n, temperature, max_tokens, stop):
        return [("ok", 1, 1)] * n

    app = scripted_app(ok, "tiny")

    @app.middleware("http")
    async def needs_key(request, call_next):
        from starlette.responses import JSONResponse
        if request.headers.get("authorization") != "Bearer right":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, status_code=401)
        return await call_next(request)

    with LoopbackServer(app) as s:
        wrong = _cli("run", _api_suite(tmp_path, tiny_suite_path, s.base_url, api_key_env="TINY_KEY"),
                     "--out", str(tmp_path / "r2"), env={"TINY_KEY": "wrong"})
        right = _cli("run", _api_suite(tmp_path, tiny_suite_path, s.base_url, api_key_env="TINY_KEY"),
                       "--out", str(tmp_path / "r3"), env={"TINY_KEY": "right"})
    assert wrong.returncode == 2 and "refused the key in TINY_KEY (401)" in wrong.stderr, wrong.stderr
    assert not (tmp_path / "r2").exists()
    assert right.returncode == 0, right.stderr  # the right key: the run goes ahead
    cfg = yaml.safe_load(tiny_suite_path.read_text())
    cfg["strategies"]["hosted"]["generator"]["model"] = "gpt-5"
    del cfg["strategies"]["hosted"]["generator"]["api_key_env"]
    tiny_suite_path.write_text(yaml.safe_dump(cfg))
    with LoopbackServer(scripted_app(ok, "tiny")) as s:
        cfg["strategies"]["hosted"]["generator"]["base_url"] = s.base_url
        tiny_suite_path.write_text(yaml.safe_dump(cfg))
        r = _cli("run", str(tiny_suite_path), "--out", str(tmp_path / "r4"))
    assert r.returncode == 2 and "serves no model 'gpt-5' (it serves: tiny)" in r.stderr, r.stderr


def test_an_api_arm_without_base_url_uses_openai_base_url_and_key_as_the_openai_client_does(tmp_path, tiny_suite_path):
    """No base_url and no api_key_env in the suite: $OPENAI_BASE_URL and $OPENAI_API_KEY are the
    endpoint and the key. A base_url written in a suite never receives $OPENAI_API_KEY."""
    seen = []

    def ok(messages, n, temperature, max_tokens, stop):
        return [("ok", 1, 1)] * n

    app = scripted_app(ok, "tiny")

    @app.middleware("http")
    async def needs_key(request, call_next):
        from starlette.responses import JSONResponse
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Bearer from-env":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, status_code=401)
        return await call_next(request)

    with LoopbackServer(app) as s:
        _api_suite(tmp_path, tiny_suite_path, s.base_url)
        cfg = yaml.safe_load(tiny_suite_path.read_text())
        del cfg["strategies"]["hosted"]["generator"]["base_url"]
        cfg["metrics"] = ["token_f1"]
        tiny_suite_path.write_text(yaml.safe_dump(cfg))
        env = {"OPENAI_BASE_URL": s.base_url, "OPENAI_API_KEY": "from-env"}
        r = _cli("run", str(tiny_suite_path), "--strategies", "hosted", "--out", str(tmp_path / "r1"), env=env)
        assert r.returncode == 0, r.stderr
        assert RunDir(tmp_path / "r1").results().strategies["hosted"].model.where == s.base_url
        assert set(seen) == {"Bearer from-env"}
        cfg["strategies"]["hosted"]["generator"]["base_url"] = s.base_url  # named by the suite itself
        tiny_suite_path.write_text(yaml.safe_dump(cfg))
        r = _cli("run", str(tiny_suite_path), "--out", str(tmp_path / "r2"), env=env)
        assert r.returncode == 2 and "refused the key" in r.stderr and "Bearer from-env" not in seen[-1], r.stderr
    del cfg["strategies"]["hosted"]["generator"]["base_url"]
    tiny_suite_path.write_text(yaml.safe_dump(cfg))
    r = _cli("run", str(tiny_suite_path), "--out", str(tmp_path / "r3"), env={"OPENAI_BASE_URL": "ftp://x"})
    assert r.returncode == 2 and "$OPENAI_BASE_URL" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "r3").exists()


def test_one_suite_compares_a_local_arm_with_an_api_arm(tmp_path, tiny_suite_path, tiny_llama, served):
    from toolkit.cli import main
    from toolkit.reporting.report import render_run

    server, _ = served
    _api_suite(tmp_path, tiny_suite_path, server.base_url, tokenizer=str(tiny_llama), input_per_1m_tokens=0.15,
               output_per_1m_tokens=0.6)
    assert main(["run", str(tiny_suite_path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    results = RunDir(tmp_path / "run").results()
    local, hosted = results.strategies["zero_shot"], results.strategies["hosted"]
    assert local.status == hosted.status == "success"
    assert local.model.backend == "transformers" and hosted.model.model_dump() == {
        "backend": "openai", "model": "tiny", "where": server.base_url}
    assert hosted.cost.latency_kind == "per request" and local.cost.latency_kind == "per batch"
    assert local.cost.single_request_latency_s > 0 and hosted.cost.single_request_latency_s is None
    assert "perplexity" in hosted.metrics  # measured through /v1/completions echo + logprobs
    expected = (hosted.cost.prompt_tokens_mean * 0.15 + hosted.cost.completion_tokens_mean * 0.6) / 1000
    assert hosted.cost.usd_per_1k_queries == pytest.approx(expected)
    md, _ = render_run(tmp_path / "run")
    text = md.read_text()
    assert "tiny (openai" in text and "(transformers" in text


def test_adaptbench_serve_answers_the_openai_client(tiny_llama, tmp_path):
    import os
    import signal

    import openai

    from toolkit.serving.app import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "serve", "--model", str(tiny_llama), "--name", "tiny",
                             "--port", str(port), "--dtype", "float32", "--jobs-dir", str(tmp_path / "jobs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        deadline = time.time() + 120
        while True:
            try:
                assert [m.id for m in client.models.list()] == ["tiny"]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
                time.sleep(0.3)
        out = client.chat.completions.create(model="tiny", messages=chat("Say hello."), max_tokens=5)
        assert out.usage.completion_tokens <= 5 and out.choices[0].message.role == "assistant"
        comp = client.completions.create(model="tiny", prompt="The sky is", max_tokens=0, echo=True, logprobs=1)
        lp = comp.choices[0].logprobs
        assert comp.choices[0].text == "The sky is" and lp.token_logprobs[0] is None
        assert len(lp.tokens) == 3 and all(v < 0 for v in lp.token_logprobs[1:]) and lp.text_offset[0] == 0
        # max_tokens 1 with echo (a likelihood request): one forward pass; its next token is the greedy one
        one = client.completions.create(model="tiny", prompt="The sky is", max_tokens=1, echo=True, logprobs=1)
        plain = client.completions.create(model="tiny", prompt="The sky is", max_tokens=1)
        assert one.choices[0].text == "The sky is" + plain.choices[0].text
        assert one.choices[0].logprobs.token_logprobs[:3] == lp.token_logprobs and len(one.choices[0].logprobs.tokens) == 4
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="other", messages=chat("Hi"))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny", messages=chat("Hi"), temperature=-1)
        # streaming: the pieces add up to the answer, usage included
        plain = client.chat.completions.create(model="tiny", messages=chat("Say hello."), max_tokens=5)
        parts = list(client.chat.completions.create(model="tiny", messages=chat("Say hello."), max_tokens=5,
                                                    stream=True, stream_options={"include_usage": True}))
        assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == plain.choices[0].message.content
        assert parts[-1].usage.completion_tokens == plain.usage.completion_tokens
        text = list(client.completions.create(model="tiny", prompt="The sky is", max_tokens=3, stream=True))
        assert text[-1].choices[0].finish_reason in ("stop", "length")
        # the fine-tuning API of the same process: a job, then its model
        import io
        import json
        rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"Q{i}?"},
                                                {"role": "assistant", "content": f"A{i}"}]}) + "\n" for i in range(10))
        f = client.files.create(file=("t.jsonl", io.BytesIO(rows.encode())), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=f.id, model="tiny", hyperparameters={"n_epochs": 1})
        deadline = time.time() + 120
        while job.status not in ("succeeded", "failed", "cancelled") and time.time() < deadline:
            time.sleep(0.5)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        assert client.chat.completions.create(model=job.fine_tuned_model, messages=chat("Q1?"), max_tokens=3).choices
        assert (tmp_path / "jobs" / "jobs" / job.id / "job.json").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0


@pytest.mark.parametrize("argv, words", [
    (["--model", "smollm2-135m-instruct", "--host", "0.0.0.0"], "--host: 0.0.0.0 is reachable from other machines"),
    (["--model", "./no/such/model"], "--model: './no/such/model' is neither"),
    (["--model", "smollm2-135m-instruct", "--port", "70000"], "--port: 70000 is not a port number"),
])
def test_serve_refuses_bad_flags_in_one_line(capsys, argv, words):
    from toolkit.cli import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_label_likelihoods_through_the_api_equal_the_local_ones(tiny_llama, tiny_generator, served):
    from toolkit.backends.local import TransformersBackend
    from toolkit.backends.openai_api import OpenAIBackend

    server, _ = served
    prompts, labels = [chat("Is the sky blue? Answer yes or no."), chat("Pick a colour: red or green.")], ["yes", "no", "red"]
    local = TransformersBackend(GeneratorConfig(model=str(tiny_llama), dtype="float32"),
                                generator=tiny_generator).choice_loglikelihood(prompts, labels)
    api_backend = OpenAIBackend(api_cfg(server.base_url, tokenizer=str(tiny_llama)))
    api = api_backend.choice_loglikelihood(prompts, labels)
    api_backend.close()
    assert np.allclose(api, local, rtol=1e-4)


def test_an_api_arm_without_prompt_logprobs_reports_perplexity_as_not_measured(tmp_path, tiny_suite_path, tiny_llama):
    from toolkit.harness import run_suite
    from toolkit.reporting.report import render_run
    from toolkit.suites import load_suite

    def chat_only(messages, n, temperature, max_tokens, stop):  # like OpenAI's chat models: no /v1/completions
        return [("2014", 30, 2)] * n

    with LoopbackServer(scripted_app(chat_only, "tiny")) as s:
        _api_suite(tmp_path, tiny_suite_path, s.base_url, tokenizer=str(tiny_llama))
        run, res = run_suite(load_suite(tiny_suite_path), out=tmp_path / "run")
    hosted = res.strategies["hosted"]
    assert hosted.status == "success" and "perplexity" not in hosted.metrics
    assert "no prompt log-probabilities" in hosted.not_measured["perplexity"]
    assert "perplexity" in res.strategies["zero_shot"].metrics  # the local arm still measures it
    md, _ = render_run(run.path)
    assert "hosted · Perplexity (gold): not measured: the endpoint gives no prompt log-probabilities" in md.read_text()


def test_an_endpoints_answers_are_reported_as_they_finish_not_in_request_order(tmp_path):
    """With several requests in flight, a slow first answer holds back none of the others: each
    reaches on_done (and the cache) when it is answered."""
    import asyncio

    from toolkit.backends.cache import CachedBackend
    from toolkit.backends.openai_api import OpenAIBackend
    from toolkit.cache import PredictionCache

    answered: list[str] = []

    def scripted(messages, n, temperature, max_tokens, stop):
        answered.append(messages[-1]["content"])
        return [("a " + messages[-1]["content"], 3, 2)] * n

    app = scripted_app(scripted, "tiny")
    calls = []

    @app.middleware("http")
    async def first_is_slow(request, call_next):
        if request.url.path.endswith("/chat/completions"):
            calls.append(1)
            if len(calls) == 1:
                await asyncio.sleep(1.5)
        return await call_next(request)

    questions = [f"q{i}" for i in range(6)]
    reported: list[str] = []
    with LoopbackServer(app) as s:
        be = CachedBackend(OpenAIBackend(api_cfg(s.base_url, concurrency=4)), PredictionCache(tmp_path / "c.sqlite"))
        got = be.generate([GenRequest(chat(q), Settings(8)) for q in questions],
                          on_done=lambda idx, cs: reported.extend(questions[i] for i in idx))
        be.close()
    assert [c.text for c in got] == [f"a {q}" for q in questions]  # returned in request order
    # the slow one (the model saw it last) is reported last, after later requests answered before it
    assert sorted(reported) == questions and reported[-1] == answered[-1] != questions[-1]
