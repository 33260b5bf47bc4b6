"""ragas' LLM-judged metrics, with the judge the suite names and nothing else.

The judge is an OpenAI-compatible endpoint (base URL, model, key from an
environment variable) or a local Hugging Face model, reached through the request
layer (toolkit.backends) like any arm's model: ragas gets a LangChain chat model
over that backend (`BackendChatModel`). No judge configured: the metrics
are reported as not measured, with the reason, and never enter an average. A
row ragas cannot score (the judge's output did not parse, the request failed
after its retries) is NaN here, counted as unmeasured in the report, and kept in
samples.jsonl; it is not dropped and not scored as 0.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from pydantic import ConfigDict

from toolkit.backends import GenRequest, Settings, load_backend
from toolkit.config import GeneratorConfig
from toolkit.models import load_embedder
from toolkit.scoring.registry import judged

# metric -> (ragas class, needs retrieved contexts, needs a reference answer), from the registry
JUDGE_METRICS: dict[str, tuple[str, bool, bool]] = {
    n: (m.ragas, "retrieval" in m.needs, "reference" in m.needs) for n, m in judged().items()}


def not_measured_reason(metric: str, judge, retrieves: bool) -> str | None:
    """Why an arm gets no value for a judged metric, or None when it will be measured."""
    if judge is None:
        return "no judge configured (set `judge:` in the suite, or --judge-url/--judge-model)"
    if JUDGE_METRICS[metric][1] and not retrieves:
        return "this arm retrieves no passages"
    if judge.api_key_env and judge.base_url and not os.environ.get(judge.api_key_env):
        return f"the judge's key variable {judge.api_key_env} is not set"
    return None


@dataclass
class JudgeRun:
    rows: list[dict[str, float]]  # per example: metric -> score, NaN when unmeasured
    input_tokens: int = 0
    output_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # ragas' logged failures, by exception name


class _Failures(logging.Handler):
    """Counts the failures ragas logs (one line per failed parse or request, and it retries)
    instead of letting them print: each unscored row is reported as unmeasured, and the
    kinds of failure are summed up once in the report."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        m = re.search(r"Exception raised in Job\[\d+\]: (\w+)", msg)
        if m:
            self.counts[m.group(1)] = self.counts.get(m.group(1), 0) + 1


@contextmanager
def _ragas_failures_counted():
    log = logging.getLogger("ragas")
    h, before = _Failures(), log.propagate
    log.addHandler(h)
    log.propagate = False
    try:
        yield h.counts
    finally:
        log.removeHandler(h)
        log.propagate = before


class Judge:
    """One judge for the whole run: a local model is loaded and served once."""

    def __init__(self, cfg, embedder_name: str):
        self.cfg, self.embedder_name = cfg, embedder_name
        self._stack = ExitStack()
        self._base_url: str | None = cfg.base_url
        self._llm = None
        self._emb = None

    @property
    def fingerprint(self) -> dict:
        return {"base_url": self.cfg.base_url, "model": self.cfg.model, "max_tokens": self.cfg.max_tokens}

    def _setup(self) -> None:
        if self._llm is not None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # datasets, ragas, openai: imported on first use, not when this module loads
            from langchain_openai import ChatOpenAI
            from ragas.embeddings import LlamaIndexEmbeddingsWrapper
            from ragas.llms import LangchainLLMWrapper

        if self._base_url is None:  # a local model, through the request layer like an arm's

            backend = load_backend(GeneratorConfig(model=self.cfg.model, max_new_tokens=min(self.cfg.max_tokens, 4096)))
            self._stack.callback(backend.close)
            chat = local_chat_model(backend, self.cfg.max_tokens)
        else:
            key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
            chat = ChatOpenAI(base_url=self._base_url, model=self.cfg.model, api_key=key or "not-needed",
                              temperature=0.0, max_tokens=self.cfg.max_tokens, timeout=self.cfg.timeout_s,
                              max_retries=self.cfg.max_retries)
        self._llm = LangchainLLMWrapper(chat)
        self._emb = LlamaIndexEmbeddingsWrapper(load_embedder(self.embedder_name))

    def score(self, examples, preds, metrics: list[str], *, retrieves: bool) -> JudgeRun:
        """Judged scores for every example (NaN where ragas could not score a row)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # datasets, ragas, openai: imported on first use, not when this module loads
            import ragas.metrics as rm
            from ragas import EvaluationDataset, RunConfig, SingleTurnSample, evaluate
            from ragas.cost import get_token_usage_for_openai
        self._setup()
        wanted = [m for m in metrics if m in JUDGE_METRICS and not_measured_reason(m, self.cfg, retrieves) is None]
        rows = [{m: math.nan for m in wanted} for _ in examples]
        if not wanted or not examples:
            return JudgeRun(rows)
        samples = [SingleTurnSample(user_input=e.input, response=p.output or " ", reference=e.target,
                                    retrieved_contexts=[c.text for c in p.contexts] if retrieves else None)
                   for e, p in zip(examples, preds)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            objs = [getattr(rm, JUDGE_METRICS[m][0])() for m in wanted]
        names = {m: o.name for m, o in zip(wanted, objs)}
        with _ragas_failures_counted() as failures:
            result = evaluate(EvaluationDataset(samples=samples), metrics=objs, llm=self._llm, embeddings=self._emb,
                              run_config=RunConfig(max_workers=self.cfg.concurrency, max_retries=self.cfg.max_retries,
                                                   timeout=self.cfg.timeout_s),
                              token_usage_parser=get_token_usage_for_openai, raise_exceptions=False,
                              show_progress=False, allow_nest_asyncio=True)
        for row, scored in zip(rows, result.scores):
            for m in wanted:
                v = scored.get(names[m])
                row[m] = float(v) if isinstance(v, (int, float)) and v == v else math.nan
        try:
            usage = result.total_tokens()
        except IndexError:  # ragas raises when no request came back with usage
            usage = None
        usage = usage if not isinstance(usage, list) else None
        return JudgeRun(rows, input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                        output_tokens=int(getattr(usage, "output_tokens", 0) or 0), errors=dict(failures))

    def close(self) -> None:
        self._stack.close()


def local_chat_model(backend, max_tokens: int):
    """A LangChain chat model answered by a toolkit.backends Backend (what ragas calls a local
    judge through). Written here rather than taken from langchain-huggingface, which would
    load the model a second time, outside adaptbench's model loading (dtype, device, the
    dequantised bundled model). A local model is not re-entrant: prompts are answered one at
    a time, under a lock, whatever concurrency ragas asks for."""

    # langchain: imported on first use, not when this module loads
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult


    roles = {"human": "user", "ai": "assistant", "system": "system"}
    lock = threading.Lock()

    class BackendChatModel(BaseChatModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        temperature: float = 0.0  # ragas sets it per request

        @property
        def _llm_type(self) -> str:
            return "adaptbench-backend"

        def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
            msgs = [{"role": roles.get(m.type, "user"), "content": str(m.content)} for m in messages]
            settings = Settings(max_tokens, tuple(stop or ()), float(self.temperature or 0.0), None)
            with lock:
                [c] = backend.generate([GenRequest(msgs, settings)], description=None)
            usage = {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=c.text),
                                                          generation_info={"finish_reason": "stop"})],
                              llm_output={"token_usage": usage})

        def _combine_llm_outputs(self, llm_outputs):
            total = {"prompt_tokens": 0, "completion_tokens": 0}
            for o in llm_outputs:
                for k in total:
                    total[k] += ((o or {}).get("token_usage") or {}).get(k, 0)
            return {"token_usage": total}

    return BackendChatModel()
