"""The engine: one worker answers every model the server holds, batching what waits.

Handlers never block on it: they submit work (a thread-safe queue; the worker runs on the
main thread, see Engine) and await the future it returns. A batch is what arrived within
`max_wait_ms`, up to `max_batch` requests and `max_batch_tokens` tokens (prompt plus
max_tokens, each request's cost), grouped by model and generation settings. On a busy
2-core machine a client needs ~25 ms to turn one answer into its next request: with a 5 ms
window, 8 concurrent clients made batches of 4 on average; with 25 ms, of 8
(benchmarks/generation_throughput.py).

A request whose client has gone is cancelled: dropped if it still waits, its row stopped at
the next generated token if its batch is running. A batch that fails is answered again one
request at a time, so a request that breaks it fails alone.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable

from toolkit.backends.adapters import Adapters


class ServerClosing(RuntimeError):
    """The server is shutting down: a queued request is refused (HTTP 503)."""


class QueueFull(RuntimeError):
    """More requests wait than the server takes (HTTP 429)."""


class Cancelled(RuntimeError):
    """The client went away before its answer was generated."""


GENERATE, LOGPROBS, CALL = "generate", "logprobs", "call"


@dataclass
class Work:
    kind: str                       # GENERATE | LOGPROBS | CALL
    key: int                        # the model (see Engine.add)
    payload: Any                    # the rendered prompt, the text to score, or the function to run
    settings: Any = None            # toolkit.backends.Settings (GENERATE)
    on_text: Callable | None = None  # streams the answer as it is generated
    cost: int = 0                   # tokens it may occupy: prompt + max_tokens
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    counted_out: bool = False        # no longer counted as waiting

    def group(self) -> tuple:
        if self.kind == GENERATE:
            s = self.settings
            return (GENERATE, self.key, s.max_tokens, tuple(s.stop), s.temperature, s.seed)
        return (self.kind, self.key, self.settings) if self.kind == LOGPROBS else (CALL, id(self))


def _settle(f: Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Give a future its result, unless its caller has given up on it (cancelled)."""
    try:
        if exc is not None:
            f.set_exception(exc)
        else:
            f.set_result(result)
    except InvalidStateError:
        pass


