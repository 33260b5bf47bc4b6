"""Paraphrase augmentation for knowledge injection.

Ovadia et al. (2023, "Fine-Tuning or Retrieval?") found that a model absorbs new
facts through fine-tuning only when it sees them stated several ways. Each training
input gets `paraphrases` sampled rewordings by a generator model, keeping the
answer. Rewrites that are not usable paraphrases are rejected (see `_usable`); a
135M model rejects most of its own. The raw generations are cached by content
(model, inputs, settings, seed), so a rerun reuses them and their generation time
stays part of the arm's setup cost.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import replace

from toolkit.backends.generation import Generator
from toolkit.cache import cache_root, content_hash, locked
from toolkit.data import Example, normalize_text
from toolkit.models import resolve_generator
from toolkit.runs import atomic_write
from toolkit.training.distributed import is_distributed, main_first

SYSTEM = "You reword questions. Keep every name and number. Never answer the question."
# two demonstrations: without them a 135M model mostly answers the question instead (measured on the
# demo train split: 20 of 320 rewrites usable with an instruction alone, 51 of 80 with these)
SHOTS = [("How tall is the Ridge 5 tower?", "What is the height of the Ridge 5 tower?"),
         ("Who founded the Orla 3 company?", "Which person started the company behind the Orla 3?")]


def _messages(text: str) -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM}]
    for q, a in SHOTS:
        msgs += [{"role": "user", "content": f"Reword: {q}"}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": f"Reword: {text}"}]
AUGMENT_FORMAT = 3
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _usable(candidate: str, original: str, seen: set[str]) -> bool:
    """A paraphrase must be new, of sane length, still a question when the original is
    one, and keep every number of the original (small models often answer the question,
    or drop the model number, instead of rewording it)."""
    c = normalize_text(candidate).lower()
    if not c or c in seen or c == normalize_text(original).lower() or len(c) > 3 * len(original) + 20:
        return False
    if original.rstrip().endswith("?") and not candidate.rstrip().endswith("?"):
        return False
    if c.startswith(("rewrite", "question:", "paraphrase")):
        return False
    return all(n in candidate for n in NUMBER.findall(original))


def _keep(raw: list[str], original: str) -> list[str]:
    seen: set[str] = set()
    keep = []
    for cand in raw:
        cand = cand.strip().strip('"').strip()
        if _usable(cand, original, seen):
            seen.add(normalize_text(cand).lower())
            keep.append(cand)
    return keep


def paraphrase(examples: list[Example], cfg, res, gen_cfg) -> tuple[list[Example], dict]:
    """The examples plus their paraphrased copies (ids `<id>#p<k>`), and info for the report."""

    ref = resolve_generator(cfg.model) if cfg.model else res.ref(gen_cfg)
    inputs = [e.input for e in examples]
    key = content_hash({"model": ref.fingerprint, "inputs": inputs, "n": cfg.paraphrases, "temperature": cfg.temperature,
                        "seed": cfg.seed, "prompt": _messages("{text}"), "format": AUGMENT_FORMAT})
    path = cache_root() / "augment" / f"{key}.json"
    # several processes of one launch: the first writes, the others read; several runs sharing
    # the cache: one writes under the lock, the others wait and read
    with main_first(), (locked(path) if not is_distributed() else contextlib.nullcontext()):
        if path.exists():
            stored, cached = json.loads(path.read_text()), True
        else:
            stored, cached = _generate(inputs, cfg, res, gen_cfg, ref), False
            atomic_write(path, json.dumps(stored))
    # the raw generations are cached; the filter runs on every use, so it can improve without regenerating
    kept = [_keep(raw, e.input) for e, raw in zip(examples, stored["raw"])]
    out = list(examples)
    for e, paras in zip(examples, kept):
        out += [replace(e, id=f"{e.id}#p{k}", input=p) for k, p in enumerate(paras, 1)]
    added = len(out) - len(examples)
    info = {"paraphrases_added": added, "paraphrases_requested": cfg.paraphrases * len(examples),
            "paraphrases_rejected": cfg.paraphrases * len(examples) - added,
            "paraphrase_s": stored["seconds"], "paraphrases_cached": cached,
            "paraphrase_examples": [{"original": e.input, "paraphrases": p, "rejected": [r for r in raw if r not in p]}
                                    for e, p, raw in list(zip(examples, kept, stored["raw"]))[:5]]}
    return out, info


def _generate(inputs: list[str], cfg, res, arm_cfg, ref) -> dict:
    # torch, numpy: imported on first use, not when this module loads
    import torch


    gen_cfg = arm_cfg.model_copy(update={
        "temperature": cfg.temperature, "max_new_tokens": 64, "stop": ["\n"], "model": ref.name})
    base = res.local_generator(arm_cfg) if not cfg.model else Generator.load(gen_cfg, ref)
    gen = Generator(gen_cfg, base.model, base.tokenizer, base.ref, base.device)
    prompts = [_messages(t) for t in inputs for _ in range(cfg.paraphrases)]
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    outs = gen.generate(prompts, description="writing paraphrases")
    seconds = time.perf_counter() - t0
    raw = [[o.text for o in outs[i * cfg.paraphrases:(i + 1) * cfg.paraphrases]] for i in range(len(inputs))]
    return {"raw": raw, "seconds": seconds}
