"""rag_finetune: the fine-tuned model answering with retrieved passages. It is
trained on prompts that include the passages retrieved for each training
question (RAFT-style), so it learns to read them, distractors included."""

from __future__ import annotations

from strategies.finetune import Finetune
from toolkit.chat import TrainItem
from toolkit.data import Example, Query
from toolkit.records import ArmInfo


class RagFinetune(Finetune):
    type = "rag_finetune"
    retrieves = True

    def prepare(self, train: list[Example], validation: list[Example]) -> None:
        self.retriever = self.res.retriever(self.config.chunk_size, self.config.chunk_overlap)
        self.retriever.build()
        super().prepare(train, validation)
        self.info = {**self.info, **self.retriever.info(),
                     "build_s": {"index": self.retriever.build_s, **self.info["build_s"]}}

    def restore(self, run_dir, info: ArmInfo, train: list[Example], validation: list[Example]) -> None:
        self.retriever = self.res.retriever(self.config.chunk_size, self.config.chunk_overlap)
        self.retriever.build()
        super().restore(run_dir, info, train, validation)

    def with_passages(self, questions: list[str]):
        """(prompts with the passages retrieved for each question, the passages)."""
        contexts = self.retriever.retrieve(questions, self.config.top_k)
        return [self.messages(q, passages=[p.text for p in c]) for q, c in zip(questions, contexts)], contexts

    def train_items(self, examples: list[Example]) -> list[TrainItem]:
        prompts, _ = self.with_passages([e.input for e in examples])
        return [TrainItem(m, e.target) for m, e in zip(prompts, examples)]

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "index": self.retriever.key}

    def prompts(self, queries: list[Query]):
        return self.with_passages([q.input for q in queries])
