#!/usr/bin/env python3
"""A suite's knowledge base on a Chroma server (`chroma run` on loopback) against the same index
embedded in the process, side by side in one run on the same chunks and embeddings:

1. loading the embedded index into the server (ids, embeddings, texts and metadata, in
   batches) — `server_load_s`;
2. the same query embeddings searched in both: the share of top-k chunks they agree on
   (`topk_agreement`) and the latency per query, the query embedding excluded
   (`server_p50_ms`, `embedded_p50_ms`);
3. one changed document absorbed by each through adaptbench's Retriever (compare the
   collection with the documents, delete the old chunks, embed and add the new ones) —
   `update_one_doc_server_s`, `update_one_doc_embedded_s` — with the comparison's share of each
   (`*_compare_s`). On a server every chunk's metadata is read, since another machine may have
   written to the collection; embedded, where one process writes at a time, the ids suffice.

The index is the one `adaptbench run SUITE` builds for the arm and caches (built here first
when it is missing, which at 100k chunks takes as long as the run's first build); both sides
work on copies in a temporary cache folder, so the cached index is left as it was.

    python benchmarks/kb_server.py eval_suites/covid_qa_100k.yaml --data-dir ../shared/datasets

Ends with `name: value` lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ADAPTBENCH_OFFLINE", "1")  # toolkit/__init__.py: the hub libraries offline
os.environ.setdefault("ADAPTBENCH_QUIET", "1")

import numpy as np  # noqa: E402

from toolkit.cache import cache_root  # noqa: E402
from toolkit.data.kb import Document, KnowledgeBase  # noqa: E402
from toolkit.data.suite_data import load_task_data  # noqa: E402
from toolkit.models import embed  # noqa: E402
from toolkit.resources import Resources  # noqa: E402
from toolkit.retrieval import connect  # noqa: E402
from toolkit.suites import load_suite  # noqa: E402

COPY_BATCH = 2000  # chunk records per get/add while the server is loaded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path) -> tuple[subprocess.Popen, int]:
    """`chroma run` (the chromadb package's server) on loopback, once it listens."""
    chroma = Path(sys.executable).parent / "chroma"
    port = free_port()
    log = open(path / "server.log", "w")
    proc = subprocess.Popen([str(chroma if chroma.exists() else "chroma"), "run", "--path", str(path / "data"),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"chroma run exited: {(path / 'server.log').read_text()[-500:]}")
            time.sleep(0.3)
    proc.kill()
    sys.exit("chroma run did not listen within 60 s")


def retriever(loaded, kb: KnowledgeBase, arm: str):
    """The arm's Retriever as a run makes it (the suite's embedder, chunking, HNSW settings and
    $ADAPTBENCH_CHROMA_URL), not yet opened."""
    _, cfg = loaded.arms[arm]
    return Resources(loaded.suite, None, kb, None).retriever(cfg.chunk_size, cfg.chunk_overlap)


def latencies(r, vecs: np.ndarray, top_k: int) -> tuple[list[float], list[list[tuple[str, str]]]]:
    one, found = [], []
    for v in vecs:
        t0 = time.perf_counter()
        got = r.search(v[None, :], top_k)[0]
        one.append(time.perf_counter() - t0)
        found.append([(p.doc_id, p.text) for p in got])
    return one, found


def timed_update(loaded, kb: KnowledgeBase, arm: str) -> tuple[float, dict]:
    r = retriever(loaded, kb, arm)
    t0 = time.perf_counter()
    r.build()
    s = time.perf_counter() - t0
    assert r.last is not None and r.last.changed == 1 and r.last.touched == 1, r.last
    return s, r.last.as_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", default="eval_suites/covid_qa_100k.yaml", help="suite with a RAG arm")
    ap.add_argument("--data-dir", default=os.environ.get("ADAPTBENCH_DATA_DIR"), help="the suite's {data_dir}")
    ap.add_argument("--arm", default="rag", help="the retrieving arm whose index is measured")
    ap.add_argument("--queries", type=int, default=200, help="test questions searched on both sides")
    ap.add_argument("--top-k", type=int, default=10, help="chunks per search")
    args = ap.parse_args()
    os.environ.pop("ADAPTBENCH_CHROMA_URL", None)

    loaded = load_suite(args.suite, args.data_dir)
    if args.arm not in loaded.arms or not hasattr(loaded.arms[args.arm][1], "chunk_size"):
        sys.exit(f"{args.suite}: no retrieving arm named {args.arm!r}")
    if loaded.suite.kb_chroma is not None:
        sys.exit(f"{args.suite}: its knowledge base is on a Chroma server already; give a suite with an embedded one")
    data = load_task_data(loaded)
    kb = data.kb
    cached = retriever(loaded, kb, args.arm)
    if not (cached.folder / "chroma.sqlite3").exists():
        print(f"building the arm's index in {cached.folder} first ({len(kb.documents):,} documents)", flush=True)
    cached.build()  # opened (built when missing): the copies below start from a finished index
    cached._client = cached._collection = None

    real = cache_root()
    tmp = Path(tempfile.mkdtemp(prefix="kb-server-"))
    try:
        cache = tmp / "cache"
        cache.mkdir()
        for entry in real.iterdir():  # the models and the rest shared; the index copied
            if entry.name != "indexes":
                (cache / entry.name).symlink_to(entry)
        shutil.copytree(cached.folder, cache / "indexes" / cached.folder.name)
        os.environ["ADAPTBENCH_CACHE"] = str(cache)
        emb = retriever(loaded, kb, args.arm)
        emb.build()
        assert emb.last is None, "the copied index was not in step with the documents"
        n = emb._collection.count()

        (tmp / "server").mkdir()
        proc, port = start_server(tmp / "server")
        try:
            os.environ["ADAPTBENCH_CHROMA_URL"] = f"http://127.0.0.1:{port}"
            src, server = emb._collection, retriever(loaded, kb, args.arm).server
            dst = connect(server).create_collection(emb.collection_name, configuration={"hnsw": emb.hnsw.settings()},
                                                    metadata=src.metadata)
            print(f"loading {n:,} chunks into the server at {os.environ['ADAPTBENCH_CHROMA_URL']}", flush=True)
            t0 = time.perf_counter()
            for off in range(0, n, COPY_BATCH):
                got = src.get(include=["embeddings", "documents", "metadatas"], limit=COPY_BATCH, offset=off)
                dst.add(ids=got["ids"], embeddings=got["embeddings"], documents=got["documents"],
                        metadatas=got["metadatas"])
            load_s = time.perf_counter() - t0
            assert dst.count() == n, (dst.count(), n)
            srv = retriever(loaded, kb, args.arm)
            assert srv.server == server
            srv.build()
            assert srv.last is None, "the server's copy was not in step with the documents"

            qs = [e.input for e in data.splits.test[: args.queries]]
            embed(loaded.suite.embedder.model, ["warm up"], loaded.suite.embedder.batch_size)  # loaded untimed
            t0 = time.perf_counter()
            vecs = embed(loaded.suite.embedder.model, qs, loaded.suite.embedder.batch_size)
            query_embed_ms = (time.perf_counter() - t0) / len(qs) * 1e3
            e_lat, e_found = latencies(emb, vecs, args.top_k)
            s_lat, s_found = latencies(srv, vecs, args.top_k)
            agree = float(np.mean([len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(e_found, s_found)]))

            # one changed document (a CORD-19 paper: a document of many chunks), absorbed by each side
            paper = max(kb.documents, key=lambda d: len(d.text))
            changed = KnowledgeBase(kb.name, [d if d is not paper else
                                              Document(d.id, d.text + " Revised: the cohort was followed for a year.")
                                              for d in kb.documents], source=kb.source)
            up_srv_s, up_srv = timed_update(loaded, changed, args.arm)
            os.environ.pop("ADAPTBENCH_CHROMA_URL")
            up_emb_s, up_emb = timed_update(loaded, changed, args.arm)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.suite}: {n:,} chunks of {len(kb.documents):,} documents, arm {args.arm}, "
          f"HNSW {emb.hnsw.settings()}")
    print(f"changed document: {paper.id} ({up_emb['chunks_embedded']} chunks re-embedded)")
    print(f"{'':22}{'embedded':>12}{'server':>12}")
    print(f"{'search p50 ms':22}{np.percentile(e_lat, 50) * 1e3:12.2f}{np.percentile(s_lat, 50) * 1e3:12.2f}")
    print(f"{'search p95 ms':22}{np.percentile(e_lat, 95) * 1e3:12.2f}{np.percentile(s_lat, 95) * 1e3:12.2f}")
    for k in ("compare_s", "embed_s", "write_s", "total_s"):
        print(f"{'update ' + k:22}{up_emb[k]:12.3f}{up_srv[k]:12.3f}")
    print(f"{'update, whole build()':22}{up_emb_s:12.3f}{up_srv_s:12.3f}")
    print(f"query embedding: {query_embed_ms:.2f} ms per question (not in the search times)\n")
    print(f"chunks: {n}")
    print(f"server_load_s: {load_s:.2f}")
    print(f"topk_agreement: {agree:.4f}")
    print(f"embedded_p50_ms: {np.percentile(e_lat, 50) * 1e3:.3f}")
    print(f"server_p50_ms: {np.percentile(s_lat, 50) * 1e3:.3f}")
    print(f"update_one_doc_embedded_s: {up_emb_s:.3f}")
    print(f"update_one_doc_server_s: {up_srv_s:.3f}")
    print(f"embedded_compare_s: {up_emb['compare_s']:.3f}")
    print(f"server_compare_s: {up_srv['compare_s']:.3f}")
    print(f"server_vs_embedded_update: {up_srv_s / up_emb_s:.2f}")


if __name__ == "__main__":
    main()
