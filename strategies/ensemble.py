"""ensemble: several arms' answers to the same question, combined. The members answer first
(in the run, through the request cache); the ensemble only combines what they answered, so
it costs no model call of its own, except `best_of`, which scores each member's answer under
a zero-shot prompt.

Label tasks vote on the labels the answers map to (`Resources.label_of`, the scorer's
mapping); QA votes on SQuAD-normalised answers (`Resources.answer_key`), the way
self-consistency votes on sampled answers. Ties go to the member listed first."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from strategies.base import Strategy
from toolkit.data import Prediction, Query


class Ensemble(Strategy):
    type = "ensemble"
    scores_likelihood = False  # its answers come from several prompts: there is no one prompt to score gold under

    def prompts(self, queries: list[Query]):
        """The zero-shot prompt best_of scores the members' answers under."""
        return [self.messages(q.input) for q in queries], [[] for _ in queries]

    def combine(self, queries: list[Query], answers: dict[str, dict[str, Prediction]]) -> list[Prediction]:
        """One combined Prediction per query from `answers` (member -> query id -> its
        Prediction). Tokens, latency and compute are the members' sums: answering one question
        means asking every member."""
        members = self.config.members
        method = self.config.method
        picked: dict[str, int] = defaultdict(int)
        extra_s = np.zeros(len(queries))
        if method == "best_of":
            chosen, extra_s = self._best_of(queries, answers)
        out = []
        for i, q in enumerate(queries):
            got = [answers[m][q.id] for m in members]
            if method == "best_of":
                k = chosen[i]
                output, probs = got[k].output, {}
            elif method == "likelihood_mean":
                k, output, probs = self._soft_vote(got)
            else:
                k, output = self._vote(got)
                probs = {}
            picked[members[k]] += 1
            out.append(Prediction(
                id=q.id, output=output, label_probs=probs,
                prompt_tokens=sum(p.prompt_tokens for p in got), completion_tokens=sum(p.completion_tokens for p in got),
                latency_s=sum(p.latency_s for p in got) + float(extra_s[i]),
                compute_s=sum(p.compute_s for p in got) + float(extra_s[i]), cached=all(p.cached for p in got)))
        self.info.update(members=list(members), ensemble_method=method,
                         member_weights={m: self.config.weight(m) for m in members},
                         answers_taken={m: picked.get(m, 0) for m in members})
        return out

    def _key(self, output: str) -> str | None:
        return self.res.label_of(output) if self.res.labels else self.res.answer_key(output)

    def _vote(self, got: list[Prediction]) -> tuple[int, str]:
        """(index of the member whose answer wins, the answer). An answer that maps to no
        label (or normalises to nothing) casts no vote; if none does, the first member's."""
        totals: dict[str, float] = defaultdict(float)
        first: dict[str, int] = {}
        for k, (m, p) in enumerate(zip(self.config.members, got)):
            key = self._key(p.output)
            if key:
                totals[key] += self.config.weight(m) if self.config.method == "weighted" else 1.0
                first.setdefault(key, k)
        if not totals:
            return 0, got[0].output
        best = max(totals, key=lambda key: (totals[key], -first[key]))
        k = first[best]
        return k, (best if self.res.labels else got[k].output)

    def _soft_vote(self, got: list[Prediction]) -> tuple[int, str, dict[str, float]]:
        """The label with the highest weighted mean probability, and the mean probabilities."""
        members = self.config.members
        if missing := [m for m, p in zip(members, got) if not p.label_probs]:
            raise RuntimeError(f"likelihood_mean needs each member's label probabilities; {missing[0]} has none "
                               "(set classification_mode: likelihood)")
        w = np.array([self.config.weight(m) for m in members])
        labels = [lab for lab in self.res.labels if any(lab in p.label_probs for p in got)]
        mean = {lab: float(sum(wi * p.label_probs.get(lab, 0.0) for wi, p in zip(w, got)) / w.sum()) for lab in labels}
        best = max(labels, key=lambda lab: (mean[lab], -labels.index(lab)))
        k = next((i for i, p in enumerate(got) if self.res.label_of(p.output) == best), 0)
        return k, best, {lab: round(v, 6) for lab, v in mean.items()}

    def _best_of(self, queries: list[Query], answers: dict[str, dict[str, Prediction]]) -> tuple[list[int], np.ndarray]:
        """Each query's member whose answer has the lowest negative log-likelihood per token
        under the arm's generator (zero-shot prompt), and the seconds that scoring took per query."""
        members = self.config.members
        t0 = time.perf_counter()
        per_token = np.full((len(queries), len(members)), np.inf)
        for j, m in enumerate(members):
            got = self.loglikelihood(queries, [answers[m][q.id].output for q in queries])
            per_token[:, j] = [g.nll / g.tokens if g.tokens else np.inf for g in got]
        seconds = (time.perf_counter() - t0) / max(1, len(queries))
        return [int(np.argmin(row)) for row in per_token], np.full(len(queries), seconds)
