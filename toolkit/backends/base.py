"""The request layer: a list of requests in, a list of results out (lm-evaluation-harness's
`LM`). A backend turns rendered chat prompts into text or log-probabilities and knows
nothing of suites, strategies or metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

from toolkit.chat import Messages


@dataclass(frozen=True)
class Settings:
    """Generation settings that change an answer (batch size and concurrency do not)."""

    max_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    seed: int | None = None

    @classmethod
    def of(cls, cfg) -> "Settings":
        """From a GeneratorConfig."""
        return cls(cfg.max_new_tokens, tuple(s for s in cfg.stop if s), cfg.temperature, cfg.seed)

    @property
    def reproducible(self) -> bool:
        """Greedy, or sampled with a seed: the same request gives the same answer, so it may be cached."""
        return self.temperature == 0 or self.seed is not None

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "stop": list(self.stop), "temperature": self.temperature,
                "seed": self.seed}


@dataclass
class GenRequest:
    messages: Messages
    settings: Settings


@dataclass
class LLRequest:
    """The log-likelihood of `target` as the assistant's answer to `messages`."""

    messages: Messages
    target: str


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float   # what the caller of this one request waited
    compute_s: float   # the amortised cost of this answer (a local batch's wall time over its size)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "latency_s": self.latency_s, "compute_s": self.compute_s}


@dataclass
class Likelihood:
    nll: float   # summed negative log-likelihood of the answer tokens (nats)
    tokens: int  # answer tokens scored
    cached: bool = False


class NotMeasured(Exception):
    """The backend cannot measure this (e.g. an endpoint that gives no prompt log-probabilities).
    The metric is reported as not measured with this reason, never as 0."""


# called with the indices of the requests just answered and their completions
OnDone = Callable[[list[int], list["Completion"]], None]


class Backend(ABC):
    """A model that answers. Subclasses implement identity, generate and, where they can,
    loglikelihood."""

    kind: str = ""
    batched: bool = False  # answers a list together (local), not one request each
    device: str = "api"    # where the model runs: "cpu", "cuda:0", ...; "api" for a remote endpoint

    @property
    def uncached(self) -> "Backend":
        """The backend that computes (itself; a request cache's wrapped backend): what serving
        answers with, since every production request is computed."""
        return self

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What makes two backends' outputs differ: weights (or endpoint and model name), precision,
        device kind. Part of every cache key."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """For the report: model, backend, where it runs."""

    @abstractmethod
    def generate(self, requests: list[GenRequest], *, description: str = "Generating",
                 on_done: OnDone | None = None) -> list[Completion]:
        """One completion per request, in order. `on_done(indices, completions)`, where given, is
        called as answers finish (a batch, or one request), before generate returns: the cache
        stores each then, so a process killed halfway keeps what it had answered (answers a cache
        already held are returned without being reported)."""

    def loglikelihood(self, requests: list[LLRequest]) -> list[Likelihood]:
        raise NotMeasured(f"the {self.kind} backend gives no log-probabilities")

    def choice_loglikelihood(self, prompts: list[Messages], choices: list[str]) -> list[list[float]]:
        """NLL of every choice as the answer to each prompt (classification_mode: likelihood)."""
        flat = self.loglikelihood([LLRequest(p, c) for p in prompts for c in choices])
        return [[x.nll for x in flat[i * len(choices):(i + 1) * len(choices)]] for i in range(len(prompts))]

    @abstractmethod
    def count_tokens(self, messages: Messages) -> int:
        """Prompt tokens of these messages (for prompt budgets)."""

    def context_length(self) -> int | None:
        """The most tokens (prompt plus answer) the model attends to, where it is known."""
        return None

    def close(self) -> None:
        pass
