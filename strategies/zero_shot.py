"""zero_shot: the instruction and the question, nothing else."""

from __future__ import annotations

from strategies.base import Prediction, Strategy
from toolkit.data import Query


class ZeroShot(Strategy):
    type = "zero_shot"

    def answer(self, queries: list[Query]) -> list[Prediction]:
        prompts = [self.messages(q.input) for q in queries]
        return self.generate(self.ctx.base_generator(), prompts, queries)
