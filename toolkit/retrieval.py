"""Retrieval: a llama-index VectorStoreIndex over a persistent Chroma collection,
one collection per (knowledge base content, embedder, chunking) key."""

from __future__ import annotations

import json
import shutil
import time

from toolkit.cache import cache_root, content_hash, locked
from toolkit.config import EmbedderConfig
from toolkit.data import Passage
from toolkit.data.kb import KnowledgeBase
from toolkit.models import embed, load_embedder, load_tokenizer, resolve_embedder
from toolkit.progress import task_bar
from toolkit.runs import atomic_write
from toolkit.training.distributed import main_first

INDEX_FORMAT = 1  # bump when the way chunks are built changes


class Retriever:
    def __init__(self, kb: KnowledgeBase, embedder: EmbedderConfig, *, chunk_size: int, chunk_overlap: int,
                 tokenizer_path: str, tokenizer_key: str):
        self.kb, self.embedder = kb, embedder
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap
        self.tokenizer_path = tokenizer_path
        self.key = content_hash({"kb": kb.content_hash, "embedder": resolve_embedder(embedder.model).fingerprint,
                                 "chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
                                 "tokenizer": tokenizer_key,
                                 "format": INDEX_FORMAT})
        self.folder = cache_root() / "indexes" / self.key
        self._store = None
        self.built_now = False
        self.n_chunks = 0
        self.build_s = 0.0  # time the index took to build, when it was built (cached ones too)

    def build(self) -> None:
        """Open the cached collection, or chunk, embed and index the knowledge base."""
        with main_first():  # several processes: the first builds, the others open it
            self._build()

    def _build(self) -> None:
        # chromadb, llama-index, httpx: imported on first use, not when this module loads
        import chromadb
        from chromadb.config import Settings
        from llama_index.vector_stores.chroma import ChromaVectorStore

        done = self.folder / "done.json"
        if not done.exists():
            with locked(self.folder):  # concurrent runs on one cache: one builds, the others wait
                if not done.exists():
                    self._index()
        # Chroma initialises its SQLite schema when a client opens a folder: one process at a time
        with locked(self.folder):
            client = chromadb.PersistentClient(path=str(self.folder), settings=Settings(anonymized_telemetry=False))
            collection = client.get_collection("knowledge_base")
        self._store = ChromaVectorStore(chroma_collection=collection)
        meta = json.loads(done.read_text())
        self.n_chunks, self.build_s = meta["chunks"], meta["build_s"]

    def _index(self) -> None:
        """Chunk, embed and index the knowledge base into the folder; done.json, written last,
        publishes it (a folder without it is a build that did not finish, and is redone)."""
        # chromadb, llama-index, httpx: imported on first use, not when this module loads
        import chromadb
        from chromadb.config import Settings
        from llama_index.core import Document, StorageContext, VectorStoreIndex
        from llama_index.core.node_parser import SentenceSplitter
        from llama_index.vector_stores.chroma import ChromaVectorStore

        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        client = chromadb.PersistentClient(path=str(self.folder), settings=Settings(anonymized_telemetry=False))
        collection = client.get_or_create_collection("knowledge_base", metadata={"hnsw:space": "cosine"})
        store = ChromaVectorStore(chroma_collection=collection)

        tok = load_tokenizer(self.tokenizer_path)
        # Chunk sizes count generator tokens: that is the budget the passages spend in the prompt.
        splitter = SentenceSplitter(chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap,
                                    tokenizer=lambda t: tok(t, add_special_tokens=False)["input_ids"])
        docs = [Document(text=d.text, id_=d.id, metadata={"doc_id": d.id},
                         excluded_embed_metadata_keys=["doc_id"], excluded_llm_metadata_keys=["doc_id"])
                for d in self.kb.documents]
        nodes = splitter.get_nodes_from_documents(docs)
        # Embedded here in batches (not inside VectorStoreIndex) to drive a progress bar;
        # the index skips nodes that already carry an embedding.
        model = load_embedder(self.embedder.model, self.embedder.batch_size)
        bs = self.embedder.batch_size
        with task_bar(f"Indexing {len(nodes)} chunks of {len(docs)} documents", len(nodes)) as advance:
            for i in range(0, len(nodes), bs):
                batch = nodes[i:i + bs]
                vecs = embed(self.embedder.model, [n.get_content(metadata_mode="embed") for n in batch], bs)
                for n, v in zip(batch, vecs):
                    n.embedding = v.tolist()
                advance(len(batch))
        VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=model)
        self.built_now = True
        atomic_write(self.folder / "done.json", json.dumps(
            {"chunks": len(nodes), "documents": len(docs), "build_s": time.perf_counter() - t0}))

    def retrieve(self, questions: list[str], top_k: int):
        """Top-k passages per question, best first, as strategies.base.Passage."""
        # llama-index, numpy, jinja2: imported on first use, not when this module loads
        from llama_index.core.vector_stores import VectorStoreQuery


        if self._store is None:
            self.build()
        vecs = embed(self.embedder.model, questions, self.embedder.batch_size)
        out = []
        for v in vecs:
            res = self._store.query(VectorStoreQuery(query_embedding=v.tolist(), similarity_top_k=top_k))
            sims = res.similarities or [0.0] * len(res.nodes)
            out.append([Passage(doc_id=n.metadata.get("doc_id") or n.ref_doc_id, text=n.get_content(), score=float(s))
                        for n, s in zip(res.nodes, sims)])
        return out