class Engine:
    """Answers requests for toolkit.backends.generation.Generator models from one worker
    thread (a model is not re-entrant). close() refuses queued requests and waits for the
    batch in flight: a daemon thread still inside torch when the interpreter exits aborts
    the whole process ("terminate called without an active exception").

    With `background=False` the caller runs the loop itself (`run`), on the main thread:
    torch's CPU kernels ran 25-40% slower from a second thread on a 2-core machine (OpenMP
    thread teams), so `adaptbench serve` answers on the main thread and serves HTTP from
    another. That is why the queue is a thread-safe queue.Queue, not an asyncio.Queue: the
    event loop lives on the HTTP thread and only puts work in."""

    def __init__(self, generator=None, *, max_batch: int = 16, max_wait_ms: float = 25.0, background: bool = True,
                 max_queue: int = 0, max_batch_tokens: int = 0, on_batch=None):
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_queue = max_queue              # > 0: more waiting requests than this are refused (429)
        self.max_batch_tokens = max_batch_tokens  # > 0: a batch holds at most this many tokens
        self.on_batch = on_batch                # called with each batch's size (Prometheus)
        self.generators: list = []
        self.adapter_of: list[str | None] = []  # per key: the LoRA adapter it answers with (None: none)
        self._adapters: dict[int, Any] = {}      # id(generator) -> toolkit.backends.adapters.Adapters
        if generator is not None:
            self.add(generator)
        self._q: queue.Queue[Work] = queue.Queue()
        self._carry: collections.deque[Work] = collections.deque()  # taken, but did not fit the last batch
        self._closed = threading.Event()
        self._count_lock = threading.Lock()
        self._waiting = 0
        self.batches: list[int] = []  # sizes of the batches run (tests, benchmarks)
        self._worker = None
        if background:
            self._worker = threading.Thread(target=self.run, daemon=True, name="engine")
            self._worker.start()

    @property
    def generator(self):
        return self.generators[0] if self.generators else None

    def add(self, generator) -> int:
        """Answer for another model too; its key for requests. Arms that share a model share
        its key, so their requests batch together."""
        for i, g in enumerate(self.generators):
            if g is generator and self.adapter_of[i] is None:
                return i
        self.generators.append(generator)
        self.adapter_of.append(None)
        return len(self.generators) - 1

    def add_adapter(self, generator, name: str, path) -> int:
        """Answer as `generator` with a LoRA adapter (loaded on the worker at first use); its key."""
        self._adapters.setdefault(id(generator), Adapters(generator)).add(name, path)
        self.generators.append(generator)
        self.adapter_of.append(name)
        return len(self.generators) - 1

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter (on the worker, between batches: it changes the model). Requests
        already on their way still get their answer: the adapter reloads for them."""
        for a in self._adapters.values():
            if name in a.paths:
                work = Work(CALL, 0, lambda a=a: a.unload(name))
                work.counted_out = True  # housekeeping, not a client's request: no queue limit
                work.future.work = work  # type: ignore[attr-defined]
                self._q.put(work)

    # requests
    def generate(self, key: int, prompt, settings, on_text=None, cost: int = 0) -> Future:
        """One answer from model `key` to a rendered prompt with toolkit.backends.Settings; the
        future's result is (text, prompt tokens, completion tokens) and its `work.queued_at`
        says when it was queued. `on_text(piece)` streams the answer as it is generated."""
        return self._submit(Work(GENERATE, key, prompt, settings, on_text, cost))

    def prompt_logprobs(self, key: int, text: str, cost: int = 0, top_k: int = 0) -> Future:
        """Token log-probabilities of a text and its greedy next token (batched with others of
        the same `top_k`)."""
        return self._submit(Work(LOGPROBS, key, text, settings=top_k, cost=cost))

    def call(self, fn) -> Future:
        """Run fn() on the engine's thread, between batches (work that needs a model alone,
        e.g. scoring every label of a likelihood classifier)."""
        return self._submit(Work(CALL, 0, fn))

    def cancel(self, f: Future) -> None:
        """The client is gone: drop the request if it waits, stop its row if it runs. A
        cancelled request stops counting against the queue at once."""
        work = getattr(f, "work", None)
        if work is not None and not work.cancelled:
            work.cancelled = True
            self._left_queue(work)
        f.cancel()

    @property
    def waiting(self) -> int:
        """Requests queued and not yet in a batch (cancelled ones not counted)."""
        return self._waiting

    def _left_queue(self, work: Work) -> None:
        with self._count_lock:
            if not work.counted_out:
                work.counted_out = True
                self._waiting -= 1

    def _submit(self, work: Work) -> Future:
        if self._closed.is_set():
            raise ServerClosing()
        with self._count_lock:
            if self.max_queue and self._waiting >= self.max_queue:
                raise QueueFull()
            self._waiting += 1
        work.future.work = work  # type: ignore[attr-defined]
        self._q.put(work)
        return work.future

    # the worker
    def _next(self, timeout: float) -> Work | None:
        if self._carry:
            return self._carry.popleft()
        try:
            return self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
        except queue.Empty:
            return None

    def _batch(self) -> list[Work]:
        first = self._next(0.1)
        if first is None:
            return []
        batch, tokens = [first], first.cost
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            w = self._next(deadline - time.perf_counter())
            if w is None:
                break
            if self.max_batch_tokens and tokens + w.cost > self.max_batch_tokens:
                self._carry.append(w)  # the next batch starts with it
                break
            batch.append(w)
            tokens += w.cost
        live = []
        for w in batch:
            self._left_queue(w)
            if w.cancelled or w.future.cancelled():
                _settle(w.future, exc=Cancelled())
            else:
                live.append(w)
        return live

    def run(self, until=None) -> None:
        """Answer queued requests until close() (or until `until()` is true)."""
        while not self._closed.is_set() and not (until and until()):
            groups: dict[tuple, list[Work]] = {}
            for w in self._batch():
                groups.setdefault(w.group(), []).append(w)
            for items in groups.values():
                started = time.perf_counter()
                for w in items:
                    w.future.queue_s = started - w.queued_at  # type: ignore[attr-defined]
                try:
                    self._answer(items)
                except BaseException as e:  # noqa: BLE001 -- handed to the callers; the worker goes on
                    if len(items) > 1 and isinstance(e, Exception):
                        for w in items:  # one of them broke the batch: it fails alone
                            try:
                                self._answer([w])
                            except Exception as one:  # noqa: BLE001
                                _settle(w.future, exc=one)
                        continue
                    for w in items:
                        _settle(w.future, exc=e if isinstance(e, Exception) else ServerClosing())
                    if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit
                        raise
        if self._closed.is_set():
            self._refuse_queued()

    def _answer(self, items: list[Work]) -> None:
        head = items[0]
        if head.kind == CALL:
            _settle(head.future, head.payload())
            return
        gen = self.generators[head.key]
        adapters = self._adapters.get(id(gen))
        with adapters.use(self.adapter_of[head.key]) if adapters is not None else contextlib.nullcontext():
            results = self._run_model(gen, items)
        self.batches.append(len(items))
        if self.on_batch is not None:
            self.on_batch(len(items))
        for w, r in zip(items, results):
            _settle(w.future, r)

    @staticmethod
    def _run_model(gen, items: list[Work]) -> list:
        head = items[0]
        if head.kind == LOGPROBS:
            results = gen.prompt_logprobs([w.payload for w in items], **({"top_k": head.settings} if head.settings
                                                                          else {}))
        else:
            streams = [w.on_text for w in items]
            extra = {"streams": streams} if any(streams) else {}
            results = [(g.text, g.prompt_tokens, g.completion_tokens) for g in gen.generate(
                [w.payload for w in items], description=None, settings=head.settings,
                stop_rows=[lambda w=w: w.cancelled for w in items], **extra)]
        return results

    def _refuse_queued(self) -> None:
        while (w := self._next(0)) is not None:
            self._left_queue(w)
            _settle(w.future, exc=ServerClosing())

    def close(self, timeout: float = 600) -> None:
        self._closed.set()
        if self._worker is not None:
            self._worker.join(timeout)
        self._refuse_queued()
