"""The strategy protocol: `prepare` does the expensive, cacheable work once;
`answer` turns a batch of queries into predictions.

A strategy sees the train and validation splits and the knowledge base, and of
the test split only `Query` objects (id and input): never a gold answer, label
or gold document.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from toolkit.config import Suite
from toolkit.data import Example, Query
from toolkit.kb import KnowledgeBase
from toolkit.models import ModelRef


@dataclass
class Passage:
    doc_id: str
    text: str
    score: float


@dataclass
class Prediction:
    id: str
    output: str
    contexts: list[Passage] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    compute_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Prediction":
        d = dict(d)
        d["contexts"] = [Passage(**c) for c in d.get("contexts", [])]
        return cls(**d)


# prompt key/value caches a generator keeps for the likelihood requests that follow its answers
# (toolkit.generation.PrefixStore): a harness chunk of 32 RAG prompts of ~280 tokens is ~410 MB
# in float32 for SmolLM2-135M
PREFIX_CACHE_MB = 512


@dataclass
class Context:
    """What the harness hands every strategy."""

    suite: Suite
    labels: list[str] | None
    kb: KnowledgeBase | None
    generator_ref: ModelRef
    run_dir: Path | None  # the run directory (strategies may keep small artifacts there); None while
    # the processes of a distributed launch train together
    generator_device: str = "cpu"
    generator_dtype: str = "float32"  # resolved (never 'auto'): answers differ between precisions
    _shared: dict[str, Any] = field(default_factory=dict)

    def base_generator(self):
        """The base model, loaded once and shared by the arms that do not change it."""
        if "generator" not in self._shared:
            from toolkit.generation import Generator
            self._shared["generator"] = Generator.load(self.suite.generator, self.generator_ref,
                                                       prefix_cache_mb=PREFIX_CACHE_MB)
        return self._shared["generator"]

    def judge(self):
        """The LLM judge of the suite (a local one is loaded and served once per run)."""
        if "judge" not in self._shared:
            from toolkit.judge import Judge
            self._shared["judge"] = Judge(self.suite.judge, self.suite.embedder.model)
        return self._shared["judge"]

    def close(self) -> None:
        if "judge" in self._shared:
            self._shared.pop("judge").close()

    def retriever(self, chunk_size: int, chunk_overlap: int):
        key = (chunk_size, chunk_overlap)
        if ("retriever", key) not in self._shared:
            from toolkit.retrieval import Retriever
            self._shared[("retriever", key)] = Retriever(
                self.kb, self.suite.embedder, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                tokenizer_path=self.generator_ref.path, tokenizer_key=self.generator_ref.fingerprint)
        return self._shared[("retriever", key)]


class Strategy(ABC):
    """Base class. Subclasses set `type` and implement `prompts`; those that build or
    train something override `prepare`, `fingerprint` and, if they answer with their
    own model, `model`."""

    type: ClassVar[str]
    trains: ClassVar[bool] = False      # prepare() trains weights
    retrieves: ClassVar[bool] = False   # predictions carry retrieved passages
    scores_likelihood: ClassVar[bool] = True  # can score given answers (perplexity)

    def __init__(self, name: str, config: Any, ctx: Context):
        self.name, self.config, self.ctx = name, config, ctx
        self.info: dict[str, Any] = {}  # what prepare() did, for results.json (cached?, sizes...)
        self._prompt_memo: dict[str, tuple[list[dict], list[Passage]]] = {}

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the answers (called after prepare)."""
        s = self.ctx.suite
        g = s.generator
        return {"type": self.type, "config": self.config.model_dump(), "task": s.task,
                "classification_mode": s.classification_mode,
                "instruction": s.instruction, "labels": self.ctx.labels, "model": self.model_identity(),
                "generation": {"max_new_tokens": g.max_new_tokens, "stop": g.stop, "temperature": g.temperature}}

    def model_identity(self, *, base: bool = False) -> dict[str, Any]:
        """The weights that answer (the base model's, or with `base=False` the arm's own),
        their precision and the kind of device: what makes two models' outputs differ."""
        c = self.ctx
        return {"weights": c.generator_ref.fingerprint, "dtype": c.generator_dtype,
                "device": c.generator_device.split(":")[0]}

    def order(self, queries: list[Query]) -> list[Query]:
        """The queries in the order to answer them: longest prompt first over the whole
        split, so each generation batch holds prompts of similar length (less padding)."""
        prompts, _ = self.prompts_once(queries)
        size = [sum(len(m.get("content", "")) for m in p) for p in prompts]
        return [q for _, q in sorted(zip(size, queries), key=lambda x: -x[0])]

    def prepare(self, train: list[Example], validation: list[Example]) -> None:
        """Expensive, cacheable work. Default: nothing."""

    @abstractmethod
    def prompts(self, queries: list[Query]) -> tuple[list[list[dict]], list[list[Passage]]]:
        """The chat prompt for each query, and the passages it carries (empty lists if none)."""

    def model(self):
        """The Generator that answers (the shared base model unless the strategy trains)."""
        return self.ctx.base_generator()

    def prompts_once(self, queries: list[Query]) -> tuple[list[list[dict]], list[list[Passage]]]:
        """`prompts`, computed once per query: answering and scoring likelihoods (perplexity,
        base and trained model) reuse them instead of retrieving and embedding again."""
        todo = [q for q in queries if q.id not in self._prompt_memo]
        if todo:
            for q, p, c in zip(todo, *self.prompts(todo)):
                self._prompt_memo[q.id] = (p, c)
        return [self._prompt_memo[q.id][0] for q in queries], [self._prompt_memo[q.id][1] for q in queries]

    def answer(self, queries: list[Query]) -> list[Prediction]:
        """Answer a batch; one Prediction per query, in order."""
        prompts, contexts = self.prompts_once(queries)
        if self.ctx.suite.has_labels and self.ctx.suite.classification_mode == "likelihood":
            return self.most_likely_label(self.model(), prompts, queries, contexts)
        return self.generate(self.model(), prompts, queries, contexts)

    def most_likely_label(self, generator, prompts, queries: list[Query], contexts) -> list[Prediction]:
        """Score every label as the answer; take the highest total log-likelihood
        (lm-evaluation-harness `acc`). Labels come from the suite, narrowed to the item's own
        options where it has them (a 3-choice question is never answered "D")."""
        import time
        labels = self.ctx.labels
        t0 = time.perf_counter()
        nll = generator.choice_nll(prompts, labels)
        dt = time.perf_counter() - t0
        out = []
        for i, (q, c) in enumerate(zip(queries, contexts)):
            scores = nll[i]
            allowed = [j for j, l in enumerate(labels) if l in q.options] or range(len(labels))
            best = min(allowed, key=scores.__getitem__)
            out.append(Prediction(id=q.id, output=labels[best], contexts=c,
                                  prompt_tokens=generator.count_tokens(prompts[i]), completion_tokens=0,
                                  latency_s=dt / max(1, len(queries)), compute_s=dt / max(1, len(queries))))
        return out

    def loglikelihood(self, queries: list[Query], targets: list[str], *, base: bool = False) -> list[tuple[float, int]]:
        """(summed NLL, answer tokens) of given answers under this arm's prompts and model
        (or the base model). Called by the scorer, which owns the targets."""
        prompts, _ = self.prompts_once(queries)
        return (self.ctx.base_generator() if base else self.model()).answer_nll(prompts, targets)

    # helpers shared by strategies
    def messages(self, question: str, passages: list[str] | None = None, shots=()) -> list[dict]:
        from toolkit.prompts import build_messages
        labels = self.ctx.labels if getattr(self.config, "label_list", True) else None
        return build_messages(self.ctx.suite.instruction, labels, question, passages=passages, shots=shots)

    def generate(self, generator, prompts, queries: list[Query], contexts=None) -> list[Prediction]:
        gens = generator.generate(prompts, description=f"{self.name}: answering")
        contexts = contexts or [[] for _ in queries]
        return [Prediction(id=q.id, output=g.text, contexts=c, prompt_tokens=g.prompt_tokens,
                           completion_tokens=g.completion_tokens, latency_s=g.latency_s, compute_s=g.compute_s)
                for q, g, c in zip(queries, gens, contexts)]
