"""Retrieval: the knowledge base's chunks in a Chroma collection, embedded here, kept in step
with the documents incrementally, and searched by Chroma's HNSW index.

One collection per knowledge-base *source* (its folder or loader) and indexing settings
(embedder, chunking, tokenizer), either in a folder of the cache (Chroma embedded) or on a
Chroma server (`knowledge_base: {path: ..., chroma: {host: ...}}` or $ADAPTBENCH_CHROMA_URL).
Every chunk carries its document's id and a hash of the document's text; the collection's
metadata records the content hash of the knowledge base it holds. Opening the collection for
a knowledge base whose hash differs compares the chunks with the documents and re-embeds only
what was added or changed (and deletes the chunks of changed or deleted documents), so a
knowledge base that changes a document a day costs that document's chunks, not a rebuild.
The comparison reads what the collection holds, not a separate record of it, so an update that
was killed halfway is finished by the next one. Chunk ids are the document's hash and the chunk's
number, so in an embedded index whose last update finished (and holds the chunk count it recorded)
the comparison reads the ids alone, a hundredth of the time of reading every chunk's metadata.
After an interrupted update, and on a Chroma server (where another machine may be writing
meanwhile), it reads every chunk's metadata, which tells a document left with some of its chunks.

llama-index's SentenceSplitter cuts the chunks (counting generator tokens, the budget the
passages spend in the prompt); adding, deleting and querying go to the chromadb client itself,
which batches queries and deletes by id (llama-index's ChromaVectorStore wraps the same calls
one query at a time and has no delete by chunk id)."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from toolkit.cache import cache_root, content_hash, locked
from toolkit.config import ChromaServerConfig, EmbedderConfig, HnswConfig
from toolkit.data import Passage
from toolkit.data.kb import Document, KnowledgeBase
from toolkit.errors import UserError
from toolkit.models import embed, load_embedder, load_tokenizer, resolve_embedder
from toolkit.progress import task_bar
from toolkit.training.distributed import main_first

INDEX_FORMAT = 2  # bump when the way chunks are built or stored changes
DOCS_PER_BATCH = 256  # documents chunked at a time: memory stays within one batch of chunks
ADD_BATCH = 512  # chunks per call to Chroma's add
GET_BATCH = 5000  # chunk records per call when the collection is compared with the documents
# pages of chunk records in flight at once from a Chroma server: it reads one while this process
# decodes another (100,475 chunks' metadata: 8.2 s one page at a time, 4.9 s with two, no faster
# with four; loopback server on a 2-core AMD EPYC)
SERVER_READERS = 2


def doc_hash(d: Document) -> str:
    return hashlib.sha256(d.id.encode() + b"\x00" + d.text.encode()).hexdigest()[:16]


def chroma_server(cfg: ChromaServerConfig | None) -> ChromaServerConfig | None:
    """The suite's Chroma server, or the one $ADAPTBENCH_CHROMA_URL names, or None (embedded)."""
    if cfg is not None:
        return cfg
    url = os.environ.get("ADAPTBENCH_CHROMA_URL")
    if not url:
        return None
    u = urlsplit(url)
    try:
        port = u.port or (443 if u.scheme == "https" else 8000)
    except ValueError:
        port = None
    # the address is not echoed: it may carry credentials
    if u.scheme not in ("http", "https") or not u.hostname or port is None or u.username or u.password \
            or u.path not in ("", "/") or u.query or u.fragment:
        raise UserError("is not an http(s)://HOST:PORT address (no user, password or path; a token goes in "
                        "knowledge_base.chroma.headers)", field="ADAPTBENCH_CHROMA_URL")
    return ChromaServerConfig(host=u.hostname, port=port, ssl=u.scheme == "https")


def server_url(s: ChromaServerConfig) -> str:
    return f"{'https' if s.ssl else 'http'}://{s.host}:{s.port}"


