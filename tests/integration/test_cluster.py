"""`adaptbench run --ray`: the arms of a run as tasks on a real Ray cluster started on
loopback (`ray start --head`, 2 CPUs), whose workers keep their own cache folder, as a
second machine would."""

import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str | None:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else shutil.which("ray")


@pytest.fixture
def cluster(tmp_path):
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs; its workers' ADAPTBENCH_CACHE is a
    folder of their own. Yields (address, worker cache)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'adaptbench[ray]')")
    exe = ray_cli()
    if exe is None:
        pytest.skip("the ray command is not installed")
    worker_cache = tmp_path / "worker-cache"
    port = free_port()
    # the cluster's own token (Ray's token authentication), not one left in ~/.ray by another cluster
    os.environ["RAY_AUTH_MODE"], os.environ["RAY_AUTH_TOKEN"] = "token", secrets.token_hex(16)
    env = {**os.environ, "ADAPTBENCH_CACHE": str(worker_cache), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    start = subprocess.run([exe, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
                            "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    if start.returncode != 0:
        pytest.skip(f"a Ray head could not start here: {start.stderr.strip()[-500:]}")
    try:
        yield f"127.0.0.1:{port}", worker_cache
    finally:
        subprocess.run([exe, "stop", "--force"], env=env, capture_output=True, timeout=120)
        del os.environ["RAY_AUTH_MODE"], os.environ["RAY_AUTH_TOKEN"]


def run_cli(args: list[str], cache: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADAPTBENCH_CACHE": str(cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=900, **kw)


def strategies(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())["strategies"]


def predictions(cache: Path) -> int:
    db = cache / "predictions.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as c:
        return c.execute("SELECT count(*) FROM predictions").fetchone()[0]


@pytest.mark.slow
def test_a_run_on_a_ray_cluster_gives_the_local_metrics_into_one_run_directory(tiny_suite_path, tmp_path, cluster):
    """Three arms (one trains, one retrieves) as tasks on the cluster: the metrics equal the local
    run's, the samples, adapter and results land in the driver's run directory, the answers in
    the driver's cache (none in the workers'), and a second run recomputes nothing."""
    address, worker_cache = cluster
    cfg = yaml.safe_load(tiny_suite_path.read_text())
    cfg["strategies"] = {k: v for k, v in cfg["strategies"].items() if k in ("zero_shot", "rag", "finetune")}
    cfg["strategies"]["finetune"]["ray"] = {"num_cpus": 1, "max_retries": 1}
    tiny_suite_path.write_text(yaml.safe_dump(cfg))
    local = run_cli(["run", str(tiny_suite_path), "-q", "-o", str(tmp_path / "local")], tmp_path / "local-cache")
    assert local.returncode == 0, local.stderr[-3000:]

    t0 = time.perf_counter()
    driver_cache = tmp_path / "driver-cache"
    first = run_cli(["run", str(tiny_suite_path), "--ray", address, "-o", str(tmp_path / "ray")], driver_cache)
    assert first.returncode == 0, first.stderr[-3000:]
    took = time.perf_counter() - t0
    # the arms ran in the workers: the index and the adapter were built in the workers' cache
    assert (worker_cache / "indexes").is_dir() and (worker_cache / "adapters").is_dir()
    assert not (driver_cache / "indexes").exists() and not (driver_cache / "adapters").exists()
    a, b = strategies(tmp_path / "local"), strategies(tmp_path / "ray")
    assert list(a) == list(b) == list(cfg["strategies"])  # the suite's order, whichever task finished first
    for arm in a:
        assert b[arm]["status"] == "success", b[arm].get("error")
        assert {m: v["mean"] for m, v in a[arm]["metrics"].items()} == {m: v["mean"] for m, v in b[arm]["metrics"].items()}, arm
        assert a[arm]["fingerprint"] == b[arm]["fingerprint"], arm
    def answers(run: Path) -> dict:
        rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
        return {(r["strategy"], r["id"]): (r["output"], [c["doc_id"] for c in r["contexts"]]) for r in rows}
    assert answers(tmp_path / "ray") == answers(tmp_path / "local")  # the same words and passages, answer by answer
    assert len(answers(tmp_path / "ray")) == 18
    assert b["finetune"]["info"]["final_eval_loss"] == pytest.approx(a["finetune"]["info"]["final_eval_loss"], rel=1e-4)
    assert (tmp_path / "ray" / "adapters" / "finetune" / "adapter_config.json").is_file()
    assert (tmp_path / "ray" / "report.html").is_file()
    assert predictions(driver_cache) > 0 and predictions(worker_cache) == 0

    # --seeds 2: both seeds' arms on the cluster at once; the first seed's answers all come from the cache
    again = run_cli(["run", str(tiny_suite_path), "--ray", address, "--seeds", "2", "-q", "-o", str(tmp_path / "again")],
                    driver_cache)
    assert again.returncode == 0, again.stderr[-3000:]
    for arm, r in strategies(tmp_path / "again" / "seed-0").items():
        assert r["cost"]["cached_answers"] == 6, arm  # every answer from the driver's cache: nothing recomputed
    assert all(r["status"] == "success" for r in strategies(tmp_path / "again" / "seed-1").values())
    summary = json.loads((tmp_path / "again" / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert took < 600


def task_pids(name: str) -> list[int]:
    """Processes running the Ray task of that name (Ray titles a busy worker `ray::NAME`; an arm's
    task is named `adaptbench SUITE:ARM`)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(f"ray::{name}".encode()):
                pids.append(int(d.name))
        except OSError:  # the process ended while the folder was read
            continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the task's worker through /proc")
def test_a_task_whose_worker_is_killed_is_retried_and_asks_only_what_was_unfinished(tiny_suite_path, tmp_path, cluster):
    """SIGKILL the worker of an arm while its third question is at the endpoint: Ray runs the task
    again, the two answers it had finished come from the driver's cache, and the endpoint is
    asked every other question once."""
    from tests.conftest import FACTS, scripted_app
    from toolkit.serving.app import LoopbackServer

    address, _ = cluster
    asked: list[str] = []
    held, release = threading.Event(), threading.Event()

    def answer(messages, n, temperature, max_tokens, stop):
        name = next((f[1] for f in FACTS if f"the {f[1]} " in messages[-1]["content"]), "?")
        asked.append(name)
        if len(set(asked)) == 3 and not release.is_set():  # the third question: held until its asker is dead
            held.set()
            release.wait(120)
        return [(f"{name} answer", 3, 2)] * n

    with LoopbackServer(scripted_app(answer, "tiny")) as server:
        cfg = yaml.safe_load(tiny_suite_path.read_text())
        cfg["strategies"] = {"hosted": {"type": "zero_shot", "generator": {
            "backend": "openai", "base_url": server.base_url, "model": "tiny", "concurrency": 1}}}
        tiny_suite_path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "ADAPTBENCH_CACHE": str(tmp_path / "driver-cache"), "PYTHONPATH": str(REPO),
               "RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "run", str(tiny_suite_path), "--ray", address,
                                 "-q", "-o", str(tmp_path / "run")], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert held.wait(300), "the arm never reached its third question"
            pids = task_pids("adaptbench mini:hosted")
            assert len(pids) == 1, pids
            os.kill(pids[0], 9)
            release.set()
            out, err = proc.communicate(timeout=600)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err[-3000:]
    third = list(dict.fromkeys(asked))[2]
    counts = Counter(asked)
    assert len(counts) == len(FACTS) and counts[third] == 2, asked  # the question in flight, asked again
    assert all(counts[n] == 1 for n in counts if n != third), asked  # the finished ones never again
    r = strategies(tmp_path / "run")["hosted"]
    assert r["status"] == "success" and r["cost"]["cached_answers"] == 2, r["cost"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert sorted(x["output"] for x in rows) == sorted(f"{f[1]} answer" for f in FACTS)


def test_ray_flag_errors_are_one_line(mini_suite, tmp_path, monkeypatch, capsys):
    """A malformed address, Ray missing, and a cluster that is not there: one line, exit 2."""
    from toolkit.cli import main
    for bad in ("http://x:1/path", "127.0.0.1:99999", "127.0.0.1:6379\n", "ray://head:10001"):
        assert main(["run", str(mini_suite), "--ray", bad, "-o", str(tmp_path / "a")]) == 2, bad
        err = capsys.readouterr().err
        assert "--ray" in err and "HOST:PORT" in err and len(err.strip().splitlines()) == 1, bad
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert main(["run", str(mini_suite), "--ray", "local", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'adaptbench[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_no_cluster_at_the_address_is_one_line(mini_suite, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'adaptbench[ray]')")
    got = run_cli(["run", str(mini_suite), "--ray", f"127.0.0.1:{free_port()}", "-o", str(tmp_path / "a")],
                  tmp_path / "cache")
    assert got.returncode == 2, got.stderr[-2000:]
    assert "cannot join the Ray cluster" in got.stderr and "Traceback" not in got.stderr
    assert not (tmp_path / "a").exists()


def test_task_resources_follow_the_arm(mini_suite):
    """One CPU by default, a GPU for an arm whose model is local when the cluster has GPUs (where a
    local run would put it), and an arm's `ray:` settings over both."""
    from strategies.configs import FinetuneConfig, ZeroShotConfig
    from toolkit.cluster import task_options
    from toolkit.suites import load_suite
    suite = load_suite(mini_suite).suite
    ft, zs = FinetuneConfig(), ZeroShotConfig()
    assert task_options("finetune", ft, suite, 4)["num_gpus"] == 1
    assert task_options("finetune", ft, suite, 0)["num_gpus"] == 0
    assert task_options("zero_shot", zs, suite, 4)["num_gpus"] == 1
    assert task_options("zero_shot", zs, suite, 0) == {"num_cpus": 1, "num_gpus": 0, "max_retries": 2,
                                                       "retry_exceptions": False}
    cpu = suite.model_copy(update={"generator": suite.generator.model_copy(update={"device": "cpu"})})
    assert task_options("finetune", ft, cpu, 4)["num_gpus"] == 0  # the suite asks for the CPU
    own = FinetuneConfig(ray={"num_cpus": 4, "num_gpus": 0.5, "memory_gb": 8, "max_retries": 0})
    assert task_options("finetune", own, suite, 4) == {"num_cpus": 4, "num_gpus": 0.5, "max_retries": 0,
                                                       "retry_exceptions": False, "memory": 8 * 2**30}
    api = FinetuneConfig(generator={"backend": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m"})
    assert task_options("finetune", api, suite, 4)["num_gpus"] == 0  # trained by the endpoint, not here
    with pytest.raises(ValueError):
        ZeroShotConfig(ray={"num_cpus": 0})


def test_a_task_lands_only_its_own_adapter_folder(tmp_path):
    """What a task returns as its run-folder files may only fill adapters/ARM/: never the run's
    records, another arm's adapter, or anything outside the run directory."""
    from toolkit.cluster import land_files
    land_files(tmp_path, "ft", {"adapters/ft/adapter_config.json": b"{}"})
    assert (tmp_path / "adapters" / "ft" / "adapter_config.json").read_bytes() == b"{}"
    for rel in ("results.json", "adapters/other/x", "adapters/ft/../../results.json", "../outside", "adapters/ft"):
        with pytest.raises(ValueError):
            land_files(tmp_path, "ft", {rel: b"x"})
    assert not (tmp_path / "results.json").exists() and not (tmp_path.parent / "outside").exists()


def test_the_driver_forwards_only_what_the_tasks_need(mini_suite, monkeypatch):
    from toolkit.cluster import forwarded_env
    from toolkit.harness import select_arms
    from toolkit.suites import load_suite
    for k, v in {"ADAPTBENCH_DTYPE": "float32", "ADAPTBENCH_API_KEY": "serve-key", "ADAPTBENCH_CACHE": "/x",
                 "CHROMA_TOKEN": "t", "OPENAI_API_KEY": "sk-1", "AWS_SECRET_ACCESS_KEY": "no"}.items():
        monkeypatch.setenv(k, v)
    loaded = load_suite(mini_suite)
    env = forwarded_env(loaded, select_arms(loaded, None))
    assert env.get("ADAPTBENCH_DTYPE") == "float32" and env.get("CHROMA_TOKEN") == "t"
    assert not {"ADAPTBENCH_API_KEY", "ADAPTBENCH_CACHE", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY"} & set(env)
