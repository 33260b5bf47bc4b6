"""The strategy protocol: `prepare` does the expensive, cacheable work once; `prompts`
turns queries into chat prompts; `answer` sends them to the arm's backend.

A strategy sees the train and validation splits and the knowledge base, and of the test
split only `Query` objects (id and input): never a gold answer, label or gold document.
Shared resources (backends, retrievers, judge, cache) belong to the harness and reach the
strategy as `toolkit.resources.Resources`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from toolkit.backends import GenRequest, LLRequest, Settings
from toolkit.config import arm_generator
from toolkit.data import Example, Passage, Prediction, Query
from toolkit.prompts import build_messages
from toolkit.records import ArmInfo

if TYPE_CHECKING:  # the harness hands it over; strategies sit below the harness
    from toolkit.resources import Resources


class Strategy(ABC):
    """Base class. Subclasses set `type` and implement `prompts`; those that build or train
    something override `prepare` and, if they answer with their own model, `backend`."""

    type: ClassVar[str]
    trains: ClassVar[bool] = False      # prepare() trains weights
    retrieves: ClassVar[bool] = False   # predictions carry retrieved passages
    scores_likelihood: ClassVar[bool] = True  # can score given answers (perplexity)

    def __init__(self, name: str, config: Any, res: Resources):
        self.name, self.config, self.res = name, config, res
        self.gen_cfg = arm_generator(res.suite.generator, config.generator)
        self.settings = Settings.of(self.gen_cfg)
        self.info: dict[str, Any] = {}  # what prepare() did, for results.json (cached?, sizes...)
        self._prompt_memo: dict[str, tuple[list[dict], list[Passage]]] = {}

    def backend(self):
        """The backend that answers (the arm's generator; trained arms: with their adapter)."""
        return self.res.backend(self.gen_cfg)

    def base_backend(self):
        """The generator without anything this arm trained."""
        return self.res.backend(self.gen_cfg)

    def fingerprint(self) -> dict[str, Any]:
        """What this arm is, for results.json: its settings, the model that answers, generation
        settings (called after prepare). Caching is per request (toolkit.backends.cache)."""
        s = self.res.suite
        return {"type": self.type, "config": self.config.model_dump(exclude={"ray"}), "task": s.task,
                "classification_mode": s.classification_mode, "instruction": s.instruction,
                "labels": self.res.labels, "model": self.backend().identity(), "generation": self.settings.to_dict()}

    def prepare(self, train: list[Example], validation: list[Example]) -> None:
        """Expensive, cacheable work. Default: nothing."""

    def restore(self, run_dir, info: ArmInfo, train: list[Example], validation: list[Example]) -> None:
        """Rebuild what `prepare` built in the run at `run_dir` (`info`: its results.json
        info), for `adaptbench serve`. Never trains: arms that train find their model in the
        run directory or the cache. Default: prepare again (selection and indexes are
        deterministic and cached)."""
        self.prepare(train, validation)

    @abstractmethod
    def prompts(self, queries: list[Query]) -> tuple[list[list[dict]], list[list[Passage]]]:
        """The chat prompt for each query, and the passages it carries (empty lists if none)."""

    def prompts_once(self, queries: list[Query]) -> tuple[list[list[dict]], list[list[Passage]]]:
        """`prompts`, computed once per query: answering and scoring likelihoods (perplexity,
        base and trained model) reuse them instead of retrieving and embedding again."""
        todo = [q for q in queries if q.id not in self._prompt_memo]
        if todo:
            prompts, contexts = self.prompts(todo)
            if self.retrieves:  # evaluation only: a served request is not counted (nor tokenised twice)
                self.count_over_context(todo, prompts)
            for q, p, c in zip(todo, prompts, contexts):
                self._prompt_memo[q.id] = (p, c)
        return [self._prompt_memo[q.id][0] for q in queries], [self._prompt_memo[q.id][1] for q in queries]

    def order(self, queries: list[Query]) -> list[Query]:
        """The queries in the order to answer them: longest prompt first over the whole
        split, so each generation batch holds prompts of similar length (less padding)."""
        prompts, _ = self.prompts_once(queries)
        size = [sum(len(m.get("content", "")) for m in p) for p in prompts]
        return [q for _, q in sorted(zip(size, queries), key=lambda x: -x[0])]

    def answer(self, queries: list[Query]) -> list[Prediction]:
        """Answer a batch; one Prediction per query, in order."""
        prompts, contexts = self.prompts_once(queries)
        be = self.backend()
        if self.res.suite.has_labels and self.res.suite.classification_mode == "likelihood":
            return self.most_likely_label(be, prompts, queries, contexts)
        comps = be.generate([GenRequest(p, self.settings) for p in prompts], description=f"{self.name}: answering")
        return [Prediction(id=q.id, output=c.text, contexts=ctx, prompt_tokens=c.prompt_tokens,
                           completion_tokens=c.completion_tokens, latency_s=c.latency_s, compute_s=c.compute_s,
                           cached=c.cached)
                for q, c, ctx in zip(queries, comps, contexts)]

    def most_likely_label(self, be, prompts, queries: list[Query], contexts) -> list[Prediction]:
        """Score every label as the answer; take the highest total log-likelihood
        (lm-evaluation-harness `acc`). Labels come from the suite, narrowed to the item's own
        options where it has them (a 3-choice question is never answered "D")."""
        labels = self.res.labels
        t0 = time.perf_counter()
        nll = be.choice_loglikelihood(prompts, labels)
        dt = (time.perf_counter() - t0) / max(1, len(queries))
        out = []
        for i, (q, c) in enumerate(zip(queries, contexts)):
            allowed = [j for j, lab in enumerate(labels) if lab in q.options] or list(range(len(labels)))
            best = min(allowed, key=nll[i].__getitem__)
            logp = -np.array([nll[i][j] for j in allowed], dtype=float)
            p = np.exp(logp - logp.max())
            p /= p.sum()  # each allowed label's probability, given that the answer is one of them
            out.append(Prediction(id=q.id, output=labels[best], contexts=c, prompt_tokens=be.count_tokens(prompts[i]),
                                  completion_tokens=0, latency_s=dt, compute_s=dt,
                                  label_probs={labels[j]: round(float(x), 6) for j, x in zip(allowed, p)}))
        return out

    def loglikelihood(self, queries: list[Query], targets: list[str], *, base: bool = False):
        """toolkit.backends.Likelihood of given answers under this arm's prompts and model (or
        the base model). Called by the scorer, which owns the targets. Raises NotMeasured
        where the backend cannot tell."""
        prompts, _ = self.prompts_once(queries)
        be = self.base_backend() if base else self.backend()
        return be.loglikelihood([LLRequest(p, t) for p, t in zip(prompts, targets)])

    def single_latency(self, queries: list[Query]) -> list[float]:
        """Seconds to answer each query alone (a batch of one) on a local backend: what one
        caller of a one-at-a-time service waits. Empty for API backends, whose every answer
        already is one request."""
        be = self.backend()
        if not be.batched or (self.res.suite.has_labels and self.res.suite.classification_mode == "likelihood"):
            return []
        prompts, _ = self.prompts_once(queries)
        return [be.single(GenRequest(p, self.settings)).latency_s for p in prompts]

    # helpers shared by strategies
    def count_over_context(self, queries: list[Query], prompts: list[list[dict]]) -> None:
        """Record the questions whose prompt plus max_new_tokens exceed the model's context (a
        retrieving arm's passages can): nothing is cut, so the model reads past what it was
        trained to attend to, and the run record and the report say how often. Called from
        prompts_once, so each question is counted once."""
        be = self.backend()
        limit = be.context_length()
        if not limit:
            return
        over = self.__dict__.setdefault("_over_context", {})
        for q, m in zip(queries, prompts):
            over[q.id] = max(0, be.count_tokens(m) + self.settings.max_tokens - limit)
        self.info["prompts_over_context"] = sum(1 for n in over.values() if n)
        self.info["context_tokens_over"] = sum(over.values())
        self.info["context_length"] = limit

    def messages(self, question: str, passages: list[str] | None = None, shots=()) -> list[dict]:
        labels = self.res.labels if getattr(self.config, "label_list", True) else None
        return build_messages(self.res.suite.instruction, labels, question, passages=passages, shots=shots)
