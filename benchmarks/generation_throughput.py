#!/usr/bin/env python3
"""Generation throughput, measured side by side in one run on the same prompts:

1. local batched vs one at a time: the `transformers` backend answering the prompts in
   batches of --batch-size (left-padded, sorted by length once) against one request at a time;
2. API concurrency 8 vs 1: the `openai` backend (official client) against `adaptbench serve`'s
   app on loopback (the same model, its engine batching requests that arrive together),
   8 requests in flight against 1.

    python benchmarks/generation_throughput.py                    # bundled SmolLM2-135M
    ADAPTBENCH_DTYPE=float32 python benchmarks/generation_throughput.py   # a CPU without native bf16

Greedy answers are compared between the modes (padding can move a float by an ulp, so a
near-tie may flip a token; the count is printed). Ends with `name: value` lines.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ADAPTBENCH_OFFLINE", "1")  # toolkit/__init__.py: the hub libraries offline
os.environ.setdefault("ADAPTBENCH_QUIET", "1")


def prompts(n: int) -> list[list[dict]]:
    """Demo test questions, a third with two knowledge-base passages: realistic, varied lengths."""
    from toolkit.data import read_examples
    from toolkit.data.kb import read_knowledge_base
    from toolkit.prompts import build_messages

    root = Path(__file__).resolve().parent.parent
    ex = read_examples(root / "eval_suites" / "demo" / "test.jsonl", task="qa")
    docs = read_knowledge_base(root / "knowledge_bases" / "halcyra").documents
    return [build_messages("Answer with a few words.", None, ex[i % len(ex)].input,
                           passages=[docs[i % len(docs)].text[:600], docs[(i * 7 + 3) % len(docs)].text[:600]]
                           if i % 3 == 0 else None) for i in range(n)]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--max-wait-ms", type=float, default=25.0, help="the engine's batching window (adaptbench serve --max-wait-ms)")
    args = ap.parse_args()

    from toolkit.backends import GenRequest, Settings
    from toolkit.backends.local import TransformersBackend
    from toolkit.backends.openai_api import OpenAIBackend
    from toolkit.config import GeneratorConfig
    from toolkit.models import keep_freed_memory
    from toolkit.serving.app import LoopbackServer
    from toolkit.serving.engine import Engine
    from toolkit.serving.serve import model_app

    keep_freed_memory()
    cfg = GeneratorConfig(model=args.model, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    local = TransformersBackend(cfg, prefix_cache_mb=0)
    gen = local.generator
    settings = Settings.of(cfg)
    reqs = [GenRequest(p, settings) for p in prompts(args.prompts)]
    local.generate(reqs[:2], description=None)  # warm the kernels for both shapes of call

    batched, t_batched = timed(lambda: local.generate(reqs, description=None))
    single, t_single = timed(lambda: [local.generate([r], description=None)[0] for r in reqs])
    same_local = sum(a.text == b.text for a, b in zip(batched, single))

    # as `adaptbench serve` runs: the engine on the main thread, HTTP and the clients on others
    engine = Engine(gen, max_batch=args.batch_size, max_wait_ms=args.max_wait_ms, background=False)
    runs: dict[int, tuple] = {}
    sizes: dict[int, list[int]] = {}
    with LoopbackServer(model_app(engine, "bench")) as server:
        def clients():
            for c in (1, 8):
                api = OpenAIBackend(GeneratorConfig(backend="openai", base_url=server.base_url, model="bench",
                                                    concurrency=c, max_new_tokens=args.max_new_tokens))
                api.generate(reqs[:2], description="warm-up")
                seen = len(engine.batches)
                runs[c] = timed(lambda: api.generate(reqs, description=f"concurrency {c}"))
                sizes[c] = engine.batches[seen:]
                api.close()

        driver = threading.Thread(target=clients)
        driver.start()
        engine.run(until=lambda: not driver.is_alive())
    engine.close()
    same_api = sum(a.text == b.text for a, b in zip(runs[1][0], runs[8][0]))
    toks = sum(c.completion_tokens for c in batched)

    from benchmarks.finetune_throughput import cpu_name
    dtype = str(gen.model.dtype).replace("torch.", "")
    print(f"{args.prompts} prompts, {args.model} on {gen.device}/{dtype}, up to {args.max_new_tokens} new tokens, "
          f"greedy; {toks} tokens generated in the batched run")
    print(f"local batched (batch {args.batch_size})  {t_batched:7.1f} s  {toks / t_batched:7.1f} tok/s")
    print(f"local one at a time        {t_single:7.1f} s  {toks / t_single:7.1f} tok/s")
    print(f"API concurrency 1          {runs[1][1]:7.1f} s")
    print(f"API concurrency 8          {runs[8][1]:7.1f} s  (mean batch {sum(sizes[8]) / max(1, len(sizes[8])):.1f} "
          f"requests in the engine)")
    print(f"identical greedy answers: local batched vs single {same_local}/{args.prompts}, "
          f"API 8 vs 1 {same_api}/{args.prompts}")
    print(f"cpu: {cpu_name()}")
    print(f"precision: {dtype}")
    print(f"identical_answers_local: {same_local}/{args.prompts}")
    print(f"identical_answers_api: {same_api}/{args.prompts}")
    print(f"batched_vs_single: {t_single / t_batched:.2f}")
    print(f"api_concurrency_8_vs_1: {runs[1][1] / runs[8][1]:.2f}")


if __name__ == "__main__":
    main()
