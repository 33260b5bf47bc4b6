"""Runs side by side on one cache (parallel CI jobs, teammates sharing a cache): each shared
artifact is built once under a lock and published atomically, the answer database takes
concurrent writers, and every run gets its own run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from tests.conftest import REPO


def test_runs_started_together_on_one_cache_all_succeed_with_identical_results(tiny_suite_path, tmp_path,
                                                                                  isolated_cache):
    n = 3
    env = {**os.environ, "ADAPTBENCH_CACHE": str(isolated_cache), "ADAPTBENCH_QUIET": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "toolkit.cli", "run", str(tiny_suite_path), "-q"],
                              cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    dirs = [out.strip().splitlines()[-1] for out, _ in outs]
    assert len(set(dirs)) == n, dirs  # started in the same second, each has its own directory
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in dirs]
    for r in results:
        assert r["status"] == "success"
        assert set(r["strategies"]) == {"zero_shot", "few_shot", "rag", "finetune", "rag_finetune"}
    metrics = [{a: v["metrics"] for a, v in r["strategies"].items()} for r in results]
    assert metrics[1] == metrics[0] and metrics[2] == metrics[0]
    # each adapter was trained once: the runs that waited for the lock reused it
    for arm in ("finetune", "rag_finetune"):
        cached = [r["strategies"][arm]["info"]["cached"] for r in results]
        assert sorted(cached) == [False] + [True] * (n - 1), (arm, cached)
    keys = {r["strategies"]["rag"]["info"]["index_key"] for r in results}
    assert len(keys) == 1 and sum(not r["strategies"]["rag"]["info"]["index_cached"] for r in results) == 1


def test_the_answer_database_takes_writers_from_many_threads_and_processes(tmp_path):
    from toolkit.cache import PredictionCache

    db = tmp_path / "p.sqlite"
    code = ("import sys; from toolkit.cache import PredictionCache; c = PredictionCache(__import__('pathlib').Path(sys.argv[1])); "
            "[c.put_many('fp', {f'{sys.argv[2]}-{i}': {'i': i}}) for i in range(200)]; c.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), str(k)], cwd=REPO) for k in range(3)]
    cache = PredictionCache(db)
    threads = [threading.Thread(target=lambda k=k: [cache.put_many("fp", {f"t{k}-{i}": {"i": i}}) for i in range(100)])
               for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(timeout=120) == 0 for p in procs)
    ids = [f"{k}-{i}" for k in range(3) for i in range(200)] + [f"t{k}-{i}" for k in range(3) for i in range(100)]
    assert len(cache.get_many("fp", ids)) == len(ids)
    assert cache.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cache.close()
