"""The `openai` backend: any OpenAI-compatible server (OpenAI, Azure OpenAI, vLLM, TGI,
llama.cpp server, Ollama, `adaptbench serve --model`) through the official `openai` client.

Retries are the client's own: 408/409/429/5xx and lost connections are retried with
exponential backoff and jitter, honouring `Retry-After` (and `retry-after-ms`) up to a minute;
`max_retries` sets how many times.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from typing import Any

from toolkit.backends.base import Backend, Completion, GenRequest, Likelihood, LLRequest, NotMeasured, OnDone
from toolkit.chat import Messages, answer_suffix, cut_at_stop, render_chat
from toolkit.config import check_url
from toolkit.errors import UserError
from toolkit.models import load_tokenizer, resolve_generator
from toolkit.progress import task_bar

NO_PROMPT_LOGPROBS = "the endpoint gives no prompt log-probabilities (/v1/completions with echo and logprobs)"


def api_key(cfg) -> str:
    """The key from the variable the suite names; else $OPENAI_API_KEY, as the openai client
    takes it, but only for an endpoint the user chose (OpenAI's, or $OPENAI_BASE_URL): a suite
    from someone else that names its own base_url does not receive the user's OpenAI key.
    Local servers take any key."""
    if cfg.api_key_env:
        return os.environ.get(cfg.api_key_env, "")
    return os.environ.get("OPENAI_API_KEY", "") if cfg.base_url is None else "not-needed"


def check_env_endpoint(cfg, where: str) -> None:
    """$OPENAI_BASE_URL, when it is the endpoint, is checked as a suite's base_url is."""
    if cfg.base_url is None and os.environ.get("OPENAI_BASE_URL"):
        try:
            check_url(os.environ["OPENAI_BASE_URL"])
        except ValueError as e:
            raise UserError(f"$OPENAI_BASE_URL: {e}", field=f"{where}.base_url") from None


def check_endpoint(cfg, where: str) -> None:
    """GET /v1/models before any arm runs: an unreachable endpoint, a refused key or a model
    the endpoint does not serve is a one-line UserError (exit 2)."""
    # openai: imported on first use, not when this module loads
    import openai

    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        raise UserError(f"the key variable {cfg.api_key_env} is not set", field=f"{where}.api_key_env")
    check_env_endpoint(cfg, where)
    if cfg.base_url is None and not os.environ.get("OPENAI_BASE_URL") and not api_key(cfg):
        raise UserError("OpenAI needs a key: export OPENAI_API_KEY (or name another variable in api_key_env)",
                        field=f"{where}.api_key_env")
    client = openai.OpenAI(base_url=cfg.endpoint, api_key=api_key(cfg) or "not-needed", max_retries=1,
                           timeout=min(cfg.timeout_s, 15))
    try:
        served = [m.id for m in client.models.list()]
    except openai.AuthenticationError:
        raise UserError(f"{cfg.endpoint} refused the key" + (f" in {cfg.api_key_env}" if cfg.api_key_env else "")
                        + " (401)", field=f"{where}.api_key_env") from None
    except openai.PermissionDeniedError:
        raise UserError(f"{cfg.endpoint} denied access with this key (403)", field=f"{where}.api_key_env") from None
    except openai.APIConnectionError as e:
        cause = e.__cause__ or e
        raise UserError(f"cannot reach {cfg.endpoint}: {type(cause).__name__}: {str(cause) or 'connection failed'}",
                        field=f"{where}.base_url") from None
    except openai.APIStatusError as e:
        raise UserError(f"{cfg.endpoint}/models answered HTTP {e.status_code}; is this an OpenAI-compatible "
                        f"endpoint (it usually ends in /v1)?", field=f"{where}.base_url") from None
    finally:
        client.close()
    if served and cfg.model not in served:
        raise UserError(f"{cfg.endpoint} serves no model '{cfg.model}' (it serves: {', '.join(served[:10])}"
                        f"{', ...' if len(served) > 10 else ''})", field=f"{where}.model")


class OpenAIBackend(Backend):
    kind = "openai"
    batched = False

    def __init__(self, cfg):
        # openai: imported on first use, not when this module loads
        import openai

        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.endpoint, api_key=api_key(cfg) or "not-needed",
                                    max_retries=cfg.max_retries, timeout=cfg.timeout_s)
        self._tok, self._tok_loaded, self._tok_lock = None, False, threading.Lock()
        self._pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="api")

    @property
    def tokenizer(self):
        """The served model's tokenizer, when adaptbench can load it here (`tokenizer:`, or the
        model name resolves to a bundled model, folder or cached hub model); else None."""
        with self._tok_lock:  # the scoring threads ask at once
            if not self._tok_loaded:
                name = self.cfg.tokenizer or self.cfg.model
                try:
                    self._tok = load_tokenizer(resolve_generator(name).path)
                except Exception:
                    if self.cfg.tokenizer:  # named explicitly: preflight has checked it resolves
                        raise
                    self._tok = None
                self._tok_loaded = True
        return self._tok

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "base_url": self.cfg.endpoint.rstrip("/"), "model": self.cfg.model}

    def describe(self) -> dict[str, str]:
        return {"backend": "openai", "model": self.cfg.model, "where": self.cfg.endpoint}

    def count_tokens(self, messages: Messages) -> int:
        tok = self.tokenizer
        if tok is None:  # estimate: ~4 characters per token, plus a few per message for the chat format
            return sum(len(m.get("content", "")) // 4 + 4 for m in messages)
        return len(tok(render_chat(tok, messages), add_special_tokens=False)["input_ids"])

    def _chat(self, r: GenRequest) -> Completion:
        s = r.settings
        t0 = time.perf_counter()
        resp = self.client.chat.completions.create(
            model=self.cfg.model, messages=r.messages, max_tokens=s.max_tokens, temperature=s.temperature,
            stop=list(s.stop)[:4] or None, seed=s.seed)  # OpenAI accepts at most 4 stop strings
        dt = time.perf_counter() - t0
        text = resp.choices[0].message.content or ""
        text, _ = cut_at_stop(text, list(s.stop))  # servers that ignore `stop` still get cut at it
        u = resp.usage
        return Completion(text.strip(), int(getattr(u, "prompt_tokens", 0) or 0),
                          int(getattr(u, "completion_tokens", 0) or 0), dt, dt)

    def generate(self, requests: list[GenRequest], *, description: str | None = "Generating",
                 on_done: OnDone | None = None) -> list[Completion]:
        if description is None and on_done is None:  # no progress bar (a served arm's one request)
            return list(self._pool.map(self._chat, requests))
        out: list[Completion | None] = [None] * len(requests)
        futures = {self._pool.submit(self._chat, r): i for i, r in enumerate(requests)}
        with (task_bar(f"{description} ({self.cfg.concurrency} at a time)", len(requests)) if description
              else nullcontext(lambda n: None)) as advance:
            try:
                for f in as_completed(futures):  # as each is answered, whatever its place
                    i = futures[f]
                    out[i] = f.result()
                    if on_done is not None:
                        on_done([i], [out[i]])
                    advance(1)
            finally:  # a request that failed (or Ctrl-C): the ones not yet sent are not sent
                for f in futures:
                    f.cancel()
        return out  # type: ignore[return-value]

    def _score(self, r: LLRequest) -> Likelihood:
        # openai: imported on first use, not when this module loads
        import openai

        tok = self.tokenizer
        if tok is None:
            raise NotMeasured("the model's chat template is unknown here, so its prompts cannot be sent to "
                              "/v1/completions for log-probabilities: set `tokenizer:` in the generator")
        context = render_chat(tok, r.messages)
        text = context + r.target + answer_suffix(tok)
        try:
            resp = self.client.completions.create(model=self.cfg.model, prompt=text, max_tokens=1, temperature=0,
                                                  echo=True, logprobs=1)
        except (openai.BadRequestError, openai.NotFoundError, openai.UnprocessableEntityError) as e:
            raise NotMeasured(f"{NO_PROMPT_LOGPROBS} (HTTP {e.status_code})") from None
        lp = resp.choices[0].logprobs
        if lp is None or not lp.token_logprobs or lp.text_offset is None:
            raise NotMeasured(NO_PROMPT_LOGPROBS)
        nll, n = 0.0, 0
        for off, v in zip(lp.text_offset, lp.token_logprobs):
            if len(context) <= off < len(text):  # the answer's tokens (the generated one starts at len(text))
                if v is None:
                    raise NotMeasured(NO_PROMPT_LOGPROBS)
                nll -= v
                n += 1
        if n == 0:
            raise NotMeasured(NO_PROMPT_LOGPROBS)
        return Likelihood(nll, n)

    def loglikelihood(self, requests: list[LLRequest]) -> list[Likelihood]:
        return list(self._pool.map(self._score, requests))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
