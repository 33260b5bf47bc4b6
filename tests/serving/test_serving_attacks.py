"""`adaptbench serve --model` attacked the way a hostile client would: limits checked before
anything is queued, a bad request that never reaches (or fails) another's batch, clients that
leave, idle and slow sockets, requests from a web page, and the fine-tuning API's trust in the
client. Every case runs against a real server on loopback, through httpx or the official
`openai` client."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import FACTS

from toolkit.config import GeneratorConfig
from toolkit.serving.app import Limits, LoopbackServer, free_port
from toolkit.serving.engine import Engine


@pytest.fixture(scope="module")
def tiny_gen(tiny_llama):
    from toolkit.backends.generation import Generator
    return Generator.load(GeneratorConfig(model=str(tiny_llama), dtype="float32"))


class ModelServer:
    """`serve --model` in this process: the tiny model, a prediction log, the fine-tuning API."""

    def __init__(self, gen, root: Path, *, background: bool = True, api_key: str | None = None, quotas=None,
                 limits: Limits | None = None):
        from toolkit.serving.log import PredictionLog
        from toolkit.serving.metrics import Metrics
        from toolkit.serving.serve import model_app

        self.limits = limits or Limits(header_timeout_s=1.0, max_queue=64)
        self.metrics = Metrics()
        self.engine = Engine(gen, max_batch=8, background=background, max_queue=self.limits.max_queue)
        self.log = PredictionLog(root / "serve.db")
        self.app = model_app(self.engine, "tiny", api_key=api_key, metrics=self.metrics, limits=self.limits,
                             log=self.log, jobs_dir=root / "jobs", dtype="float32", quotas=quotas)
        self.ft = self.app.state.finetuning
        self.server = LoopbackServer(self.app, limits=self.limits)

    def __enter__(self):
        self.server.__enter__()
        self.url = self.server.base_url
        self.root = self.url.removesuffix("/v1")
        return self

    def client(self, key: str = "x") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0)

    def rows(self) -> list[tuple]:
        return self.log.con.execute("SELECT request_id, status, output FROM predictions ORDER BY id").fetchall()

    def __exit__(self, *exc):
        self.server.__exit__(*exc)
        self.ft.close()
        self.engine.close()
        self.log.close()


@pytest.fixture
def served(tiny_gen, tmp_path):
    with ModelServer(tiny_gen, tmp_path) as s:
        yield s


def _err(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()["error"]
    assert body["message"] and body["type"]
    if code is not None:
        assert body["code"] == code, body
    if param is not None:
        assert body["param"] == param, body
    return body


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def test_every_limit_is_checked_before_anything_is_queued(served):
    chat, comp = served.url + "/chat/completions", served.url + "/completions"
    before = len(served.engine.batches)
    _err(httpx.post(chat, json={**CHAT, "stop": ["a", "b", "c", "d", "e"]}), 400, param="stop")  # OpenAI takes 4
    _err(httpx.post(chat, json={**CHAT, "stop": "x" * 500}), 400, param="stop")
    long = {**CHAT, "messages": [{"role": "user", "content": "hello " * 2000}]}  # the tiny model's context: 1024
    assert "maximum context length is 1024 tokens" in _err(httpx.post(chat, json=long), 400, "context_length_exceeded")[
        "message"]
    _err(httpx.post(comp, json={"model": "tiny", "prompt": "hello " * 2000}), 400, "context_length_exceeded")
    _err(httpx.post(comp, json={"model": "tiny", "prompt": ["a"] * 33}), 400, param="prompt")
    _err(httpx.post(comp, json={"model": "tiny", "prompt": ""}), 400, param="prompt")
    _err(httpx.post(comp, json={"model": "tiny", "prompt": [1, 2, 3]}), 400)
    _err(httpx.post(chat, json={**CHAT, "n": 17}), 400, param="n")
    _err(httpx.post(chat, json={**CHAT, "max_tokens": 5000}), 400, param="max_tokens")
    _err(httpx.post(chat, json={**CHAT, "temperature": 1, "seed": 2 ** 64}), 400, param="seed")
    _err(httpx.post(chat, json={**CHAT, "messages": [{"role": None, "content": "x"}]}), 400, param="messages.0.role")
    _err(httpx.post(chat, json={**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}),
         400)
    _err(httpx.post(chat, json={**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), 400)
    _err(httpx.post(chat, json={**CHAT, "messages": []}), 400, param="messages")
    _err(httpx.post(chat, content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
    assert len(served.engine.batches) == before  # none of them reached the engine
    ok = httpx.post(chat, json={**CHAT, "temperature": 1, "seed": -(2 ** 63)})  # any 64-bit seed is a seed
    assert ok.status_code == 200, ok.text
    metrics = httpx.get(served.root + "/metrics").text
    assert 'status="500"' not in metrics and 'status="400"' in metrics


def test_a_malformed_request_never_fails_the_batch_it_would_have_joined(served):
    results: dict[str, list] = {"good": [], "bad": []}
    lock = threading.Lock()

    def call(kind: str, i: int):
        msg = {"role": "user", "content": f"Question {i}?"} if kind == "good" else {"role": None, "content": "x"}
        r = httpx.post(served.url + "/chat/completions", json={**CHAT, "messages": [msg]}, timeout=60)
        with lock:
            results[kind].append(r.status_code)

    threads = [threading.Thread(target=call, args=(k, i)) for i in range(8) for k in ("good", "bad")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["good"] == [200] * 8 and results["bad"] == [400] * 8


def test_a_client_that_leaves_is_dropped_from_the_queue_and_its_row_says_cancelled(tiny_gen, tmp_path):
    with ModelServer(tiny_gen, tmp_path, background=False) as s:  # nobody answers yet: the request waits
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/chat/completions", json=CHAT, timeout=0.5)
        deadline = time.time() + 10
        while not s.rows() and time.time() < deadline:
            time.sleep(0.05)
        [(rid, status, _)] = s.rows()
        assert status == "cancelled" and rid.startswith("chatcmpl-")
        stop = time.time() + 1.0
        s.engine.run(until=lambda: time.time() > stop)  # the engine wakes: the abandoned request is skipped
        assert s.engine.batches == []
        fb = httpx.post(s.url + "/feedback", json={"request_id": rid, "score": 0})
        assert fb.status_code == 200  # its row exists, so feedback on it is recorded
        assert 'status="499"' in httpx.get(s.root + "/metrics").text


def test_a_chunked_body_behind_a_small_content_length_is_still_capped(served):
    port = int(served.root.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(40):  # 2.5 MiB against a 1 MiB cap
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server answered and closed
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:80]


def test_odd_but_valid_values_are_answered(served):
    chat = served.url + "/chat/completions"
    assert httpx.post(chat, json={**CHAT, "temperature": 1e-300}).status_code == 200  # greedy, not a 500
    deep = ("[" * 100000 + "]" * 100000 + "\n").encode()
    up = httpx.post(served.url + "/files", data={"purpose": "fine-tune"}, files={"file": ("d.jsonl", deep)})
    _err(up, 400, "invalid_file_format")


def test_idle_and_slow_sockets_are_closed(served):
    port = int(served.root.rsplit(":", 1)[1])
    for opening in (b"", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"):  # nothing; headers that never end
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(opening)
            t0 = time.perf_counter()
            assert sock.recv(1024) == b""  # the server closed it
            assert time.perf_counter() - t0 < 4  # header timeout 1 s
    assert httpx.get(served.root + "/healthz").status_code == 200


def test_a_web_page_cannot_drive_a_keyless_server(served, tiny_gen, tmp_path, monkeypatch):
    rebound = httpx.get(served.url + "/models", headers={"Host": "rebind.attacker.example"})
    _err(rebound, 421, "misdirected_request")
    cross = httpx.post(served.url + "/chat/completions", json=CHAT, headers={"Origin": "http://evil.example"})
    _err(cross, 403, "cross_site_request")
    upload = httpx.post(served.url + "/files", data={"purpose": "fine-tune"},
                        files={"file": ("t.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
                        headers={"Origin": "https://evil.example"})
    _err(upload, 403, "cross_site_request")
    assert served.ft.files() == []
    same = httpx.post(served.url + "/chat/completions", json=CHAT, headers={"Origin": served.root})
    assert same.status_code == 200
    _err(httpx.get(served.url + "/models", headers={"Host": "127.evil.example"}), 421)  # a name, not an address
    port = int(served.root.rsplit(":", 1)[1])
    other_port = httpx.post(served.url + "/chat/completions", json=CHAT, headers={"Origin": f"http://127.0.0.1:{port + 1}"})
    _err(other_port, 403, "cross_site_request")  # another port of this machine is another site
    with ModelServer(tiny_gen, tmp_path / "keyed", api_key="k3y") as keyed:  # a key: any name, bearer required
        r = httpx.get(keyed.url + "/models", headers={"Host": "api.example", "Authorization": "Bearer k3y"})
        assert r.status_code == 200
        _err(httpx.get(keyed.url + "/models", headers={"Host": "api.example"}), 401)


def chat_lines(n: int = 12) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"When was the {name} launched?"},
                          {"role": "assistant", "content": year}]} for _, name, year, _ in (FACTS * 3)[:n]]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_the_fine_tuning_api_never_lets_a_client_name_a_path_or_exhaust_the_server(tiny_gen, tmp_path):
    from toolkit.serving.ft_jobs import Quotas

    with ModelServer(tiny_gen, tmp_path, quotas=Quotas(max_files=2)) as s:
        c = s.client()
        f = c.files.create(file=("t.jsonl", io.BytesIO(chat_lines())), purpose="fine-tune")
        jobs = s.url + "/fine_tuning/jobs"
        for hp in ({"n_epochs": 10 ** 9}, {"n_epochs": 21}, {"batch_size": 10 ** 6}, {"n_epochs": 0}):
            _err(httpx.post(jobs, json={"training_file": f.id, "model": "tiny", "hyperparameters": hp}), 400)
        for raw in (b'1e999', b'NaN', b'-1', b'Infinity'):
            body = b'{"training_file": "%s", "model": "tiny", "hyperparameters": {"learning_rate_multiplier": %s}}' % (
                f.id.encode(), raw)
            _err(httpx.post(jobs, content=body, headers={"content-type": "application/json"}), 400,
                 param="hyperparameters.learning_rate_multiplier")
        for ident in ("%2e%2e", "..%2f..%2fetc%2fpasswd", "ftjob-../x"):
            _err(httpx.get(f"{jobs}/{ident}"), 404)
            _err(httpx.get(f"{s.url}/files/{ident}"), 404)
        # a damaged state file is skipped, never a 500 and never a stalled queue
        bad = tmp_path / "jobs" / "jobs" / ("ftjob-" + "0" * 24)
        bad.mkdir()
        (bad / "job.json").write_text("{not json")
        assert httpx.get(jobs).status_code == 200
        assert c.files.create(file=("u.jsonl", io.BytesIO(chat_lines())), purpose="fine-tune").id
        with pytest.raises(openai.BadRequestError, match="at most 2 files"):  # a quota on stored files
            c.files.create(file=("v.jsonl", io.BytesIO(chat_lines())), purpose="fine-tune")
        assert c.files.delete(f.id).deleted is True
        with pytest.raises(openai.NotFoundError):
            c.files.retrieve(f.id)
        # what the server writes, only its owner reads
        for p in (tmp_path / "jobs" / "files").iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert stat.S_IMODE((tmp_path / "jobs").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "serve.db").stat().st_mode) == 0o600


def guide_rows() -> list[dict]:
    rows = [{"prompt": f"When was the {name} launched?", "completion": f" {year}"} for _, name, year, _ in FACTS]
    return rows + [{"prompt": f"Where is the {name} assembled?", "completion": f" {town}"} for _, name, _, town in FACTS]


def run_the_guide(c: openai.OpenAI, base: str, hyperparameters: dict) -> tuple[object, list[dict], list[str]]:
    """The guide's three steps, verbatim: upload prompt/completion JSONL, create a job and wait,
    then `completions.create(model=ft_model, prompt=..., max_tokens=60)` on each training prompt."""
    from test_finetuning_api import wait

    rows = guide_rows()
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    f = c.files.create(file=("guide.jsonl", io.BytesIO(data)), purpose="fine-tune")
    job = wait(c, c.fine_tuning.jobs.create(training_file=f.id, model=base, suffix="guide",
                                            hyperparameters=hyperparameters).id, timeout=600)
    assert job.status == "succeeded", job.error
    answers = [c.completions.create(model=job.fine_tuned_model, prompt=r["prompt"], max_tokens=60).choices[0].text
               for r in rows]
    return job, rows, answers


def test_a_prompt_completion_file_trains_a_lora_adapter_served_over_the_one_base_model(tiny_gen, tmp_path):
    with ModelServer(tiny_gen, tmp_path) as s:
        c = s.client()
        job, rows, answers = run_the_guide(c, "tiny", {"n_epochs": 20, "batch_size": 4,
                                                        "learning_rate_multiplier": 10})
        assert all(a.strip() for a in answers), answers
        assert len({id(g) for g in s.engine.generators}) == 1  # one base model in memory, the rest adapters
        base = c.completions.create(model="tiny", prompt=rows[0]["prompt"], max_tokens=8).choices[0].text
        assert base != answers[0]  # the base model still answers as the base
        # a chat-trained model through /v1/completions answers too: the prompt is one user turn
        f = c.files.create(file=("chat.jsonl", io.BytesIO(chat_lines())), purpose="fine-tune")
        from test_finetuning_api import wait
        chat_job = wait(c, c.fine_tuning.jobs.create(training_file=f.id, model="tiny", hyperparameters={
            "n_epochs": 1}).id)
        assert c.completions.create(model=chat_job.fine_tuned_model, prompt="Hi", max_tokens=4).usage.completion_tokens
        assert c.models.delete(job.fine_tuned_model).deleted is True
        assert job.fine_tuned_model not in [m.id for m in c.models.list()]
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model=job.fine_tuned_model, prompt="x", max_tokens=2)


@pytest.mark.slow
def test_the_guides_workflow_on_smollm2_answers_the_training_prompts_as_trained(tmp_path, monkeypatch):
    """With the real SmolLM2 (float32, so every CPU computes the same): 8 epochs at 3e-3 learn
    the 12 facts (12 of 12 measured on an AMD EPYC, float32); asserted: at least 8."""
    from toolkit.backends.generation import Generator

    monkeypatch.setenv("ADAPTBENCH_DTYPE", "float32")
    gen = Generator.load(GeneratorConfig(model="smollm2-135m-instruct", dtype="float32"))
    with ModelServer(gen, tmp_path) as s:
        _, rows, answers = run_the_guide(s.client(), "tiny", {"n_epochs": 8, "batch_size": 4,
                                                               "learning_rate_multiplier": 3})
    assert all(a.strip() for a in answers), answers
    right = sum(r["completion"].strip() in a for r, a in zip(rows, answers))
    assert right >= 8, list(zip(answers, [r["completion"] for r in rows]))


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


@pytest.mark.skipif(sys.platform != "linux", reason="the training child's parent-death signal is Linux's")
def test_the_training_child_dies_with_a_killed_server(tiny_llama, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "serve", "--model", str(tiny_llama), "--dtype",
                             "float32", "--port", str(port), "--jobs-dir", str(tmp_path / "jobs")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    child = None
    try:
        from test_serving import _wait_up
        _wait_up(proc, port)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        f = c.files.create(file=("t.jsonl", io.BytesIO(chat_lines())), purpose="fine-tune")
        c.fine_tuning.jobs.create(training_file=f.id, model=str(tiny_llama), hyperparameters={"n_epochs": 20,
                                                                                               "batch_size": 1})
        deadline = time.time() + 60
        while child is None and time.time() < deadline:
            child = next(iter(_children(proc.pid)), None)
            time.sleep(0.1)
        assert child is not None, "no training child started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 10
        while Path(f"/proc/{child}").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    finally:
        if proc.poll() is None:
            proc.kill()
        if child and Path(f"/proc/{child}").exists():
            os.kill(child, signal.SIGKILL)


def test_a_job_error_never_shows_the_servers_paths(tmp_path):
    from toolkit.serving.ft_jobs import scrub

    root = tmp_path / "jobs"
    msg = scrub(f"FileNotFoundError: [Errno 2] No such file: '{root}/files/file-abc.jsonl' "
                f"(from /root/.cache/adaptbench/models/x/config.json)", root)
    assert str(tmp_path) not in msg and "/root/.cache" not in msg and msg.startswith("FileNotFoundError")


def test_logprobs_k_returns_the_top_k_tokens_as_lm_evaluation_harness_reads_them(served):
    c = served.client()
    echo = c.completions.create(model="tiny", prompt="The Alder 5 sensor", max_tokens=1, echo=True, logprobs=3)
    lp = echo.choices[0].logprobs
    assert len(lp.top_logprobs) == len(lp.tokens) == len(lp.token_logprobs)
    assert lp.top_logprobs[0] is None and all(len(t) == 3 for t in lp.top_logprobs[1:])
    # the greedy next token is the most likely of its top 3 (lm-eval's is_greedy check)
    last = lp.top_logprobs[-1]
    assert max(last, key=last.get) == lp.tokens[-1] and abs(last[lp.tokens[-1]] - lp.token_logprobs[-1]) < 1e-4
    gen = c.completions.create(model="tiny", prompt="The Alder 5 sensor", max_tokens=3, logprobs=1)
    g = gen.choices[0].logprobs
    assert g.top_logprobs is not None and len(g.top_logprobs) == len(g.tokens)
    plain = c.completions.create(model="tiny", prompt="The Alder 5 sensor", max_tokens=0, echo=True, logprobs=0)
    assert plain.choices[0].logprobs.top_logprobs is None
