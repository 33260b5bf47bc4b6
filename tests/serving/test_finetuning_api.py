"""OpenAI's fine-tuning workflow against `adaptbench serve --model` on loopback, with the
official `openai` client: upload, create a job, poll, then call the new model; and the ways
it refuses bad input."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import openai
import pytest
from conftest import FACTS

from toolkit.config import GeneratorConfig
from toolkit.serving.app import LoopbackServer
from toolkit.serving.engine import Engine


def chat_lines(n: int = 12) -> bytes:
    rows = []
    for i in range(n):
        _, name, year, town = FACTS[i % len(FACTS)]
        q, a = (f"When was the {name} launched?", year) if i < len(FACTS) else (f"Where is the {name} made?", town)
        rows.append({"messages": [{"role": "system", "content": "Answer briefly."},
                                  {"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def ft_server(tiny_llama, tmp_path):
    from toolkit.backends.generation import Generator
    from toolkit.serving.ft_jobs import Quotas
    from toolkit.serving.serve import model_app

    gen = Generator.load(GeneratorConfig(model=str(tiny_llama), dtype="float32"))
    engine = Engine(gen, max_batch=4)
    app = model_app(engine, "tiny", jobs_dir=tmp_path / "jobs", dtype="float32", quotas=Quotas(max_epochs=400))
    with LoopbackServer(app) as server:
        yield openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0), app.state.finetuning, tmp_path / "jobs"
    app.state.finetuning.close()
    engine.close()


def wait(client, job_id: str, until=("succeeded", "failed", "cancelled"), timeout: float = 180):
    deadline = time.time() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        assert time.time() < deadline, f"job still {job.status}"
        time.sleep(0.3)


def test_a_guides_fine_tuning_workflow_runs_unchanged_against_adaptbench_serve(ft_server):
    client, _, _ = ft_server
    f = client.files.create(file=("train.jsonl", io.BytesIO(chat_lines())), purpose="fine-tune")
    assert f.id.startswith("file-") and f.purpose == "fine-tune"
    job = client.fine_tuning.jobs.create(training_file=f.id, model="tiny", suffix="facts",
                                         hyperparameters={"n_epochs": 2, "batch_size": 4})
    assert job.status == "validating_files" and job.fine_tuned_model is None
    job = wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:tiny:adaptbench:facts:") and job.trained_tokens > 0
    assert job.hyperparameters.n_epochs == 2
    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    out = client.completions.create(model=job.fine_tuned_model, prompt="When was the Alder 5 launched?", max_tokens=5)
    assert out.model == job.fine_tuned_model and out.usage.completion_tokens >= 1
    chat = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=5,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert chat.choices[0].message.role == "assistant"
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert any(m.startswith("New fine-tuned model created: ft:tiny") for m in events)
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]
    # the fine-tuned model is not the base: its greedy likelihoods differ
    base = client.completions.create(model="tiny", prompt="When was the Alder 5 launched? 2014", max_tokens=0,
                                     echo=True, logprobs=1)
    tuned = client.completions.create(model=job.fine_tuned_model, prompt="When was the Alder 5 launched? 2014",
                                      max_tokens=0, echo=True, logprobs=1)
    assert base.choices[0].logprobs.token_logprobs != tuned.choices[0].logprobs.token_logprobs


def test_fine_tuned_models_are_served_again_after_a_restart(ft_server, tiny_llama):
    from toolkit.serving.ft_jobs import FineTuning

    client, ft, jobs = ft_server
    f = client.files.create(file=("train.jsonl", io.BytesIO(chat_lines())), purpose="fine-tune")
    job = wait(client, client.fine_tuning.jobs.create(training_file=f.id, model="tiny",
                                                      hyperparameters={"n_epochs": 1}).id)
    assert job.status == "succeeded"
    again: dict = {}
    FineTuning(jobs, bases={"tiny": str(tiny_llama)},
               register=lambda name, base, adapter: again.update({name: adapter})).close()
    assert list(again) == [job.fine_tuned_model]


def test_bad_files_and_bad_jobs_are_refused_with_openai_errors(ft_server):
    client, _, _ = ft_server
    bad = chat_lines(3).decode().splitlines()
    bad[1] = json.dumps({"messages": [{"role": "user", "content": "no answer here"}]})
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("bad.jsonl", io.BytesIO(("\n".join(bad) + "\n").encode())), purpose="fine-tune")
    assert "line 2: no assistant message" in str(e.value)
    for text, words in [(b'{"messages": [}\n', "line 1: not valid JSON"),
                        (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "line 1: messages[0].role 'robot'"),
                        (b'{"prompt": "a", "completion": " "}\n', "line 1: `completion` is empty"),
                        (b'{"prompt": "a", "completion": "b"}\n{"messages": []}\n', "line 2: a chat line in a "
                                                                                     "prompt/completion file")]:
        with pytest.raises(openai.BadRequestError, match=words.replace("[", r"\[").replace("(", r"\(")):
            client.files.create(file=("bad.jsonl", io.BytesIO(text)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("t.jsonl", io.BytesIO(chat_lines())), purpose="assistants")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(training_file="file-nope", model="tiny")

    good = client.files.create(file=("t.jsonl", io.BytesIO(chat_lines())), purpose="fine-tune")
    # a base model the server was not started with, whether or not such a path exists: the same answer
    for model in ("no-such-base-model", "/etc/shadow", "/etc/no-such", "/"):
        with pytest.raises(openai.BadRequestError) as e:
            client.fine_tuning.jobs.create(training_file=good.id, model=model)
        assert e.value.code == "model_not_available" and "is not trained by this server (it trains: " in str(e.value)
    small = client.files.create(file=("s.jsonl", io.BytesIO(chat_lines(3))), purpose="fine-tune")
    job = wait(client, client.fine_tuning.jobs.create(training_file=small.id, model="tiny").id)
    assert job.status == "failed" and "must have at least 10 examples" in job.error.message
    assert job.fine_tuned_model is None


def test_a_cancelled_job_leaves_no_model_and_its_name_is_never_served(ft_server, isolated_cache):
    client, _, jobs = ft_server
    f = client.files.create(file=("train.jsonl", io.BytesIO(chat_lines(12))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=f.id, model="tiny", suffix="long",
                                         hyperparameters={"n_epochs": 400, "batch_size": 1})
    wait(client, job.id, until=("running",), timeout=60)
    time.sleep(2)  # well into training
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    time.sleep(1)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert not (jobs / job.id / "result.json").exists()
    assert not any(m.id.startswith("ft:tiny:adaptbench:long") for m in client.models.list())
    complete = [p for p in (Path(isolated_cache) / "adapters").glob("*")
                if p.is_dir() and not p.name.endswith(".tmp") and (p / "train_info.json").exists()]
    assert complete == []  # no finished adapter published
    assert "Job cancelled" in [e.message for e in client.fine_tuning.jobs.list_events(job.id)]


def test_a_suite_arm_fine_tunes_through_the_api_and_answers_from_the_new_model(ft_server, tiny_suite_path, tiny_llama,
                                                                                tmp_path):
    import yaml

    from toolkit.harness import run_suite
    from toolkit.suites import load_suite

    client, _, _ = ft_server
    cfg = yaml.safe_load(tiny_suite_path.read_text())
    cfg["generator"]["dtype"] = "float32"
    cfg["strategies"] = {"zero_shot": {}, "ft_api": {
        "type": "finetune", "method": "openai_api", "num_train_epochs": 1, "per_device_train_batch_size": 4,
        "poll_s": 0.2, "generator": {"backend": "openai", "base_url": str(client.base_url), "model": "tiny",
                                     "tokenizer": str(tiny_llama)}}}
    tiny_suite_path.write_text(yaml.safe_dump(cfg))
    run, res = run_suite(load_suite(tiny_suite_path), out=tmp_path / "run1")
    arm = res.strategies["ft_api"]
    assert arm.status == "success", arm.error
    name = arm.info.fine_tuned_model
    assert name.startswith("ft:tiny:adaptbench:ft_api:") and arm.model.model == name
    assert arm.cost.setup_breakdown_s["fine-tuning job"] > 0
    jobs = list(client.fine_tuning.jobs.list())
    assert len(jobs) == 1 and jobs[0].status == "succeeded" and jobs[0].hyperparameters.n_epochs == 1
    from toolkit.reporting.report import render_run
    _, html = render_run(run.path)
    text = html.read_text()
    assert f"fine-tuning API (job {arm.info.fine_tuning_job}) on" in text and name in text
    # an unchanged rerun creates no second job
    _, res2 = run_suite(load_suite(tiny_suite_path), out=tmp_path / "run2")
    assert res2.strategies["ft_api"].info.fine_tuned_model == name
    assert len(list(client.fine_tuning.jobs.list())) == 1


def test_openai_api_method_needs_an_openai_generator(tiny_suite_path, capsys):
    import yaml

    from toolkit.cli import main

    cfg = yaml.safe_load(tiny_suite_path.read_text())
    cfg["strategies"] = {"ft_api": {"type": "finetune", "method": "openai_api"}}
    tiny_suite_path.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(tiny_suite_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "strategies.ft_api.generator.backend: method openai_api" in err[0]