def connect(s: ChromaServerConfig):
    """A chromadb.HttpClient of the server that has answered its heartbeat."""
    # chromadb: imported on first use, not when this module loads
    import chromadb
    from chromadb.config import Settings

    headers, secrets = {}, []
    for k, v in s.headers.items():  # `${NAME}` (checked by the config): a secret kept out of the suite file
        name = v[2:-1]
        value = os.environ.get(name)
        if not value:
            raise UserError(f"environment variable {name} is not set", field=f"knowledge_base.chroma.headers.{k}")
        if "\r" in value or "\n" in value:
            raise UserError(f"environment variable {name} holds a line break", field=f"knowledge_base.chroma.headers.{k}")
        headers[k] = value
        secrets.append(value)
    try:
        client = chromadb.HttpClient(host=s.host, port=s.port, ssl=s.ssl, headers=headers,
                                     settings=Settings(anonymized_telemetry=False))
        client.heartbeat()
    except Exception as e:  # refused, unresolvable, TLS, bad token: one line, before any arm runs
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        for secret in secrets:  # an error quoting a header must not print it
            first = first.replace(secret, "***")
        raise UserError(f"cannot reach the Chroma server at {server_url(s)}: {first}",
                        field="knowledge_base.chroma") from None
    return client


@dataclass
class SyncStats:
    """What one comparison of the collection with the documents did, and what it cost."""
    added: int = 0  # documents new to the collection
    changed: int = 0
    deleted: int = 0
    chunks_embedded: int = 0
    chunks_deleted: int = 0
    compare_s: float = 0.0  # reading the collection's chunk records and comparing
    embed_s: float = 0.0
    write_s: float = 0.0  # Chroma add and delete
    total_s: float = 0.0
    full: bool = False  # the collection was empty: a full build

    @property
    def touched(self) -> int:
        return self.added + self.changed + self.deleted

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Retriever:
    kb: KnowledgeBase
    embedder: EmbedderConfig
    chunk_size: int
    chunk_overlap: int
    tokenizer_path: str
    tokenizer_key: str
    source: str = ""  # where the documents come from (folder, loader): which collection they keep in step
    server: ChromaServerConfig | None = None
    hnsw: HnswConfig = field(default_factory=HnswConfig)
    built_now: bool = False
    n_chunks: int = 0
    build_s: float = 0.0  # seconds the last full build took (an index built before: as it recorded)
    last: SyncStats | None = None  # what opening it did this time
    record: dict[str, Any] = field(default_factory=dict)  # the collection's metadata after opening
    _collection: Any = None
    _client: Any = None

    def __post_init__(self) -> None:
        self.server = chroma_server(self.server)
        settings = {"embedder": resolve_embedder(self.embedder.model).fingerprint, "chunk_size": self.chunk_size,
                    "chunk_overlap": self.chunk_overlap, "tokenizer": self.tokenizer_key, "format": INDEX_FORMAT,
                    "hnsw": self.hnsw.settings()}
        lineage = content_hash({"source": self.source or self.kb.name, **settings})
        self.collection_name = f"adaptbench-{lineage}"
        # what the answers depend on: the settings and the documents' content (not where they are kept)
        self.key = content_hash({"kb": self.kb.content_hash, **settings})
        self.folder = cache_root() / "indexes" / lineage  # embedded: the Chroma folder; server: its lock

    # -- opening and keeping in step ---------------------------------------------------------

    def where(self) -> str:
        return server_url(self.server) if self.server else str(self.folder)

    def client(self):
        if self.server is None:
            # chromadb: imported on first use, not when this module loads
            import chromadb
            from chromadb.config import Settings
            return chromadb.PersistentClient(path=str(self.folder), settings=Settings(anonymized_telemetry=False))
        return connect(self.server)

    def build(self) -> None:
        """Open the collection and bring it in step with the documents (a full build when empty)."""
        with main_first():  # several processes: the first builds, the others open it
            # one process of this machine at a time (Chroma initialises its SQLite schema when a client
            # opens a folder); on a server, other machines' updates are idempotent (ids are by content)
            with locked(self.folder):
                self._open()

    def _open(self) -> None:
        client = self.client()
        col = client.get_or_create_collection(self.collection_name, configuration={"hnsw": self.hnsw.settings()},
                                              metadata={"adaptbench_format": INDEX_FORMAT})
        meta = dict(col.metadata or {})
        if meta.get("kb_hash") != self.kb.content_hash:
            self.last = self._sync(col, meta)
            self.built_now = self.last.touched > 0
            meta = self._record(col, meta, self.last)
        self._client, self._collection, self.record = client, col, meta
        self.n_chunks = int(meta.get("chunks", 0))
        self.build_s = float(meta.get("build_s", 0.0))

    def _record(self, col, meta: dict, st: SyncStats) -> dict:
        """The collection's metadata after a sync: the content it holds and what keeping it cost."""
        new = {**meta, "adaptbench_format": INDEX_FORMAT, "kb_hash": self.kb.content_hash,
               "kb_name": self.kb.name[:200], "documents": len(self.kb.documents), "chunks": col.count()}
        if st.full:
            new["build_s"] = round(st.total_s, 4)
        if st.touched:
            new.update({"update_s": round(st.total_s, 4), "update_documents": st.touched, "update_full": st.full,
                        "compare_s": round(st.compare_s, 4),
                        "chunks_per_document": round(new["chunks"] / max(len(self.kb.documents), 1), 3)})
        if st.chunks_embedded:  # the rate of re-embedding and writing a chunk, from what was embedded
            new["s_per_chunk"] = round((st.embed_s + st.write_s) / st.chunks_embedded, 6)
        col.modify(metadata=new)
        return new

    def _scan(self, col, settled: dict[str, str] | None = None,
              expect: int | None = None) -> tuple[dict[str, dict[str, Any]], int]:
        """doc id -> {"hashes", "ids", "n"} of the collection's chunks, and how many it read.

        settled: the wanted documents (id -> hash) when the last update of this embedded collection
        finished, so every document in it has all its chunks; then only the ids are read
        (`{doc hash}-{chunk}`), if there are as many as that update recorded (`expect`), and the
        metadata only of chunks whose hash is no wanted document's, to learn whose they are."""
        if settled is not None and (got := self._scan_ids(col, settled, expect)) is not None:
            return got
        have: dict[str, dict[str, Any]] = {}
        total, seen = col.count(), 0
        page = lambda off: col.get(include=["metadatas"], limit=GET_BATCH, offset=off)  # noqa: E731
        offsets = range(0, total, GET_BATCH)
        with ThreadPoolExecutor(SERVER_READERS) as pool:
            for got in pool.map(page, offsets) if self.server else map(page, offsets):
                for cid, m in zip(got["ids"], got["metadatas"]):
                    m = m or {}
                    h = have.setdefault(str(m.get("doc_id")), {"hashes": set(), "ids": [], "n": m.get("chunks")})
                    h["hashes"].add(m.get("doc_hash"))
                    h["ids"].append(cid)
                    seen += 1
        return have, seen

    def _scan_ids(self, col, want: dict[str, str],
                  expect: int | None) -> tuple[dict[str, dict[str, Any]], int] | None:
        # ids only: Chroma returns them without decoding any metadata (one call; ~20 bytes each)
        all_ids = col.get(include=[])["ids"]
        if expect is None or len(all_ids) != expect:  # not what the finished update left: read the metadata
            return None
        by_hash: dict[str, list[str]] = {}
        for cid in all_ids:
            by_hash.setdefault(cid.rsplit("-", 1)[0], []).append(cid)
        wanted = {h: i for i, h in want.items()}
        have: dict[str, dict[str, Any]] = {}
        for h, chunk_ids in by_hash.items():
            if h in wanted:
                have[wanted[h]] = {"hashes": {h}, "ids": chunk_ids, "n": len(chunk_ids)}
        gone = [chunk_ids[0] for h, chunk_ids in by_hash.items() if h not in wanted]
        for off in range(0, len(gone), GET_BATCH):
            got = col.get(ids=gone[off:off + GET_BATCH], include=["metadatas"])
            for cid, m in zip(got["ids"], got["metadatas"]):
                m, h = m or {}, cid.rsplit("-", 1)[0]
                e = have.setdefault(str(m.get("doc_id")), {"hashes": set(), "ids": [], "n": None})
                e["hashes"].add(h)
                e["ids"] += by_hash[h]
        return have, expect

    def _stale(self, have: dict[str, dict[str, Any]], want: dict[str, str]) -> list[str]:
        """Documents not in step: gone, of another text, or missing some of their chunks."""
        return [i for i, h in have.items() if i not in want or h["hashes"] != {want[i]} or h["n"] != len(h["ids"])]

    def _sync(self, col, meta: dict) -> SyncStats:
        """Compare the collection's chunks with the documents; delete the chunks of changed and
        deleted documents and embed and add those of new and changed ones. The collection's record
        of its content is cleared first, so an update killed halfway is never taken for finished,
        and it is checked afterwards (another writer may have moved it meanwhile) and redone."""
        st = SyncStats()
        t0 = time.perf_counter()
        want = {d.id: doc_hash(d) for d in self.kb.documents}
        # the last update finished (its record names the content it left) and nobody else writes here
        # (embedded: one process of this machine at a time, under the folder's lock): every document
        # has all its chunks
        settled = self.server is None and meta.get("kb_hash") not in (None, "updating")
        for attempt in range(3):
            have, seen = self._scan(col, settled=want if settled and attempt == 0 else None, expect=meta.get("chunks"))
            st.full = st.full or (attempt == 0 and seen == 0)
            stale = self._stale(have, want)
            redo = set(stale)
            todo = [d for d in self.kb.documents if d.id not in have or d.id in redo]
            if attempt == 0:
                st.compare_s = time.perf_counter() - t0
                st.deleted = sum(1 for i in stale if i not in want)
                st.changed = len(stale) - st.deleted
                st.added = len(todo) - st.changed
            if not todo and not stale:
                break
            if meta.get("kb_hash") is not None:
                meta = {**meta, "kb_hash": "updating"}
                col.modify(metadata=meta)
            ids = [c for i in stale for c in have[i]["ids"]]
            t1 = time.perf_counter()
            for off in range(0, len(ids), ADD_BATCH):
                col.delete(ids=ids[off:off + ADD_BATCH])
            st.chunks_deleted += len(ids)
            st.write_s += time.perf_counter() - t1
            added = st.chunks_embedded
            if todo:
                self._add(col, todo, st)
            kept = sum(len(h["ids"]) for i, h in have.items() if i not in redo)
            if col.count() == kept + st.chunks_embedded - added:  # nobody else wrote meanwhile: settled
                break
        else:
            raise UserError(f"the index {self.collection_name} at {self.where()} did not settle after 3 updates: "
                            "another process is updating it with other documents", field="knowledge_base")
        if st.full:  # what comparing a collection of this size costs, for the one-document estimate
            t1 = time.perf_counter()
            self._scan(col, settled=want if self.server is None else None, expect=col.count())
            st.compare_s = time.perf_counter() - t1
        st.total_s = time.perf_counter() - t0
        return st

    def _add(self, col, docs: list[Document], st: SyncStats) -> None:
        # llama-index: imported on first use, not when this module loads
        from llama_index.core import Document as LIDocument
        from llama_index.core.node_parser import SentenceSplitter

        tok = load_tokenizer(self.tokenizer_path)
        load_embedder(self.embedder.model, self.embedder.batch_size)  # loaded before the rates are timed
        # the splitter counts the tokens of every sentence: the Rust tokenizer's own encode skips the
        # per-call BatchEncoding of the transformers wrapper (a third of the chunking time), same ids
        fast = getattr(tok, "backend_tokenizer", None)
        count = ((lambda t: fast.encode(t, add_special_tokens=False).ids) if fast is not None
                 else (lambda t: tok(t, add_special_tokens=False)["input_ids"]))
        splitter = SentenceSplitter(chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap, tokenizer=count)
        what = "Indexing" if st.full else "Updating the index:"
        with task_bar(f"{what} {len(docs)} documents", len(docs)) as advance:
            for off in range(0, len(docs), DOCS_PER_BATCH):
                batch = docs[off:off + DOCS_PER_BATCH]
                chunks: dict[str, list[str]] = {str(k): [] for k in range(len(batch))}
                for n in splitter.get_nodes_from_documents([LIDocument(text=d.text, id_=str(k))
                                                            for k, d in enumerate(batch)]):
                    chunks[n.ref_doc_id].append(n.get_content())
                rows: list[tuple[str, str, dict]] = []
                for k, d in enumerate(batch):
                    h, texts = doc_hash(d), chunks[str(k)]
                    rows += [(f"{h}-{i}", t, {"doc_id": d.id, "doc_hash": h, "chunk": i, "chunks": len(texts)})
                             for i, t in enumerate(texts)]
                for j in range(0, len(rows), ADD_BATCH):
                    part = rows[j:j + ADD_BATCH]
                    t0 = time.perf_counter()
                    vecs = embed(self.embedder.model, [t for _, t, _ in part], self.embedder.batch_size)
                    t1 = time.perf_counter()
                    # upsert: another machine updating the same server collection writes the same ids
                    col.upsert(ids=[i for i, _, _ in part], embeddings=vecs, documents=[t for _, t, _ in part],
                               metadatas=[m for _, _, m in part])
                    st.embed_s += t1 - t0
                    st.write_s += time.perf_counter() - t1
                    st.chunks_embedded += len(part)
                advance(len(batch))

    def one_document_update_s(self) -> float | None:
        """Seconds to absorb one changed document: comparing the collection with the documents,
        then deleting and re-embedding a document's worth of chunks, at the rates the last
        build or update of this collection measured."""
        r = self.record
        if "s_per_chunk" not in r:
            return None
        return float(r.get("compare_s", 0.0)) + float(r["s_per_chunk"]) * max(float(r.get("chunks_per_document", 1)), 1.0)

    def info(self) -> dict[str, Any]:
        """What the report and the decision read about the index."""
        r = self.record
        out = {"index_key": self.key, "chunks": self.n_chunks, "index_cached": not self.built_now,
               "index_where": "chroma server" if self.server else "embedded",
               "index_collection": self.collection_name, "hnsw": self.hnsw.settings()}
        one = self.one_document_update_s()
        if one is not None:
            out["knowledge_update_s"] = round(one, 4)
        if self.last is not None and self.last.touched and not self.last.full:
            out["index_update"] = self.last.as_dict()
        elif r.get("update_documents") and not r.get("update_full"):
            out["index_update"] = {"total_s": r.get("update_s"), "documents": r.get("update_documents"),
                                   "recorded": True}
        return out

    # -- searching ---------------------------------------------------------------------------

    def retrieve(self, questions: list[str], top_k: int) -> list[list[Passage]]:
        """Top-k passages per question, best first."""
        if self._collection is None:
            self.build()
        if not questions:
            return []
        vecs = embed(self.embedder.model, questions, self.embedder.batch_size)
        found = self.search(vecs, top_k)
        # read after the search: an update by another process marks the collection before its first change,
        # so passages of other documents than the run's (or of an update halfway) are never returned
        now = (self._client.get_collection(self.collection_name).metadata or {}).get("kb_hash")
        if now != self.kb.content_hash:
            raise UserError(f"the index {self.collection_name} at {self.where()} was updated to other documents by "
                            "another process while this one used it; run again (or give each its own copy of "
                            "the documents)", field="knowledge_base")
        return found

    def search(self, vecs, top_k: int) -> list[list[Passage]]:
        """Top-k passages for query embeddings (no embedding here: what the benchmark times)."""
        res = self._collection.query(query_embeddings=vecs, n_results=top_k,
                                     include=["documents", "metadatas", "distances"])
        return [[Passage(doc_id=str((m or {}).get("doc_id")), text=t, score=1.0 - float(d))
                 for t, m, d in zip(docs, metas, dists)]
                for docs, metas, dists in zip(res["documents"], res["metadatas"], res["distances"])]
