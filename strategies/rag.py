"""rag: passages retrieved from the knowledge base (chunked by llama-index, searched in Chroma) in
the prompt; their document ids are recorded with every answer."""

from __future__ import annotations

from strategies.base import Strategy
from toolkit.data import Example, Query


class Rag(Strategy):
    type = "rag"
    retrieves = True

    def prepare(self, train: list[Example], validation: list[Example]) -> None:
        self.retriever = self.res.retriever(self.config.chunk_size, self.config.chunk_overlap)
        self.retriever.build()
        self.info = {**self.retriever.info(), "build_s": {"index": self.retriever.build_s}}

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "index": self.retriever.key}

    def prompts(self, queries: list[Query]):
        contexts = self.retriever.retrieve([q.input for q in queries], self.config.top_k)
        return [self.messages(q.input, passages=[p.text for p in c]) for q, c in zip(queries, contexts)], contexts
