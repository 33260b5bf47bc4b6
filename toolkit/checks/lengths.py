"""Tokens for `adaptbench data check`: lengths per split and role with the generator's own
tokenizer, what each training arm's max_seq_length cuts, and what training would take.

A training example's length is counted exactly as the trainer counts it
(toolkit.chat.tokenize_counted: the arm's prompt through the chat template, then the answer
and the end-of-turn token), so the check and the run record agree."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from toolkit.chat import answer_suffix, render_chat
from toolkit.config import LoadedSuite, arm_generator
from toolkit.data import Example
from toolkit.errors import UserError
from toolkit.prompts import build_messages, system_prompt

FALLBACK_TOKENIZER = "smollm2-135m-instruct"


def percentiles(xs: list[int]) -> dict[str, float]:
    if not xs:
        return {}
    a = np.asarray(xs)
    return {"n": int(len(a)), "mean": round(float(a.mean()), 1), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "max": int(a.max())}


def tokenizer_for(loaded: LoadedSuite):
    """(tokenizer, what it is): the generator's; the bundled model's when the generator is an
    API model or its tokenizer cannot be loaded here (the report says which)."""
    # tokenizers (transformers): loaded only when lengths are measured
    from toolkit.models import generator_tokenizer

    g = loaded.suite.generator
    note = ""
    if g.backend == "transformers":
        try:
            return generator_tokenizer(g.model), g.model
        except (UserError, OSError, ValueError) as e:  # a folder without a tokenizer, a hub id offline...
            note = f" ({g.model}'s could not be loaded: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    else:
        note = f" (the generator is the API model {g.model}; its tokenizer is not available here)"
    return generator_tokenizer(FALLBACK_TOKENIZER), FALLBACK_TOKENIZER + note


def _count(tok, texts: list[str]) -> list[int]:
    out: list[int] = []
    for i in range(0, len(texts), 2048):
        out += [len(x) for x in tok(texts[i:i + 2048], add_special_tokens=False)["input_ids"]]
    return out


def measure(loaded: LoadedSuite, splits: dict[str, list[Example]], report, findings, *, trains: list[str],
            probe: bool) -> None:
    """Fill report.tokens, report.truncation, report.lengths and report.estimate."""
    s = loaded.suite
    tok, which = tokenizer_for(loaded)
    labels = (s.labels or sorted({e.label for p in splits.values() for e in p if e.label})) if s.has_labels else None
    system = len(tok(system_prompt(s.instruction, labels), add_special_tokens=False)["input_ids"])
    tokens: dict[str, Any] = {"tokenizer": which, "system_prompt": system}
    for name, part in splits.items():
        if part:
            tokens[name] = {"user": percentiles(_count(tok, [e.input for e in part])),
                            "assistant": percentiles(_count(tok, [e.target for e in part]))}
    report.tokens = tokens
    full_by_list: dict[bool, list[int]] = {}
    train = splits.get("train", [])
    for arm in trains:
        _, cfg = loaded.arms[arm]
        listed = bool(getattr(cfg, "label_list", True))
        if listed not in full_by_list:
            full_by_list[listed] = full_lengths(tok, s.instruction, labels if listed else None, train)
        report.truncation[arm] = truncation(arm, cfg, train, full_by_list[listed], findings)
    if trains and train:
        report.lengths["train"] = full_by_list[bool(getattr(loaded.arms[trains[0]][1], "label_list", True))]
    report.estimate = estimate(loaded, trains, train, full_by_list, probe=probe, tok=tok, labels=labels)
    report.estimate.update(api_cost(loaded, splits.get("test", []), tok, labels))


def full_lengths(tok, instruction: str, labels: list[str] | None, examples: list[Example]) -> list[int]:
    """Tokens of each example as the finetune arm trains on it (before any cut)."""
    prompts = [render_chat(tok, build_messages(instruction, labels, e.input)) for e in examples]
    end = answer_suffix(tok)
    return [p + a for p, a in zip(_count(tok, prompts), _count(tok, [e.target + end for e in examples]))]


def truncation(arm: str, cfg, train: list[Example], full: list[int], findings) -> dict[str, Any]:
    limit = cfg.max_seq_length
    over = [(e, n) for e, n in zip(train, full) if n > limit]
    p99 = float(np.percentile(full, 99)) if full else 0
    out = {"max_seq_length": limit, "examples": len(full), "examples_over": len(over),
           "tokens_cut": int(sum(n - limit for _, n in over)), "longest": max(full, default=0),
           "suggested_max_seq_length": int(math.ceil(max(p99, 16) / 64) * 64),   # keeps 99% whole
           "whole_max_seq_length": int(math.ceil(max(max(full, default=0), 16) / 64) * 64)}  # keeps every one
    if getattr(cfg, "needs_knowledge_base", False):
        out["note"] = "not counting the retrieved passages its prompts add (counted when it trains)"
    for e, n in over:
        findings.add("warning", "truncation", f"training examples longer than {arm}'s max_seq_length {limit} (their "
                     "start is cut)", f"{e.origin}: {n} tokens, {n - limit} cut")
    return out


def estimate(loaded: LoadedSuite, trains: list[str], train: list[Example], full_by_list: dict[bool, list[int]], *,
             probe: bool, tok, labels) -> dict[str, Any]:
    """Training tokens x epochs per training arm; time from a measured probe of the trainer;
    money from the suite's prices. API arms: the test split's tokens at the token prices."""
    s = loaded.suite
    out: dict[str, Any] = {"arms": {}}
    probes: dict[tuple, dict[str, Any]] = {}  # one per model and method: the arms that share them share it
    for arm in trains:
        _, cfg = loaded.arms[arm]
        full = full_by_list[bool(getattr(cfg, "label_list", True))]
        if not full:
            continue
        n = min(len(full), cfg.max_train_examples or len(full))
        per_epoch = float(np.mean([min(x, cfg.max_seq_length) for x in full])) * n
        e = {"train_examples": n, "epochs": cfg.num_train_epochs, "tokens_per_epoch": int(per_epoch),
             "tokens": int(per_epoch * cfg.num_train_epochs)}
        gen = arm_generator(s.generator, cfg.generator)
        if getattr(cfg, "method", "lora") == "openai_api" or gen.backend != "transformers":
            e["note"] = "trained by the endpoint's fine-tuning API: its price per training token is the endpoint's"
        elif probe:
            key = (gen.model, gen.device, gen.dtype, cfg.method, cfg.r if cfg.method != "full" else None,
                   cfg.per_device_train_batch_size)
            if key not in probes:
                # the probe trains a few steps: torch and the model load only when asked for
                from toolkit.training.probe import probe_throughput
                probes[key] = {**probe_throughput(loaded, arm, cfg, train, tok=tok, labels=labels), "arm": arm}
            measured = probes[key]
            e["probe_of"] = measured["arm"]
            if measured["tokens_per_s"]:
                e["seconds"] = round(e["tokens"] / measured["tokens_per_s"], 1)
                rate = s.prices.gpu_per_hour if measured["device"].startswith("cuda") else s.prices.cpu_per_hour
                if rate is not None:
                    e["usd"] = round(e["seconds"] / 3600 * rate, 4)
        out["arms"][arm] = e
    if probes:
        out["probe"] = next(iter(probes.values()))
        out["probes"] = list(probes.values())
    return out


def api_cost(loaded: LoadedSuite, test: list[Example], tok, labels) -> dict[str, Any]:
    """What scoring the test split once costs an API arm at the suite's token prices: each
    question's zero-shot prompt in, its gold answer's length out (few-shot and RAG prompts are
    longer; the report says so)."""
    s = loaded.suite
    api = [n for n, (_, cfg) in loaded.arms.items() if arm_generator(s.generator, cfg.generator).backend == "openai"
           and not getattr(cfg, "combines", False)]  # an ensemble asks its members, not a model
    p = s.prices
    if not api or not test or (p.input_per_1m_tokens is None and p.output_per_1m_tokens is None):
        return {}
    prompt = sum(_count(tok, [render_chat(tok, build_messages(s.instruction, labels, e.input)) for e in test]))
    answer = sum(_count(tok, [e.target for e in test]))
    usd = (prompt * (p.input_per_1m_tokens or 0) + answer * (p.output_per_1m_tokens or 0)) / 1e6
    return {"api": {"arms": api, "test_questions": len(test), "prompt_tokens": prompt, "answer_tokens": answer,
                    "usd_per_test_run": round(usd, 4), "usd_per_1k_queries": round(usd / len(test) * 1000, 4),
                    "note": "zero-shot prompts with the gold answers' lengths, counted with the tokenizer above; "
                            "few-shot and RAG prompts are longer"}}
