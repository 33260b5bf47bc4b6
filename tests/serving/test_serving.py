"""`adaptbench serve RUN_DIR --arm ...`: arms served as evaluated, the prediction log and
feedback, A/B routing, Prometheus metrics, safety, and load and kill -9 on loopback, all
through the official `openai` client or plain HTTP against real servers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from toolkit.serving.app import Limits, LoopbackServer, free_port
from toolkit.serving.engine import Engine

ARMS = ["zero_shot", "few_shot", "rag", "finetune", "rag_finetune"]


def samples(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


class Served:
    """The arms of a run served in this process on loopback (engine on a background thread)."""

    def __init__(self, run: Path, weights: dict, log: Path, *, api_key=None, max_queue=0, engine=None, max_body=None,
                 limits: Limits | None = None):
        from toolkit.serving.arms import load_arms
        from toolkit.serving.log import PredictionLog
        from toolkit.serving.metrics import Metrics
        from toolkit.serving.serve import arm_app

        self.res, arms = load_arms(run, list(weights))
        self.metrics = Metrics()
        self.engine = engine or Engine(max_batch=16, max_queue=max_queue, on_batch=self.metrics.batch.observe)
        self.log = PredictionLog(log)
        limits = limits or Limits(max_queue=self.engine.max_queue, **({"max_body": max_body} if max_body else {}))
        self.app = arm_app(arms, weights, engine=self.engine, name="mini", run=run.name, log=self.log,
                           metrics=self.metrics, api_key=api_key, limits=limits)
        self.server = LoopbackServer(self.app, limits=limits)

    def __enter__(self):
        self.server.__enter__()
        self.base_url = self.server.base_url
        self.root = self.base_url.removesuffix("/v1")
        return self

    def client(self, key="x") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0)

    def __exit__(self, *exc):
        self.server.__exit__(*exc)
        self.engine.close()
        self.log.close()
        self.res.close()


def test_every_arm_answers_the_openai_client_as_in_the_run(tiny_run, tmp_path):
    rows = samples(tiny_run)
    with Served(tiny_run, {a: 1 for a in ARMS}, tmp_path / "serve.db") as s:
        c = s.client()
        listed = {m.id: m for m in c.models.list()}
        assert set(listed) == {"mini", *ARMS}
        for r in rows:
            out = c.chat.completions.create(model=r["strategy"], messages=[{"role": "user", "content": r["input"]}])
            assert out.choices[0].message.content == r["output"], (r["strategy"], r["id"])
            assert out.usage.prompt_tokens == r["prompt_tokens"]
            ab = out.adaptbench
            assert ab["arm"] == r["strategy"] and ab["request_id"] == out.id and ab["routed"] is False
            assert [p["doc_id"] for p in ab["passages"]] == [p["doc_id"] for p in r["contexts"]]
        # a guide's text completion, unchanged: the prompt is the question
        ft = next(r for r in rows if r["strategy"] == "finetune")
        comp = c.completions.create(model="finetune", prompt=ft["input"])
        assert comp.choices[0].text == ft["output"] and comp.adaptbench["arm"] == "finetune"
        # the logged rows, committed before each response
        assert httpx.get(s.root + "/healthz").json() == {"status": "ok"}
    con = sqlite3.connect(tmp_path / "serve.db")
    logged = con.execute("SELECT arm, endpoint, input, output, passages FROM predictions ORDER BY id").fetchall()
    assert len(logged) == len(rows) + 1
    assert [(a, i, o) for a, _, i, o, _ in logged[:-1]] == [(r["strategy"], r["input"], r["output"]) for r in rows]
    assert logged[-1][1] == "completions"


def test_streamed_answers_add_up_to_the_answer(tiny_run, tmp_path):
    rows = samples(tiny_run)[::6]  # one question per arm
    with Served(tiny_run, {a: 1 for a in ARMS}, tmp_path / "serve.db") as s:
        c = s.client()
        for r in rows:
            chunks = list(c.chat.completions.create(model=r["strategy"], messages=[{"role": "user", "content": r["input"]}],
                                                    stream=True, stream_options={"include_usage": True}))
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            assert text == r["output"]
            assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) >= 1
            assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("stop", "length")
            assert chunks[-1].usage.completion_tokens == r["completion_tokens"]
            assert chunks[0].adaptbench["arm"] == r["strategy"]
            streamed = list(c.completions.create(model=r["strategy"], prompt=r["input"], stream=True))
            assert "".join(ch.choices[0].text for ch in streamed) == r["output"]
    con = sqlite3.connect(tmp_path / "serve.db")
    assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 2 * len(rows)


def test_feedback_logs_and_export_as_training_data(tiny_run, tmp_path, capsys):
    from toolkit.cli import main
    from toolkit.data import read_examples

    db = tmp_path / "serve.db"
    rows = [r for r in samples(tiny_run) if r["strategy"] == "rag"][:3]
    with Served(tiny_run, {"rag": 1}, db) as s:
        c = s.client()
        ids = [c.chat.completions.create(model="rag", messages=[{"role": "user", "content": r["input"]}],
                                         user="ana").id for r in rows]
        post = lambda body: httpx.post(s.base_url + "/feedback", json=body)  # noqa: E731
        assert post({"request_id": ids[0], "score": 0, "correction": "2014", "comment": "wrong year"}).status_code == 200
        assert post({"request_id": ids[1], "score": 1}).json()["arm"] == "rag"
        assert post({"request_id": ids[2], "score": 0.2}).status_code == 200
        missing = post({"request_id": "chatcmpl-nope", "score": 1})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"
        assert post({"request_id": ids[1], "score": 3}).status_code == 400       # 0..1
        assert post({"request_id": ids[1]}).status_code == 422                   # nothing to record
        metrics = httpx.get(s.root + "/metrics").text
    assert 'adaptbench_feedback_total{arm="rag"} 3.0' in metrics
    assert 'adaptbench_requests_total{arm="",endpoint="/v1/feedback",status="404"} 1.0' in metrics
    assert main(["logs", str(db), "--feedback", "any", "--json"]) == 0
    listed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["request_id"] for r in listed] == ids and listed[0]["feedback_correction"] == "2014"
    assert listed[0]["user_id"] == "ana" and [r["output"] for r in listed] == [r["output"] for r in rows]
    assert main(["logs", str(db)]) == 0 and ids[0] in capsys.readouterr().out
    out = tmp_path / "train.jsonl"
    assert main(["logs", str(db), "--export", str(out)]) == 0
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    # the correction, and the answer rated 1; not the one rated 0.2
    assert [[m["content"] for m in e["messages"]] for e in exported] == [[rows[0]["input"], "2014"],
                                                                          [rows[1]["input"], rows[1]["output"]]]
    examples = read_examples(out, task="qa")  # a suite reads it as train data
    assert examples[0].input == rows[0]["input"] and examples[0].target == "2014"
    assert main(["logs", str(db), "--export", str(tmp_path / "none.jsonl"), "--arm", "zero_shot"]) == 2
    assert not (tmp_path / "none.jsonl").exists()


def test_ab_routing_is_weighted_and_sticky_and_the_ab_report_says_when_it_cannot_tell(tiny_run, tmp_path, capsys):
    from toolkit.cli import main
    from toolkit.serving.targets import Router

    router = Router({"rag": 80, "finetune": 20})
    picks = [router.pick(f"user:u{i}") for i in range(2000)]
    assert 0.76 < picks.count("rag") / len(picks) < 0.84
    assert all(router.pick(f"user:u{i}") == picks[i] for i in range(200))  # sticky, and across restarts
    db = tmp_path / "serve.db"
    with Served(tiny_run, {"rag": 80, "finetune": 20}, db) as s:
        c = s.client()
        seen: dict[str, set] = {}
        for i in range(40):
            user = f"user-{i % 10}"
            out = c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "When was Alder 5 launched?"}],
                                            user=user)
            assert out.adaptbench["routed"] is True
            seen.setdefault(user, set()).add(out.adaptbench["arm"])
            # feedback: rag's answers rated 1, finetune's 0 (scripted users)
            httpx.post(s.base_url + "/feedback", json={"request_id": out.id,
                                                       "score": 1.0 if out.adaptbench["arm"] == "rag" else 0.0})
        assert all(len(arms) == 1 for arms in seen.values())  # every user kept one arm
        assert {a for arms in seen.values() for a in arms} == {"rag", "finetune"}
        # an X-User header routes like the user field
        h = httpx.post(s.base_url + "/chat/completions", json={"model": "mini", "messages": [
            {"role": "user", "content": "Hi"}]}, headers={"X-User": "user-3"}).json()
        assert h["adaptbench"]["arm"] == next(iter(seen["user-3"]))
    assert main(["ab", str(db), "--html", str(tmp_path / "ab.html")]) == 0
    out = capsys.readouterr().out
    assert "finetune is rated worse than rag" in out
    html = (tmp_path / "ab.html").read_text()
    assert "finetune is rated worse than rag" in html and "<table" in html

    # too little feedback: says so, with how much more it needs
    from toolkit.serving.ab import analyse, verdict

    def row(arm, score):
        return {"arm": arm, "feedback_score": score, "feedback_correction": None, "latency_s": 0.1, "routed": 1}
    a = analyse([row("rag", 1), row("rag", 0), row("rag", 1), row("finetune", 1), row("finetune", 0)], None)
    text = verdict("rag", "finetune", a["compare"]["finetune"])
    assert text.startswith("cannot tell yet") and "more per arm" in text
    a = analyse([row("rag", 1), row("finetune", None)], None)
    assert "not enough feedback yet" in verdict("rag", "finetune", a["compare"]["finetune"])


def test_bad_requests_get_openai_error_json_never_a_500(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_KEY", "s3cret-key")
    with Served(tiny_run, {"zero_shot": 1}, tmp_path / "serve.db", api_key="s3cret-key", max_body=4096) as s:
        good = {"Authorization": "Bearer s3cret-key"}
        url = s.base_url + "/chat/completions"
        msg = {"model": "zero_shot", "messages": [{"role": "user", "content": "Hi"}]}

        def err(r, status):
            assert r.status_code == status, (r.status_code, r.text)
            body = r.json()["error"]
            assert body["message"] and body["type"]
            return body

        assert err(httpx.post(url, json=msg), 401)["code"] == "invalid_api_key"
        err(httpx.post(url, json=msg, headers={"Authorization": "Bearer wrong"}), 401)
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").chat.completions.create(model="zero_shot", messages=msg["messages"])
        assert s.client("s3cret-key").chat.completions.create(model="zero_shot", messages=msg["messages"]).id
        assert httpx.get(s.root + "/healthz").status_code == 200  # probes need no key
        err(httpx.get(s.root + "/metrics"), 401)
        err(httpx.post(url, content=b"{not json", headers={**good, "Content-Type": "application/json"}), 400)
        err(httpx.post(url, json={**msg, "model": "gpt-9"}, headers=good), 404)
        assert err(httpx.post(url, json={"model": "zero_shot"}, headers=good), 400)["param"] == "messages"
        err(httpx.post(url, json={**msg, "max_tokens": 10 ** 6}, headers=good), 400)
        err(httpx.post(url, json={**msg, "messages": [{"role": "system", "content": "x"}]}, headers=good), 422)
        err(httpx.post(url, json={**msg, "messages": [{"role": "user", "content": "x" * 5000}]}, headers=good), 413)

        def chunked():
            yield json.dumps({**msg, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
        err(httpx.post(url, content=chunked(), headers={**good, "Content-Type": "application/json"}), 413)
        err(httpx.post(s.base_url + "/completions", json={"model": "zero_shot", "prompt": ["a", "b"]}, headers=good), 422)
        metrics = httpx.get(s.root + "/metrics", headers=good).text
    assert 'status="401"' in metrics and 'status="413"' in metrics and 'status="500"' not in metrics


def test_a_full_queue_answers_429_and_shutdown_503(tiny_run, tmp_path):
    engine = Engine(max_batch=16, max_queue=1, background=False)  # nobody answers: requests wait
    with Served(tiny_run, {"zero_shot": 1}, tmp_path / "serve.db", engine=engine) as s:
        url = s.base_url + "/chat/completions"
        body = {"model": "zero_shot", "messages": [{"role": "user", "content": "Hi"}]}
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=httpx.post(url, json=body, timeout=30)))
        t.start()
        deadline = time.time() + 10
        while engine.waiting < 1 and time.time() < deadline:
            time.sleep(0.02)
        r = httpx.post(url, json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        engine.close()
        t.join(30)
        assert first["r"].status_code == 503
    # the queued request has its row (refused at shutdown); the one turned away at the door has none
    rows = sqlite3.connect(tmp_path / "serve.db").execute("SELECT status, error FROM predictions").fetchall()
    assert rows == [("error", "the server is shutting down")]


def test_50_clients_by_20_requests_give_0_errors_and_1000_rows(tiny_run, tmp_path):
    db = tmp_path / "serve.db"
    errors, ids = [], []
    lock = threading.Lock()
    with Served(tiny_run, {"rag": 50, "zero_shot": 50}, db) as s:
        def client(i):
            with httpx.Client(timeout=120) as h:
                for j in range(20):
                    try:
                        r = h.post(s.base_url + "/chat/completions", json={
                            "model": "mini", "user": f"u{i}",
                            "messages": [{"role": "user", "content": f"When was product {j} launched?"}]})
                        r.raise_for_status()
                        with lock:
                            ids.append(r.json()["id"])
                    except Exception as e:  # counted, not raised: the test reports them all
                        with lock:
                            errors.append(repr(e))
        threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batches = list(s.engine.batches)
    assert errors == []
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 1000
    assert {r[0] for r in con.execute("SELECT request_id FROM predictions")} == set(ids)
    assert max(batches) > 1  # concurrent requests were batched


def _serve(run: Path, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "toolkit.cli", "serve", str(run), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def _wait_up(proc: subprocess.Popen, port: int) -> None:
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.3)


def test_kill_9_under_load_loses_no_answered_request(tiny_run, tmp_path):
    db = tmp_path / "serve.db"
    port = free_port()
    proc = _serve(tiny_run, port, "--arm", "rag", "--log", str(db))
    received, stop = [], threading.Event()
    lock = threading.Lock()
    try:
        _wait_up(proc, port)

        def client(i):
            with httpx.Client(timeout=30) as h:
                while not stop.is_set():
                    try:
                        r = h.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
                            "model": "rag", "messages": [{"role": "user", "content": f"Question {i}?"}]})
                    except httpx.TransportError:
                        return
                    if r.status_code == 200:
                        with lock:
                            received.append(r.json()["id"])
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while len(received) < 60 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(received) >= 60
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    logged = {r[0] for r in con.execute("SELECT request_id FROM predictions")}
    assert set(received) <= logged
    con.close()
    # it starts again on the same log, and answers
    port = free_port()
    proc = _serve(tiny_run, port, "--arm", "rag", "--log", str(db))
    try:
        _wait_up(proc, port)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        c.chat.completions.create(model="rag", messages=[{"role": "user", "content": "Hi"}])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == len(logged) + 1


@pytest.mark.parametrize("argv, words", [
    (["RUN", "--arm", "nope"], "--arm: 'nope' is not an arm of this run"),
    (["RUN"], "--arm: name the arm(s) to serve"),
    (["RUN", "--arm", "rag=lots"], "--arm: 'rag=lots': the weight must be a number"),
    (["RUN", "--arm", "rag", "--host", "0.0.0.0"], "--host: 0.0.0.0 is reachable from other machines and no API key"),
    (["RUN", "--arm", "rag", "--api-key-env", "NO_SUCH_VAR_SET"], "--api-key-env: the environment variable NO_SUCH_VAR_SET"),
    (["nowhere", "--arm", "rag"], "nowhere: no such run directory"),
    (["RUN", "--arm", "rag", "--model", "smollm2-135m-instruct"], "not both"),
])
def test_serve_refuses_bad_input_in_one_line_before_loading_a_model(tiny_run, capsys, argv, words):
    from toolkit.cli import main

    argv = [str(tiny_run) if a == "RUN" else a for a in argv]
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_an_arm_whose_data_changed_is_not_served_unless_allowed(tiny_run, tmp_path):
    import shutil

    from toolkit.errors import UserError
    from toolkit.serving.arms import load_arms

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["strategies"]["few_shot"]["num_fewshot"] = 1  # not what was evaluated
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="few_shot' would not be served as it was evaluated: its config changed"):
        load_arms(run, ["few_shot"])
    res, arms = load_arms(run, ["few_shot"], allow_changes=True)
    res.close()
    assert arms[0].changes == ["config"]


def test_the_retraining_loop_serve_feedback_export_run_compare_serve(tiny_run, tmp_path):
    """serve → feedback → logs --export → a suite whose train data includes the export → run →
    compare old vs new → serve the new run."""
    from toolkit.cli import main
    from toolkit.harness import run_suite
    from toolkit.suites import load_suite

    db = tmp_path / "serve.db"
    asked = {"Who assembles the Alder 5?": "Kestlewick", "Which year did the Fir 8 come out?": "2019",
             "Where do they build the Elm 2?": "Thornwell"}
    with Served(tiny_run, {"finetune": 1}, db) as s:
        c = s.client()
        for q, right in asked.items():
            r = c.chat.completions.create(model="finetune", messages=[{"role": "user", "content": q}])
            httpx.post(s.base_url + "/feedback", json={"request_id": r.id, "score": 0, "correction": right})
    feedback = tmp_path / "feedback.jsonl"
    assert main(["logs", str(db), "--export", str(feedback)]) == 0

    old_cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    suite_file = (tiny_run / old_cfg["_suite_file"]).resolve()  # recorded relative to the run
    cfg = yaml.safe_load(suite_file.read_text())
    cfg["data"]["extra_train"] = [str(feedback)]
    new_suite = suite_file.with_name("suite-retrained.yaml")
    new_suite.write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTBENCH_CACHE", str(tmp_path / "cache"))
        new_run, res = run_suite(load_suite(new_suite), only=["finetune"], out=tmp_path / "retrained")
    assert res.data.extra_train == {str(feedback): 3}
    assert res.data.train == json.loads((tiny_run / "results.json").read_text())["data"]["train"] + 3
    assert res.strategies["finetune"].info.train_examples == res.data.train
    from toolkit.reporting.compare import compare_runs, render_compare, training_lines
    cmp = compare_runs([tiny_run, new_run.path])
    assert training_lines(cmp)[1] == (f"retrained: {res.data.train} training examples, 3 of them from "
                                      f"production feedback (3 from {feedback})")
    assert {r["arm"] for r in cmp["rows"]} == {"finetune"}
    md, html = render_compare(cmp, tmp_path / "cmp")
    assert "3 of them from production feedback" in html.read_text() and "3 of them" in md.read_text()
    # the old and the new version served side by side, A/B, and the A/B report over both
    port, db2 = free_port(), tmp_path / "ab.db"
    proc = _serve(tiny_run, port, "--arm", "finetune=50", "--arm", f"{new_run.path}:finetune=50", "--log", str(db2))
    try:
        _wait_up(proc, port)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert {m.id for m in c.models.list()} == {"mini", "finetune", "finetune@retrained"}
        arms = set()
        for i in range(12):
            r = c.chat.completions.create(model="mini", user=f"user-{i}",
                                          messages=[{"role": "user", "content": "Who assembles the Alder 5?"}])
            arms.add(r.adaptbench["arm"])
            httpx.post(f"http://127.0.0.1:{port}/v1/feedback", json={"request_id": r.id, "score": i % 2})
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert arms == {"finetune", "finetune@retrained"}
    runs = {r[0]: r[1] for r in sqlite3.connect(db2).execute("SELECT DISTINCT arm, run FROM predictions")}
    assert runs == {"finetune": tiny_run.name, "finetune@retrained": "retrained"}
    from toolkit.serving.ab import analyse
    from toolkit.serving.log import connect, query
    a = analyse(query(connect(db2, readonly=True)), "finetune")
    assert set(a["arms"]) == {"finetune", "finetune@retrained"} and "finetune@retrained" in a["compare"]


def test_a_run_made_before_a_setting_was_added_is_still_served(tiny_run, tmp_path):
    """A later adaptbench may add a setting (at its default): the old run's arm is still the one
    evaluated."""
    import shutil

    from toolkit.serving.arms import load_arms

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    del cfg["strategies"]["finetune"]["poll_s"]  # as a run written before poll_s existed
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    results = json.loads((run / "results.json").read_text())
    from toolkit.cache import content_hash
    old = {k: v for k, v in cfg["strategies"]["finetune"].items() if k != "type"}
    arm = results["strategies"]["finetune"]
    arm["fingerprint_parts"]["config"] = content_hash(old, 12)
    arm["fingerprint"] = "from-an-older-version"
    (run / "results.json").write_text(json.dumps(results))
    res, arms = load_arms(run, ["finetune"])
    res.close()
    assert arms[0].changes == []


def test_a_moved_run_is_reported_and_served_where_it_now_is(tiny_run, tmp_path):
    """A run records its suite and data relative to itself: the project folder (suite, data,
    run) copied elsewhere, as a zip carries it, is re-reported and served from the copy; the
    run copied alone still finds the data where it was."""
    import shutil

    from toolkit.cli import main
    from toolkit.runs import RunDir
    from toolkit.suites import load_resolved

    root = tiny_run.parent  # the suite, its data and knowledge base, and the run
    for name in ("results.json", "config.yaml", "env.json"):  # no absolute path but the fallback ones
        text = (tiny_run / name).read_text()
        kept = [line for line in text.splitlines() if "_absolute" not in line]
        assert str(root) not in "\n".join(kept), name
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(root, moved, ignore=shutil.ignore_patterns("cache"))
    run = moved / tiny_run.name
    loaded = load_resolved(RunDir(run).config(), file=run / "config.yaml")
    assert loaded.path.is_relative_to(moved)  # the copied suite, not the original
    assert main(["report", str(run)]) == 0 and "adaptbench" in (run / "report.html").read_text()
    rows = [r for r in samples(run) if r["strategy"] in ("rag", "finetune")][::3]
    with Served(run, {"rag": 1, "finetune": 1}, tmp_path / "serve.db") as s:
        c = s.client()
        for r in rows:
            out = c.chat.completions.create(model=r["strategy"], messages=[{"role": "user", "content": r["input"]}])
            assert out.choices[0].message.content == r["output"], (r["strategy"], r["id"])

    alone = tmp_path / "alone" / "run"
    shutil.copytree(tiny_run, alone)
    loaded = load_resolved(RunDir(alone).config(), file=alone / "config.yaml")
    assert loaded.path.is_relative_to(root)  # moved alone on the same machine: the data where it was
