"""few_shot: k solved train examples before the question, chosen by embedding
similarity to the question (or at random), within a prompt token budget."""

from __future__ import annotations

import random
import time

from strategies.base import Strategy
from toolkit.data import Example, Query
from toolkit.models import embed, resolve_embedder


class FewShot(Strategy):
    type = "few_shot"

    def prepare(self, train: list[Example], validation: list[Example]) -> None:
        self.pool = train
        self.pool_vecs = None
        t0 = time.perf_counter()
        if self.config.selection == "similarity":
            self.pool_vecs = embed(self.res.suite.embedder.model, [e.input for e in train],
                                   self.res.suite.embedder.batch_size)
        self.info = {"pool_size": len(train), "build_s": {"embed_pool": time.perf_counter() - t0}}
        self._dropped: dict[str, int] = {}  # question id -> examples dropped to fit max_prompt_tokens

    def fingerprint(self) -> dict:
        fp = super().fingerprint()
        fp["pool"] = sorted((e.id, e.input, e.target) for e in self.pool)
        fp["embedder"] = resolve_embedder(self.res.suite.embedder.model).fingerprint
        fp["seed"] = self.res.suite.seed
        return fp

    def choose(self, queries: list[Query]) -> list[list[Example]]:
        k = min(self.config.num_fewshot, len(self.pool))
        if self.config.selection == "random":
            return [random.Random(f"{self.res.suite.seed}:{q.id}").sample(self.pool, k) for q in queries]
        qv = embed(self.res.suite.embedder.model, [q.input for q in queries], self.res.suite.embedder.batch_size)
        sims = qv @ self.pool_vecs.T
        # most similar last: nearest to the question in the prompt
        return [[self.pool[j] for j in reversed(row.argsort()[::-1][:k].tolist())] for row in sims]

    def prompts(self, queries: list[Query]):
        be = self.backend()
        prompts = []
        for q, shots in zip(queries, self.choose(queries)):
            pairs = [(e.input, e.target) for e in shots]
            msgs = self.messages(q.input, shots=pairs)
            while len(pairs) > 0 and be.count_tokens(msgs) > self.config.max_prompt_tokens:
                pairs = pairs[1:]  # drop the least similar (first) example
                msgs = self.messages(q.input, shots=pairs)
            prompts.append(msgs)
            if hasattr(self, "_dropped"):  # counted once per question, however often it is asked
                self._dropped[q.id] = len(shots) - len(pairs)
        if getattr(self, "_dropped", None) is not None:
            self.info["prompts_over_budget"] = sum(1 for n in self._dropped.values() if n)
            self.info["shots_dropped"] = sum(self._dropped.values())
        return prompts, [[] for _ in queries]
