"""Paraphrase augmentation for knowledge injection.

Ovadia et al. (2023, "Fine-Tuning or Retrieval?") found that a model absorbs new
facts through fine-tuning only when it sees them stated several ways. Each training
input gets `paraphrases` sampled rewordings by a generator model, keeping the
answer; the results are cached by content (model, inputs, settings, seed), so a
rerun reuses them and their generation time stays part of the arm's setup cost.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from toolkit.cache import cache_root, content_hash
from toolkit.data import Example, normalize_text

PROMPT = ("Rewrite the following question in other words. Keep every name, number and detail. "
          "Reply with the rewritten question only.\n\n{text}")
AUGMENT_FORMAT = 1


def _usable(candidate: str, original: str, seen: set[str]) -> bool:
    c = normalize_text(candidate).lower()
    return bool(c) and c not in seen and len(c) <= 3 * len(original) + 20 and c != normalize_text(original).lower()


def paraphrase(examples: list[Example], cfg, ctx) -> tuple[list[Example], dict]:
    """The examples plus their paraphrased copies (ids `<id>#p<k>`), and info for the report."""
    from toolkit.distributed import main_first
    from toolkit.models import resolve_generator

    ref = resolve_generator(cfg.model) if cfg.model else ctx.generator_ref
    inputs = [e.input for e in examples]
    key = content_hash({"model": ref.fingerprint, "inputs": inputs, "n": cfg.paraphrases, "temperature": cfg.temperature,
                        "seed": cfg.seed, "prompt": PROMPT, "format": AUGMENT_FORMAT})
    path = cache_root() / "augment" / f"{key}.json"
    with main_first():  # several processes: the first writes, the others read
        if path.exists():
            stored, cached = json.loads(path.read_text()), True
        else:
            stored, cached = _generate(inputs, cfg, ctx, ref), False
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored))
            tmp.replace(path)
    out = list(examples)
    for e, paras in zip(examples, stored["paraphrases"]):
        out += [replace(e, id=f"{e.id}#p{k}", input=p) for k, p in enumerate(paras, 1)]
    added = len(out) - len(examples)
    info = {"paraphrases_added": added, "paraphrases_requested": cfg.paraphrases * len(examples),
            "paraphrase_s": stored["seconds"], "paraphrases_cached": cached,
            "paraphrase_examples": [{"original": e.input, "paraphrases": p}
                                    for e, p in list(zip(examples, stored["paraphrases"]))[:5]]}
    return out, info


def _generate(inputs: list[str], cfg, ctx, ref) -> dict:
    import torch

    from toolkit.generation import Generator

    gen_cfg = ctx.suite.generator.model_copy(update={
        "temperature": cfg.temperature, "max_new_tokens": 64, "stop": ["\n"], "model": ref.name})
    base = ctx.base_generator() if ref is ctx.generator_ref else Generator.load(gen_cfg, ref)
    gen = Generator(gen_cfg, base.model, base.tokenizer, base.ref, base.device)
    prompts = [[{"role": "user", "content": PROMPT.format(text=t)}] for t in inputs for _ in range(cfg.paraphrases)]
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    outs = gen.generate(prompts, description="writing paraphrases")
    seconds = time.perf_counter() - t0
    paras: list[list[str]] = []
    for i, text in enumerate(inputs):
        seen: set[str] = set()
        keep = []
        for o in outs[i * cfg.paraphrases:(i + 1) * cfg.paraphrases]:
            cand = o.text.strip().strip('"').strip()
            if _usable(cand, text, seen):
                seen.add(normalize_text(cand).lower())
                keep.append(cand)
        paras.append(keep)
    return {"paraphrases": paras, "seconds": seconds}
