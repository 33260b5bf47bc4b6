"""The `transformers` backend: a causal LM on this machine (CPU or CUDA), batched."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from toolkit.backends.base import Backend, Completion, GenRequest, Likelihood, LLRequest, OnDone, Settings
from toolkit.backends.generation import Generator, load_finetuned
from toolkit.chat import Messages, render_chat
from toolkit.models import load_tokenizer, model_context, pick_device, pick_dtype, resolve_generator

# prompt key/value caches a generator keeps for the likelihood requests that follow its answers
# (toolkit.backends.generation.PrefixStore): a harness chunk of 32 RAG prompts of ~280 tokens is ~410 MB
# in float32 for SmolLM2-135M
PREFIX_CACHE_MB = 512


class TransformersBackend(Backend):
    """A local model (bundled name, folder or hub id), optionally with a LoRA adapter merged
    in. The tokenizer loads at once; the weights on the first request that is not cached, so
    an unchanged rerun never loads them."""

    kind = "transformers"
    batched = True

    def __init__(self, cfg, *, ref=None, adapter: Path | None = None, adapter_key: str | None = None,
                 generator=None, prefix_cache_mb: int = PREFIX_CACHE_MB):
        self.cfg = cfg
        self.ref = ref or resolve_generator(cfg.model)
        self.device = pick_device(cfg.device)
        self.dtype = str(pick_dtype(self.device, cfg.dtype)).replace("torch.", "")
        self.adapter, self.adapter_key = adapter, adapter_key
        self.tokenizer = generator.tokenizer if generator is not None else load_tokenizer(self.ref.path)
        self._gen, self._prefix_mb = generator, prefix_cache_mb
        self._lock = threading.Lock()  # one forward pass at a time: the model is not re-entrant

    @property
    def generator(self):
        if self._gen is None:
            if self.adapter is not None:
                self._gen = load_finetuned(self.ref, self.cfg, self.adapter, prefix_cache_mb=self._prefix_mb)
            else:
                self._gen = Generator.load(self.cfg, self.ref, prefix_cache_mb=self._prefix_mb)
        return self._gen

    def identity(self) -> dict[str, Any]:
        return {"backend": "transformers", "weights": self.ref.fingerprint, "adapter": self.adapter_key,
                "dtype": self.dtype, "device": self.device.split(":")[0]}

    def describe(self) -> dict[str, str]:
        return {"backend": "transformers", "model": self.ref.name + (" + LoRA adapter" if self.adapter_key else ""),
                "where": f"{self.device}/{self.dtype}"}

    def count_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(render_chat(self.tokenizer, messages), add_special_tokens=False)["input_ids"])

    def context_length(self) -> int | None:
        return model_context(self.ref.path)

    def generate(self, requests: list[GenRequest], *, description: str = "Generating",
                 on_done: OnDone | None = None) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        groups: dict[Settings, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.settings, []).append(i)

        def completion(g) -> Completion:
            return Completion(g.text, g.prompt_tokens, g.completion_tokens, g.latency_s, g.compute_s)

        with self._lock:
            for settings, idx in groups.items():
                def batch_done(rows: list[int], gens, idx=idx) -> None:  # a batch of this group answered
                    on_done([idx[j] for j in rows], [completion(g) for g in gens])  # type: ignore[misc]
                gens = self.generator.generate([requests[i].messages for i in idx], description=description,
                                               settings=settings, on_done=batch_done if on_done else None)
                for i, g in zip(idx, gens):
                    out[i] = completion(g)
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests: list[LLRequest]) -> list[Likelihood]:
        with self._lock:
            got = self.generator.answer_nll([r.messages for r in requests], [r.target for r in requests])
        return [Likelihood(n, t) for n, t in got]

    def choice_loglikelihood(self, prompts: list[Messages], choices: list[str]) -> list[list[float]]:
        with self._lock:
            return self.generator.choice_nll(prompts, choices)

    def single(self, request: GenRequest) -> Completion:
        """One request alone (batch of one): what a caller of a one-at-a-time service waits."""
        t0 = time.perf_counter()
        c = self.generate([request], description="one at a time")[0]
        c.latency_s = c.compute_s = time.perf_counter() - t0
        return c
