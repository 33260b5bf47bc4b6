"""rag_finetune: the fine-tuned model answering with retrieved passages. It is
trained on prompts that include the passages retrieved for each training
question (RAFT-style), so it learns to read them, distractors included."""

from __future__ import annotations

from strategies.finetune import Finetune
from toolkit.data import Example, Query
from toolkit.training import TrainItem


class RagFinetune(Finetune):
    type = "rag_finetune"
    retrieves = True

    def prepare(self, train: list[Example], validation: list[Example]) -> None:
        self.retriever = self.ctx.retriever(self.config.chunk_size, self.config.chunk_overlap)
        self.retriever.build()
        super().prepare(train, validation)
        self.info = {**self.info, "index_key": self.retriever.key, "chunks": self.retriever.n_chunks,
                     "build_s": {"index": self.retriever.build_s, **self.info["build_s"]}}

    def train_items(self, examples: list[Example]) -> list[TrainItem]:
        prompts, _ = self.retriever.prompts(self, [e.input for e in examples], self.config.top_k)
        return [TrainItem(m, e.target) for m, e in zip(prompts, examples)]

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "index": self.retriever.key}

    def prompts(self, queries: list[Query]):
        return self.retriever.prompts(self, [q.input for q in queries], self.config.top_k)
