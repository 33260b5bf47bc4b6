"""Batched generation: left padding, greedy by default, stop strings, and per-answer
token counts and latency."""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from toolkit.chat import Messages, TrainItem, cut_at_stop, render_chat, tokenize_item
from toolkit.config import GeneratorConfig
from toolkit.models import (
    ModelRef,
    load_causal_lm,
    load_tokenizer,
    merged_model,
    pick_device,
    pick_dtype,
    resolve_generator,
)
from toolkit.progress import task_bar


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float   # wall time of the batch this answer came in: what a caller waited
    compute_s: float   # the batch's wall time divided by its size: the amortised cost


@contextmanager
def _no_bar():
    yield lambda n: None


class PrefixStore:
    """Key/value caches of the prompts a generator prefilled last, by token ids (prefix
    caching, as vLLM does it, within one process). The harness scores the gold answer's
    likelihood (perplexity) under the very prompt the arm just answered: with the prompt's
    keys and values kept, that costs a forward pass over the few answer tokens instead of
    the whole prompt again. Least recently used entries go first past `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._kv: OrderedDict[tuple[int, ...], list] = OrderedDict()
        self.hits = self.misses = 0

    def put(self, key: tuple[int, ...], kv: list) -> None:
        if self.max_bytes <= 0:
            return
        size = sum(k.nbytes + v.nbytes for k, v in kv)
        if key in self._kv:
            self.bytes -= sum(k.nbytes + v.nbytes for k, v in self._kv.pop(key))
        self._kv[key] = kv
        self.bytes += size
        while self.bytes > self.max_bytes and self._kv:
            _, old = self._kv.popitem(last=False)
            self.bytes -= sum(k.nbytes + v.nbytes for k, v in old)

    def get(self, key: tuple[int, ...]) -> list | None:
        kv = self._kv.get(key)
        if kv is None:
            self.misses += 1
            return None
        self._kv.move_to_end(key)
        self.hits += 1
        return kv


class RowStreamer:
    """A transformers streamer for a whole batch (its TextStreamer takes one row): hands each
    row's new text to that row's callback as it is generated. The pieces add up to exactly the
    text `generate` returns: text that may begin a stop string, trailing whitespace and a
    half-decoded character are held back until the next token settles them."""

    def __init__(self, tok, callbacks: list, stop: list[str], eos_ids: set[int]):
        self.tok, self.cbs, self.stop, self.eos = tok, callbacks, stop, eos_ids
        self.tokens: list[list[int]] = [[] for _ in callbacks]
        self.sent = [""] * len(callbacks)
        self.done = [cb is None for cb in callbacks]
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() passes the prompt first
            self.prompt_seen = True
            return
        for j, t in enumerate(value.reshape(-1).tolist()):
            if self.done[j]:
                continue
            if t in self.eos:
                self._emit(j, final=True)
                continue
            self.tokens[j].append(t)
            self._emit(j, final=False)

    def end(self) -> None:
        for j in range(len(self.cbs)):
            if not self.done[j]:
                self._emit(j, final=True)

    def _emit(self, j: int, final: bool) -> None:
        text, hit = cut_at_stop(self.tok.decode(self.tokens[j], skip_special_tokens=True), self.stop)
        final = final or hit
        text = text.lstrip()
        if final:
            text = text.rstrip()
            self.done[j] = True
        else:
            if text.endswith("\ufffd"):
                return
            hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[:len(text) - hold].rstrip()
        if len(text) > len(self.sent[j]) and text.startswith(self.sent[j]):
            self.cbs[j](text[len(self.sent[j]):])
            self.sent[j] = text


class Generator:
    """A causal LM and its tokenizer, answering batches of chat prompts."""

    def __init__(self, cfg: GeneratorConfig, model, tokenizer, ref: ModelRef, device: str, *,
                 prefix_cache_mb: int = 0):
        self.cfg, self.model, self.tokenizer, self.ref, self.device = cfg, model, tokenizer, ref, device
        self.prefixes = PrefixStore(prefix_cache_mb << 20)

    @classmethod
    def load(cls, cfg: GeneratorConfig, ref: ModelRef | None = None, *, prefix_cache_mb: int = 0) -> "Generator":
        ref = ref or resolve_generator(cfg.model)
        device = pick_device(cfg.device)
        model = load_causal_lm(ref, device, pick_dtype(device, cfg.dtype))
        return cls(cfg, model, load_tokenizer(ref.path), ref, device, prefix_cache_mb=prefix_cache_mb).warm_up()

    def warm_up(self) -> "Generator":
        """One tiny generation, so one-off kernel set-up is not billed to the first answers' latency."""
        # torch, numpy: imported on first use, not when this module loads
        import torch
        enc = self.tokenizer(["Hello"], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            self.model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        return self

    def render(self, messages: Messages) -> str:
        return render_chat(self.tokenizer, messages)

    def count_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def _prefill(self, rows: list[list[int]]):
        """One forward pass over every row but its last token (left-padded, position ids
        counting real tokens only): the batch's key/value cache, ids and attention mask.
        The last token is left for `generate` or the answer continuation to process."""
        # torch, numpy: imported on first use, not when this module loads
        import torch
        pad = self.tokenizer.pad_token_id
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                             use_cache=True, logits_to_keep=1)
        return out.past_key_values, ids, mask

    @staticmethod
    def _row_kv(cache, b: int, n: int) -> list:
        """Row b's keys and values of its n real prefix tokens (left padding dropped), per layer."""
        return [(layer.keys[b, :, layer.keys.shape[2] - n:].clone(), layer.values[b, :, layer.values.shape[2] - n:].clone())
                for layer in cache.layers]

    def answer_nll(self, prompts: list[Messages], targets: list[str]) -> list[tuple[float, int]]:
        """Summed negative log-likelihood (nats) of each target answer (plus end-of-turn) given
        its prompt, and the number of answer tokens: the loglikelihood request of
        lm-evaluation-harness, used for perplexity. A prompt this generator just answered
        reuses its keys and values (PrefixStore); the others are prefilled here."""
        # torch, transformers, numpy: imported on first use, not when this module loads
        import torch
        from transformers import DynamicCache


        tok = self.tokenizer
        pad = tok.pad_token_id
        items = []
        for p, t in zip(prompts, targets):
            x = tokenize_item(tok, TrainItem(p, t), 4096)
            n_prompt = sum(1 for v in x["labels"] if v == -100)
            if n_prompt < 2:
                raise ValueError("a prompt needs at least two tokens")
            items.append((x["input_ids"][:n_prompt], x["input_ids"][n_prompt:]))
        out: list[tuple[float, int] | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        for b0 in range(0, len(order), self.cfg.batch_size):
            idx = order[b0:b0 + self.cfg.batch_size]
            kvs = {i: self.prefixes.get(tuple(items[i][0][:-1])) for i in idx}
            missing = [i for i in idx if kvs[i] is None]
            if missing:
                cache, _, _ = self._prefill([items[i][0] for i in missing])
                for j, i in enumerate(missing):
                    kvs[i] = self._row_kv(cache, j, len(items[i][0]) - 1)
            lens = [len(items[i][0]) - 1 for i in idx]
            width = max(lens)
            cache = DynamicCache()
            for layer in range(len(kvs[idx[0]])):
                k0, v0 = kvs[idx[0]][layer]
                keys = k0.new_zeros((len(idx), k0.shape[0], width, k0.shape[2]))
                values = v0.new_zeros((len(idx), v0.shape[0], width, v0.shape[2]))
                for j, i in enumerate(idx):
                    k, v = kvs[i][layer]
                    keys[j, :, width - k.shape[1]:] = k
                    values[j, :, width - v.shape[1]:] = v
                cache.update(keys, values, layer)
            # the continuation: the prompt's last token, then the answer but its last token;
            # its logits predict every answer token
            conts = [[items[i][0][-1]] + items[i][1][:-1] for i in idx]
            cw = max(map(len, conts))
            cont = torch.tensor([c + [pad] * (cw - len(c)) for c in conts], device=self.device)
            cmask = torch.tensor([[1] * len(c) + [0] * (cw - len(c)) for c in conts], device=self.device)
            pmask = torch.tensor([[0] * (width - n) + [1] * n for n in lens], device=self.device)
            pos = torch.tensor(lens, device=self.device)[:, None] + torch.arange(cw, device=self.device)[None]
            tgt = torch.tensor([items[i][1] + [pad] * (cw - len(items[i][1])) for i in idx], device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=cont, attention_mask=torch.cat([pmask, cmask], 1), position_ids=pos,
                                    past_key_values=cache, use_cache=True).logits
                lp = torch.log_softmax(logits.float(), -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            lp = (lp * cmask).sum(1)
            for j, i in enumerate(idx):
                out[i] = (float(-lp[j]), len(items[i][1]))
        return out  # type: ignore[return-value]

    def prompt_logprobs(self, texts: list[str], top_k: int = 0) -> list[dict]:
        """For each text: the log-probability of every token given the tokens before it (the
        first has none), each token's string and character offset (what /v1/completions returns
        with `echo` and `logprobs`), the greedy next token with its log-probability and, with
        `top_k`, the k most likely tokens at every position ({token: log-probability}, as
        OpenAI's `top_logprobs`; lm-evaluation-harness reads them to tell a greedy answer).
        Texts are left-padded into batches of at most 4,096 tokens (position ids count real
        tokens)."""
        # torch, numpy: imported on first use, not when this module loads
        import torch

        tok = self.tokenizer
        encs = [tok(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts]
        out: list[dict | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encs[i]["input_ids"]))
        stop_ids = {i for i in (tok.eos_token_id, tok.pad_token_id) if i is not None}
        b0 = 0
        while b0 < len(order):
            width = max(1, len(encs[order[b0]]["input_ids"]))
            idx = order[b0:b0 + max(1, 4096 // width)]
            b0 += len(idx)
            rows = [encs[i]["input_ids"] or [tok.eos_token_id] for i in idx]
            ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            for j, i in enumerate(idx):
                n, text = len(rows[j]), texts[i]
                lp = torch.log_softmax(logits[j, width - n:].float(), -1)  # one row at a time: less memory
                got = lp[:-1].gather(-1, ids[j, width - n + 1:, None])[:, 0].tolist() if n > 1 else []
                nxt = int(lp[-1].argmax())
                offsets = encs[i]["offset_mapping"]
                out[i] = {"tokens": [text[a:b] for a, b in offsets], "token_logprobs": [None] + got if encs[i]["input_ids"] else [],
                          "text_offset": [a for a, _ in offsets], "next_token_id": nxt,
                          "next_token": "" if nxt in stop_ids else tok.decode([nxt]),
                          "next_logprob": float(lp[-1, nxt])}
                if top_k:
                    vals, top = lp.topk(top_k, dim=-1)
                    tops = [{tok.decode([t]): float(v) for t, v in zip(ti.tolist(), vi.tolist())}
                            for ti, vi in zip(top, vals)]
                    out[i]["top_logprobs"] = ([None] + tops[:-1]) if encs[i]["input_ids"] else []
                    out[i]["next_top_logprobs"] = tops[-1]
        return out  # type: ignore[return-value]

    def choice_nll(self, prompts: list[Messages], choices: list[str]) -> list[list[float]]:
        """Summed NLL of every choice (plus end-of-turn) as the answer to each prompt. The
        prompt runs once and its key/value cache is shared by all choices, so 77 labels
        cost one prompt pass plus 77 short continuations instead of 77 full passes."""
        # torch, numpy: imported on first use, not when this module loads
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id
        ids = [tok(c + (tok.eos_token or ""), add_special_tokens=False)["input_ids"] for c in choices]
        width = max(map(len, ids))
        cids = torch.tensor([c + [pad] * (width - len(c)) for c in ids], device=self.device)
        cmask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in ids], device=self.device)
        out = []
        with task_bar("Scoring labels", len(prompts)) as advance:
            for p in prompts:
                pids = tok(render_chat(tok, p), add_special_tokens=False)["input_ids"]
                with torch.inference_mode():
                    first = self.model(input_ids=torch.tensor([pids], device=self.device), use_cache=True)
                    cache = first.past_key_values
                    cache.batch_repeat_interleave(len(choices))
                    attn = torch.cat([torch.ones(len(choices), len(pids), dtype=cmask.dtype, device=self.device), cmask], 1)
                    cont = self.model(input_ids=cids, attention_mask=attn, past_key_values=cache, use_cache=False)
                    lp0 = torch.log_softmax(first.logits[0, -1].float(), -1)[cids[:, 0]]
                    lp = torch.log_softmax(cont.logits[:, :-1].float(), -1).gather(-1, cids[:, 1:].unsqueeze(-1)).squeeze(-1)
                nll = -(lp0 + (lp * cmask[:, 1:]).sum(1))
                out.append(nll.tolist())
                advance(1)
        return out

    def generate(self, prompts: list[Messages | str], *, description: str | None = "Generating",
                 settings=None, streams: list | None = None, stop_rows: list | None = None,
                 on_done=None) -> list[Generation]:
        """Answers to chat prompts (or prompts already rendered as text), batched by length.
        One loop on purpose (the hot path): prefix cache, padding, stopping criteria and
        streamers are set up per batch from the same locals.
        `settings` (toolkit.backends.Settings) overrides the config's max_new_tokens, stop,
        temperature and seed; `description=None` draws no progress bar (the server).
        `streams[i]`, where given, is called with each new piece of answer i as it is
        generated (the pieces add up to the answer's text). `stop_rows[i]()`, where given, is
        asked at every step whether answer i should stop there (its client has gone).
        `on_done(indices, generations)`, where given, is called after each batch."""
        # torch, transformers, numpy: imported on first use, not when this module loads
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok, cfg = self.tokenizer, self.cfg
        if settings is not None:
            cfg = cfg.model_copy(update={"max_new_tokens": settings.max_tokens, "stop": list(settings.stop),
                                         "temperature": settings.temperature, "seed": settings.seed})
        if cfg.temperature > 0 and cfg.seed is not None:
            torch.manual_seed(cfg.seed % 2 ** 64)  # an API seed is a signed 64-bit integer
        tok.padding_side = "left"
        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]  # a str is rendered already
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        lengths = [len(x) for x in ids]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # similar lengths batch together
        out: list[Generation | None] = [None] * len(texts)
        stop = [s for s in cfg.stop if s]

        # A new stop string must end in the newest token, so it lies within the last
        # len(stop) + 1 tokens (each decodes to at least a character); 4 more absorb a
        # multi-byte character or a dropped leading space at the window's edge. Decoding only
        # that tail keeps a step's cost independent of how much was generated.
        window = max((len(s) for s in stop), default=0) + 5

        class StopOnStrings(StoppingCriteria):
            def __init__(self, start: int, rows: list):
                self.start, self.rows = start, rows

            def __call__(self, input_ids, scores, **kw):
                done = [bool(r and r()) for r in self.rows]
                if stop:
                    for j, row in enumerate(input_ids):
                        if not done[j]:
                            tail = row[max(self.start, row.shape[0] - window):]
                            done[j] = cut_at_stop(tok.decode(tail, skip_special_tokens=True), stop)[1]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        eos_ids = {i for i in [tok.eos_token_id, tok.pad_token_id] if i is not None}
        with (task_bar(description, len(texts)) if description else _no_bar()) as advance:
            for b in range(0, len(order), cfg.batch_size):
                idx = order[b:b + cfg.batch_size]
                rows = [ids[i] for i in idx]
                t0 = time.perf_counter()
                if min(map(len, rows)) > 1:
                    # the prompts but their last token in one forward pass, kept for the likelihood
                    # request that may follow (PrefixStore); generate() continues from that cache
                    cache, input_ids, mask = self._prefill(rows)
                    if self.prefixes.max_bytes:
                        for j, r in enumerate(rows):
                            self.prefixes.put(tuple(r[:-1]), self._row_kv(cache, j, len(r) - 1))
                    enc = {"input_ids": input_ids, "attention_mask": mask, "past_key_values": cache}
                else:  # a one-token prompt has no prefix to prefill
                    enc = dict(tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                                   add_special_tokens=False).to(self.device))
                start = enc["input_ids"].shape[1]
                streamer = None
                if streams and any(streams[i] for i in idx):
                    streamer = RowStreamer(tok, [streams[i] for i in idx], stop, eos_ids)
                with torch.inference_mode():
                    gen = self.model.generate(
                        **enc, streamer=streamer,
                        max_new_tokens=cfg.max_new_tokens, do_sample=cfg.temperature > 0,
                        temperature=cfg.temperature if cfg.temperature > 0 else None, top_p=None, top_k=None,
                        pad_token_id=tok.pad_token_id,
                        stopping_criteria=StoppingCriteriaList([StopOnStrings(start, [stop_rows[i] if stop_rows else None
                                                                                      for i in idx])]),
                    )
                dt = time.perf_counter() - t0
                for row, i in zip(gen[:, start:].tolist(), idx):
                    n = next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row))
                    text, _ = cut_at_stop(tok.decode(row[:n], skip_special_tokens=True), stop)
                    out[i] = Generation(text=text.strip(), prompt_tokens=lengths[i], completion_tokens=n,
                                        latency_s=dt, compute_s=dt / len(idx))
                if on_done is not None:
                    on_done(idx, [out[i] for i in idx])
                advance(len(idx))
        return out  # type: ignore[return-value]


def load_finetuned(ref: ModelRef, gen_cfg: GeneratorConfig, adapter: Path, *, prefix_cache_mb: int = 0) -> Generator:
    """A fresh base model with the adapter merged in (merging avoids LoRA overhead per token)."""
    model, device = merged_model(ref, gen_cfg, adapter)
    return Generator(gen_cfg, model, load_tokenizer(ref.path), ref, device, prefix_cache_mb=prefix_cache_mb).warm_up()
