"""Requests cached by content: the key is the backend's identity (weights, precision and
device kind; or endpoint and model name), the rendered request (messages, target) and the
settings that change the answer. Editing a question, a prompt, a loader option or a setting
changes the key; an unrelated arm or an example id does not. Sampled generations are
cached only when a seed makes them reproducible."""

from __future__ import annotations

from typing import Any

from toolkit.backends.base import Backend, Completion, GenRequest, Likelihood, LLRequest, OnDone
from toolkit.cache import PredictionCache, content_hash
from toolkit.chat import Messages


class CachedBackend(Backend):
    def __init__(self, backend: Backend, store: PredictionCache | None):
        self.backend, self.store = backend, store
        self.kind, self.batched, self.device = backend.kind, backend.batched, backend.device

    @property
    def uncached(self) -> Backend:
        return self.backend

    def identity(self) -> dict[str, Any]:
        return self.backend.identity()

    def describe(self) -> dict[str, str]:
        return self.backend.describe()

    def count_tokens(self, messages: Messages) -> int:
        return self.backend.count_tokens(messages)

    def context_length(self) -> int | None:
        return self.backend.context_length()

    def _key(self, **what) -> str:
        return content_hash({"backend": self.identity(), **what}, 32)

    def _cached(self, kind: str, keys: list[str], compute, decode, encode, *, as_done: bool = False,
                outer: OnDone | None = None) -> list:
        """Results for keys: stored ones, the others computed by `compute(indices)` and stored.
        With `as_done`, compute is `compute(indices, on_done)` and each answer is stored as it
        finishes (on_done(positions in indices, results)), so a kill loses only those in flight."""
        have = self.store.get_many(kind, keys) if self.store else {}
        todo = [i for i, k in enumerate(keys) if k not in have]
        stored: set[int] = set()

        def on_done(rows: list[int], results: list) -> None:
            if self.store:
                self.store.put_many(kind, {keys[todo[j]]: encode(r) for j, r in zip(rows, results)})
                stored.update(todo[j] for j in rows)
            if outer is not None:  # the caller's own, with its request indices
                outer([todo[j] for j in rows], results)

        fresh = dict(zip(todo, compute(todo, on_done) if as_done else compute(todo))) if todo else {}
        if self.store and len(stored) < len(fresh):
            self.store.put_many(kind, {keys[i]: encode(r) for i, r in fresh.items() if i not in stored})
        return [fresh[i] if i in fresh else decode(have[k]) for i, k in enumerate(keys)]

    def generate(self, requests: list[GenRequest], *, description: str = "Generating",
                 on_done: OnDone | None = None) -> list[Completion]:
        if not all(r.settings.reproducible for r in requests):  # sampled without a seed: never stored, never reused
            return self.backend.generate(requests, description=description, on_done=on_done)
        keys = [self._key(messages=r.messages, settings=r.settings.to_dict()) for r in requests]
        return self._cached("gen", keys, lambda idx, done: self.backend.generate([requests[i] for i in idx],
                                                                                 description=description, on_done=done),
                            lambda d: Completion(**d, cached=True), Completion.to_dict, as_done=True, outer=on_done)

    def single(self, request: GenRequest) -> Completion:
        """A local backend's one-request latency (cached with the answer when reproducible)."""
        if not request.settings.reproducible:
            return self.backend.single(request)  # type: ignore[attr-defined]
        key = self._key(messages=request.messages, settings=request.settings.to_dict(), alone=True)
        return self._cached("gen", [key], lambda idx: [self.backend.single(request)],  # type: ignore[attr-defined]
                            lambda d: Completion(**d, cached=True), Completion.to_dict)[0]

    def loglikelihood(self, requests: list[LLRequest]) -> list[Likelihood]:
        keys = [self._key(messages=r.messages, target=r.target) for r in requests]
        return self._cached("ll", keys, lambda idx: self.backend.loglikelihood([requests[i] for i in idx]),
                            lambda d: Likelihood(d["nll"], d["tokens"], cached=True),
                            lambda x: {"nll": x.nll, "tokens": x.tokens})

    def choice_loglikelihood(self, prompts: list[Messages], choices: list[str]) -> list[list[float]]:
        keys = [self._key(messages=p, choices=choices) for p in prompts]
        return self._cached("choices", keys, lambda idx: self.backend.choice_loglikelihood([prompts[i] for i in idx], choices),
                            lambda d: d["nll"], lambda x: {"nll": x})

    def close(self) -> None:
        self.backend.close()
