"""The retrieval index kept in step with its documents: a changed, added or deleted document
re-embeds only its own chunks, an update killed halfway is finished by the next, and a real
Chroma server on loopback (`chroma run`) returns what the embedded index returns."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from toolkit.config import ChromaServerConfig, EmbedderConfig, HnswConfig
from toolkit.data.kb import Document, KnowledgeBase
from toolkit.errors import UserError
from toolkit.retrieval import Retriever, doc_hash

TOPICS = ["tide pools", "glacier ice", "desert beetles", "coral reefs", "alpine lakes", "river deltas",
          "volcanic soil", "mangrove roots"]
QUESTIONS = ["What lives in tide pools?", "How does glacier ice move?", "What do desert beetles drink?",
             "Why are coral reefs colourful?", "How cold are alpine lakes?", "Where do mangroves grow?"]


def docs(n: int = 8, changed: dict[int, str] | None = None) -> list[Document]:
    out = []
    for i in range(n):
        text = changed.get(i) if changed and i in changed else " ".join(
            f"Fact {j} about {TOPICS[i % len(TOPICS)]}: entry {i}.{j} describes its {TOPICS[i % len(TOPICS)]} "
            f"in plain words, measured on day {j}." for j in range(12))
        out.append(Document(id=f"doc-{i}", text=text))
    return out


def retriever(kb: KnowledgeBase, tiny_llama, **kw) -> Retriever:
    return Retriever(kb, EmbedderConfig(), chunk_size=64, chunk_overlap=0, tokenizer_path=str(tiny_llama),
                     tokenizer_key="tiny", source=kw.pop("source", kb.source), **kw)


def results(r: Retriever) -> list[list[tuple[str, str]]]:
    return [[(p.doc_id, p.text) for p in ps] for ps in r.retrieve(QUESTIONS, 4)]


def test_a_changed_added_or_deleted_document_re_embeds_only_its_chunks(tmp_path, tiny_llama):
    first = retriever(KnowledgeBase("kb", docs(), source=str(tmp_path / "kb")), tiny_llama)
    first.build()
    assert first.last.full and first.last.added == 8 and first.n_chunks == first.last.chunks_embedded > 8
    per_doc = first.n_chunks // 8
    # the same documents again: nothing to do
    again = retriever(KnowledgeBase("kb", docs(), source=str(tmp_path / "kb")), tiny_llama)
    again.build()
    assert again.last is None and not again.built_now and again.n_chunks == first.n_chunks

    new = docs(changed={2: "Desert beetles drink fog: they stand on dunes at dawn and let droplets run down."})
    new = [d for d in new if d.id != "doc-5"] + [Document("doc-9", "Kelp forests grow a foot a day in cold water.")]
    kb = KnowledgeBase("kb", new, source=str(tmp_path / "kb"))
    upd = retriever(kb, tiny_llama)
    upd.build()
    st = upd.last
    assert (st.added, st.changed, st.deleted) == (1, 1, 1) and not st.full
    assert st.chunks_embedded == 2 and st.chunks_deleted == 2 * per_doc  # doc-2 and doc-5 went, two one-chunk docs came
    assert upd.n_chunks == first.n_chunks - 2 * per_doc + 2
    assert upd.info()["index_update"]["changed"] == 1 and upd.info()["knowledge_update_s"] > 0
    assert upd.key != first.key and upd.collection_name == first.collection_name  # new content, same collection
    # what the updated index returns is what an index built from scratch on the new documents returns
    fresh = retriever(kb, tiny_llama, source=str(tmp_path / "elsewhere"))
    fresh.build()
    assert fresh.last.full and fresh.collection_name != upd.collection_name
    assert results(upd) == results(fresh)
    assert upd.retrieve(["What do desert beetles drink?"], 1)[0][0].text.startswith("Desert beetles drink fog")
    # a process still holding the earlier documents never answers from the updated index's passages
    with pytest.raises(UserError, match="updated to other documents by another process"):
        first.retrieve(QUESTIONS[:1], 2)


def test_reading_the_ids_alone_finds_what_reading_every_chunk_finds(tmp_path, tiny_llama):
    first = retriever(KnowledgeBase("kb", docs(), source=str(tmp_path / "kb")), tiny_llama)
    first.build()
    new = docs(changed={1: "Glacier ice flows downhill under its own weight."})
    new = [d for d in new if d.id != "doc-6"] + [Document("doc-8", "Salt marshes flood twice a day.")]
    upd = retriever(KnowledgeBase("kb", new, source=str(tmp_path / "kb")), tiny_llama)
    want = {d.id: doc_hash(d) for d in new}
    by_ids, n_ids = upd._scan(first._collection, settled=want, expect=first.n_chunks)
    by_meta, n_meta = upd._scan(first._collection)
    assert n_ids == n_meta == first.n_chunks
    assert {k: (v["hashes"], sorted(v["ids"])) for k, v in by_ids.items()} == \
           {k: (v["hashes"], sorted(v["ids"])) for k, v in by_meta.items()}
    assert sorted(upd._stale(by_ids, want)) == sorted(upd._stale(by_meta, want)) == ["doc-1", "doc-6"]
    assert upd._scan_ids(first._collection, want, first.n_chunks - 1) is None  # not the count recorded


def test_a_document_short_of_chunks_is_re_embedded_though_the_record_says_finished(tmp_path, tiny_llama):
    # what an update killed by an adaptbench that did not mark its collection 'updating' leaves
    first = retriever(KnowledgeBase("kb", docs(), source=str(tmp_path / "kb")), tiny_llama)
    first.build()
    col = first._collection
    col.delete(ids=col.get(where={"doc_id": "doc-3"})["ids"][-1:])
    kb = KnowledgeBase("kb", docs(changed={1: "Glacier ice flows downhill under its own weight."}),
                       source=str(tmp_path / "kb"))
    upd = retriever(kb, tiny_llama)
    upd.build()
    assert (upd.last.added, upd.last.changed, upd.last.deleted) == (0, 2, 0)  # doc-1, and doc-3 made whole
    fresh = retriever(kb, tiny_llama, source=str(tmp_path / "elsewhere"))
    fresh.build()
    assert upd.n_chunks == fresh.n_chunks and results(upd) == results(fresh)


def test_an_update_killed_halfway_is_finished_by_the_next(tmp_path, tiny_llama):
    kb = KnowledgeBase("kb", docs(), source=str(tmp_path / "kb"))
    r = retriever(kb, tiny_llama)
    r.build()
    full = results(r)
    col = r._collection
    # what a kill between Chroma calls leaves: some chunks of a changed document written, others of it
    # still old, and the collection's record of its content not yet moved on
    ids = col.get(where={"doc_id": "doc-3"})["ids"]
    col.delete(ids=ids[: len(ids) // 2])
    col.modify(metadata={**col.metadata, "kb_hash": "updating"})  # what _sync writes before its first change
    again = retriever(kb, tiny_llama)  # the same documents as before the update began: not taken as in step
    again.build()
    assert (again.last.added, again.last.changed, again.last.deleted) == (0, 1, 0)
    assert again.n_chunks == r.n_chunks and results(again) == full


def test_a_suites_hnsw_settings_build_their_own_collection(tmp_path, tiny_llama):
    kb = KnowledgeBase("kb", docs(), source=str(tmp_path / "kb"))
    plain = retriever(kb, tiny_llama)
    plain.build()
    dense_hnsw = HnswConfig(max_neighbors=32, ef_construction=200, ef_search=50)
    dense = retriever(kb, tiny_llama, hnsw=dense_hnsw)
    dense.build()
    # another graph: another collection, and answers keyed apart (Chroma keeps ef_search per collection)
    assert dense.collection_name != plain.collection_name and dense.key != plain.key and dense.last.full
    got = dense._collection.configuration["hnsw"]
    assert {k: got[k] for k in dense_hnsw.settings()} == dense_hnsw.settings()
    assert dense.info()["hnsw"] == dense_hnsw.settings() and plain.info()["hnsw"] == HnswConfig().settings()
    assert results(dense) == results(plain)  # eight documents: both graphs find the exact neighbours


def test_a_document_id_given_by_two_files_is_a_one_line_error(tmp_path):
    from toolkit.data.kb import read_knowledge_base

    (tmp_path / "a.md").write_text("one")
    (tmp_path / "a.txt").write_text("two")
    with pytest.raises(UserError, match="a.md and a.txt are both document 'a'"):
        read_knowledge_base(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    """A real Chroma server on loopback (the `chroma` command of the chromadb package)."""
    chroma = Path(sys.executable).parent / "chroma"
    if not chroma.exists() and not shutil.which("chroma"):
        pytest.skip("the chroma command of the chromadb package is not installed")
    port, path = free_port(), tmp_path_factory.mktemp("chroma-server")
    log = open(path / "server.log", "w")
    proc = subprocess.Popen([str(chroma if chroma.exists() else "chroma"), "run", "--path", str(path / "data"),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip(f"chroma run exited: {(path / 'server.log').read_text()[-500:]}")
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.skip("chroma run did not listen within 60 s")
    yield ChromaServerConfig(host="127.0.0.1", port=port)
    proc.terminate()
    proc.wait(timeout=30)


def test_a_chroma_server_returns_what_the_embedded_index_returns(tmp_path, tiny_llama, chroma_server):
    kb = KnowledgeBase("kb", docs(), source=str(tmp_path / "kb"))
    local = retriever(kb, tiny_llama)
    local.build()
    remote = retriever(kb, tiny_llama, server=chroma_server)
    remote.build()
    assert remote.info()["index_where"] == "chroma server" and remote.n_chunks == local.n_chunks
    assert results(remote) == results(local)
    # an update goes to the server incrementally too
    kb2 = KnowledgeBase("kb", docs(changed={0: "Tide pools hold anemones, crabs and sea stars at low tide."}),
                        source=str(tmp_path / "kb"))
    upd = retriever(kb2, tiny_llama, server=chroma_server)
    upd.build()
    assert (upd.last.added, upd.last.changed, upd.last.deleted) == (0, 1, 0)
    # a knowledge base of the same name from another folder gets a collection of its own
    other = retriever(KnowledgeBase("kb", docs(3), source=str(tmp_path / "other" / "kb")), tiny_llama,
                      server=chroma_server)
    other.build()
    assert other.collection_name != upd.collection_name and other.last.full
    assert results(retriever(kb2, tiny_llama, server=chroma_server)) == results(upd)


def test_the_suite_and_the_environment_pick_the_server_and_an_unreachable_one_is_one_line(tmp_path, tiny_llama):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "a.md").write_text("Tide pools hold anemones.")
    for split, q in (("train", "Where are tide pools?"), ("test", "What do tide pools hold?")):
        (tmp_path / f"{split}.jsonl").write_text(f'{{"question": "{q}", "answer": "anemones"}}\n')
    port = free_port()  # nothing listens there
    suite = {"name": "kbserver", "task": "qa", "instruction": "Answer.", "data": {"train": "train.jsonl", "test": "test.jsonl"},
             "knowledge_base": {"path": "kb", "chroma": {"host": "127.0.0.1", "port": port}},
             "generator": {"model": str(tiny_llama)}, "strategies": {"rag": {}}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    env = {**os.environ, "ADAPTBENCH_DATA_DIR": ""}
    cmd = [sys.executable, "-m", "toolkit.cli", "run", str(tmp_path / "suite.yaml"), "-q", "--no-data-check",
           "-o", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and f"cannot reach the Chroma server at http://127.0.0.1:{port}" in lines[0], r.stderr
    assert "knowledge_base.chroma" in lines[0] and not (tmp_path / "out").exists()
    # $ADAPTBENCH_CHROMA_URL does the same for a suite that names no server
    suite["knowledge_base"] = "kb"
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**env, "ADAPTBENCH_CHROMA_URL": f"http://127.0.0.1:{port}"})
    assert r.returncode == 2 and f"http://127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    for bad in ("localhost:8000", "ftp://h:1", "http://h:notaport", "http://user:secret@h:8000", "http://h:1/x"):
        with pytest.raises(UserError, match="ADAPTBENCH_CHROMA_URL"):
            os.environ["ADAPTBENCH_CHROMA_URL"] = bad
            try:
                retriever(KnowledgeBase("kb", docs(1)), tiny_llama)
            finally:
                del os.environ["ADAPTBENCH_CHROMA_URL"]
    # a header is `${CHROMA_...}` read from the environment; a literal secret or another service's key is refused
    for headers in ({"Authorization": "Bearer sk-literal"}, {"Authorization": "${OPENAI_API_KEY}"}):
        suite["knowledge_base"] = {"path": "kb", "chroma": {"host": "127.0.0.1", "port": port, "headers": headers}}
        (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
        assert r.returncode == 2 and "knowledge_base.chroma.headers" in r.stderr and "Traceback" not in r.stderr
        assert "sk-literal" not in r.stderr, r.stderr
    suite["knowledge_base"] = {"path": "kb", "chroma": {"host": "127.0.0.1", "port": port,
                                                        "headers": {"Authorization": "${CHROMA_TOKEN}"}}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**env, "CHROMA_TOKEN": "Bearer tok-123"})
    assert r.returncode == 2 and "cannot reach the Chroma server" in r.stderr and "tok-123" not in r.stderr


def test_serve_of_a_rag_arm_retrieves_from_the_chroma_server(tmp_path, talker, chroma_server, monkeypatch):
    from tests.conftest import write_mini_suite
    from tests.serving.test_serving import Served, samples
    from toolkit.harness import run_suite
    from toolkit.suites import load_suite

    suite = write_mini_suite(tmp_path)
    cfg = yaml.safe_load(suite.read_text())
    cfg["generator"].update(model=str(talker), dtype="float32")
    cfg["knowledge_base"] = {"path": "kb", "chroma": {"host": chroma_server.host, "port": chroma_server.port}}
    cfg["strategies"] = {"rag": cfg["strategies"]["rag"]}
    suite.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(tmp_path / "run-cache"))
    run, results = run_suite(load_suite(suite), out=tmp_path / "run")
    assert results.status == "success"
    rows = samples(run.path)
    assert rows and all(r["contexts"] for r in rows)
    # served from an empty cache: the passages can only come from the server's collection
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(tmp_path / "serve-cache"))
    with Served(run.path, {"rag": 1}, tmp_path / "serve.db") as s:
        c = s.client()
        for r in rows:
            out = c.chat.completions.create(model="rag", messages=[{"role": "user", "content": r["input"]}])
            assert out.choices[0].message.content == r["output"], r["id"]
            assert [p["doc_id"] for p in out.adaptbench["passages"]] == [p["doc_id"] for p in r["contexts"]]
    for cache in ("run-cache", "serve-cache"):
        assert not list((tmp_path / cache).rglob("chroma.sqlite3")), f"an embedded index was built in {cache}"
