"""zero_shot: the instruction and the question, nothing else."""

from __future__ import annotations

from strategies.base import Strategy
from toolkit.data import Query


class ZeroShot(Strategy):
    type = "zero_shot"

    def prompts(self, queries: list[Query]):
        return [self.messages(q.input) for q in queries], [[] for _ in queries]
