#!/usr/bin/env python3
"""Serving under load: N concurrent clients against `adaptbench serve RUN_DIR --arm ARM` on
loopback, batched (--max-batch 32) against one request at a time (--max-batch 1), side by
side in one run, on the same questions. Each server is a real `adaptbench serve` process
(the engine on its main thread, HTTP on another) and logs every request to SQLite, as in
production. Prints requests/s, p50/p95 latency and errors for each, and ends with
`name: value` lines.

    python benchmarks/serve_load.py                        # builds a small demo run (rag arm) first
    python benchmarks/serve_load.py --run reports/demo-... --arm rag_finetune
    ADAPTBENCH_DTYPE=float32 python benchmarks/serve_load.py   # a CPU without native bf16

Without --run it runs `adaptbench run eval_suites/demo.yaml --strategies rag --limit 8`
into a temporary folder (SmolLM2-135M, about 2 minutes on 2 CPU cores of an Intel Xeon with AMX in bf16),
and serves its rag arm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ADAPTBENCH_OFFLINE", "1")  # toolkit/__init__.py: the hub libraries offline
os.environ.setdefault("ADAPTBENCH_QUIET", "1")


def questions() -> list[str]:
    return [json.loads(line)["question"] for line in (ROOT / "eval_suites" / "demo" / "test.jsonl").read_text().splitlines()]


def serve(run: Path, arm: str, max_batch: int, log: Path):
    import httpx

    from toolkit.serving.app import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "serve", str(run), "--arm", arm, "--port", str(port),
                             "--max-batch", str(max_batch), "--log", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the server did not start: {proc.stderr.read() if proc.poll() is not None else 'timeout'}")
        time.sleep(0.5)


def load(base_url: str, arm: str, clients: int, per_client: int, qs: list[str]) -> dict:
    """`clients` threads, each sending `per_client` requests one after another."""
    import httpx
    import numpy as np

    lat, errors = [], []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=600) as h:
            for j in range(per_client):
                q = qs[(i * per_client + j) % len(qs)]
                t0 = time.perf_counter()
                try:
                    r = h.post(f"{base_url}/chat/completions", json={"model": arm, "user": f"c{i}",
                                                                     "messages": [{"role": "user", "content": q}]})
                    ok = r.status_code == 200
                except httpx.HTTPError as e:
                    ok, r = False, e
                with lock:
                    (lat if ok else errors).append(time.perf_counter() - t0 if ok else repr(r))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    a = np.array(lat) if lat else np.array([float("nan")])
    return {"requests": len(lat), "errors": len(errors), "wall_s": wall, "rps": len(lat) / wall,
            "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run directory (default: a small demo run made here)")
    ap.add_argument("--arm", default="rag")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--per-client", type=int, default=3, help="requests each client sends in a row (default 3)")
    ap.add_argument("--max-batch", type=int, default=32)
    args = ap.parse_args()

    from benchmarks.finetune_throughput import cpu_name

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    run = args.run
    if run is None:
        run = tmp / "run"
        subprocess.run([sys.executable, "-m", "toolkit.cli", "run", "eval_suites/demo.yaml", "--strategies", args.arm,
                        "--limit", "8", "--out", str(run), "--quiet"], check=True, cwd=ROOT)
    qs = questions()
    out = {}
    for name, mb in (("batched", args.max_batch), ("single", 1)):
        proc, url = serve(run, args.arm, mb, tmp / f"{name}.db")
        try:
            load(url, args.arm, 2, 1, qs)  # warm-up
            out[name] = load(url, args.arm, args.clients, args.per_client, qs)
        finally:
            proc.terminate()
            proc.wait(120)
        import sqlite3
        con = sqlite3.connect(tmp / f"{name}.db")
        out[name]["logged"] = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        con.close()
    env = json.loads((run / "env.json").read_text())
    print(f"{args.clients} concurrent clients × {args.per_client} requests, arm {args.arm} of {run.name}, "
          f"{env.get('device')}/{env.get('dtype')} as evaluated")
    for name, r in out.items():
        print(f"{name:8s} (max batch {args.max_batch if name == 'batched' else 1:2d}): {r['requests']} ok, "
              f"{r['errors']} errors in {r['wall_s']:.1f} s · {r['rps']:.2f} req/s · p50 {r['p50']:.2f} s · "
              f"p95 {r['p95']:.2f} s · {r['logged']} log rows (incl. 2 warm-up)")
    print(f"cpu: {cpu_name()}")
    print(f"precision: {env.get('dtype')}")
    print(f"batched_rps: {out['batched']['rps']:.2f}")
    print(f"single_rps: {out['single']['rps']:.2f}")
    print(f"batched_vs_single_rps: {out['batched']['rps'] / out['single']['rps']:.2f}")
    print(f"p50_latency_s: {out['batched']['p50']:.2f}")
    print(f"p95_latency_s: {out['batched']['p95']:.2f}")
    print(f"p95_latency_single_s: {out['single']['p95']:.2f}")
    print(f"errors: {out['batched']['errors'] + out['single']['errors']}")


if __name__ == "__main__":
    main()
