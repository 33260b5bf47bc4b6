"""What a run shares between its arms, owned by the harness (and by `serve`): backends
(one local model loaded once per weights and precision, one client per endpoint), the
retrievers, the judge and the request cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.backends import load_backend
from toolkit.backends.cache import CachedBackend
from toolkit.cache import PredictionCache, content_hash
from toolkit.config import GeneratorConfig, Suite
from toolkit.data.kb import KnowledgeBase
from toolkit.models import resolve_generator
from toolkit.parts import values_of
from toolkit.retrieval import Retriever
from toolkit.scoring.judge import Judge
from toolkit.scoring.metrics import map_to_label, normalize_answer


class Resources:
    def __init__(self, suite: Suite, labels: list[str] | None, kb: KnowledgeBase | None, run_dir: Path | None,
                 store: PredictionCache | None = None):
        self.suite, self.labels, self.kb, self.run_dir, self.store = suite, labels, kb, run_dir, store
        self._shared: dict[Any, Any] = {}

    def _once(self, key, make):
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def ref(self, cfg: GeneratorConfig):
        """The local model a transformers generator names (resolved once)."""
        return self._once(("ref", cfg.model), lambda: resolve_generator(cfg.model))

    def backend(self, cfg: GeneratorConfig, *, adapter: Path | None = None, adapter_key: str | None = None):
        """The cached backend for a generator (plus adapter): one per model, shared by arms."""
        ident = content_hash(values_of(cfg, "model", "batching", "api"))  # not "generation": set per request
        kw = {} if cfg.backend != "transformers" else {"ref": self.ref(cfg), "adapter": adapter, "adapter_key": adapter_key}
        return self._once(("backend", ident, adapter_key),
                          lambda: CachedBackend(load_backend(cfg, **kw), self.store))

    def validation_scorer(self, metric: str):
        """score(outputs, golds) of a task metric on validation answers, for a strategy that
        trains with early stopping on it (strategies do not reach into scoring themselves)."""
        # numpy: imported on first use, not when this module loads
        from toolkit.scoring.metrics import validation_score
        return lambda outputs, golds: validation_score(metric, outputs, golds, self.labels)

    def label_of(self, output: str) -> str | None:
        """The label an answer maps to, as the scorer maps it (None: no label), for an ensemble's
        vote (strategies do not reach into scoring themselves)."""
        return map_to_label(output, self.labels or [])

    def answer_key(self, output: str) -> str:
        """A free-text answer as exact match compares it (SQuAD normalisation), for a QA vote."""
        return normalize_answer(output)

    def release_adapters(self) -> None:
        """Free the models an arm trained (a merged copy of the base each) once it is done;
        the base models stay for the arms that follow."""
        for key in [k for k in self._shared if isinstance(k, tuple) and k[0] == "backend" and k[2] is not None]:
            self._shared.pop(key).close()

    def local_generator(self, cfg: GeneratorConfig):
        """The raw toolkit.backends.generation.Generator of a local base model (loads it)."""
        return self.backend(cfg).uncached.generator

    def retriever(self, chunk_size: int, chunk_overlap: int):
        def make():
            g = self.suite.generator
            ref = self.ref(GeneratorConfig(model=g.model if g.backend == "transformers" else (g.tokenizer or "smollm2-135m-instruct")))
            return Retriever(self.kb, self.suite.embedder, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                             tokenizer_path=ref.path, tokenizer_key=ref.fingerprint, source=self.kb.source,
                             server=self.suite.kb_chroma, hnsw=self.suite.kb_hnsw)
        return self._once(("retriever", chunk_size, chunk_overlap), make)

    def judge(self):
        """The LLM judge of the suite (a local one is loaded and served once per run)."""
        def make():
            return Judge(self.suite.judge, self.suite.embedder.model)
        return self._once("judge", make)

    def close(self) -> None:
        for key, obj in list(self._shared.items()):
            if key == "judge" or (isinstance(key, tuple) and key[0] == "backend"):
                obj.close()
        self._shared.clear()
