"""Batched generation: left padding, greedy by default, stop strings, and per-answer
token counts and latency."""

from __future__ import annotations

import time
from dataclasses import dataclass

from toolkit.config import GeneratorConfig
from toolkit.models import ModelRef, load_causal_lm, load_tokenizer, pick_device, pick_dtype, resolve_generator
from toolkit.progress import task_bar

Messages = list[dict[str, str]]


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float   # wall time of the batch this answer came in: what a caller waited
    compute_s: float   # the batch's wall time divided by its size: the amortised cost


def render_chat(tokenizer, messages: Messages, *, add_generation_prompt: bool = True) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    # Models without a chat template (base models): a plain transcript.
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    text = text.lstrip()
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Generator:
    """A causal LM and its tokenizer, answering batches of chat prompts."""

    def __init__(self, cfg: GeneratorConfig, model, tokenizer, ref: ModelRef, device: str):
        self.cfg, self.model, self.tokenizer, self.ref, self.device = cfg, model, tokenizer, ref, device

    @classmethod
    def load(cls, cfg: GeneratorConfig, ref: ModelRef | None = None) -> "Generator":
        ref = ref or resolve_generator(cfg.model)
        device = pick_device(cfg.device)
        model = load_causal_lm(ref, device, pick_dtype(device, cfg.dtype))
        return cls(cfg, model, load_tokenizer(ref.path), ref, device).warm_up()

    def warm_up(self) -> "Generator":
        """One tiny generation, so one-off kernel set-up is not billed to the first answers' latency."""
        import torch
        enc = self.tokenizer(["Hello"], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            self.model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        return self

    def render(self, messages: Messages) -> str:
        return render_chat(self.tokenizer, messages)

    def count_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def answer_nll(self, prompts: list[Messages], targets: list[str]) -> list[tuple[float, int]]:
        """Summed negative log-likelihood (nats) of each target answer (plus end-of-turn) given
        its prompt, and the number of answer tokens: the loglikelihood request of
        lm-evaluation-harness, used for perplexity."""
        import torch

        from toolkit.training import TrainItem, tokenize_item

        tok = self.tokenizer
        items = [tokenize_item(tok, TrainItem(p, t), 4096) for p, t in zip(prompts, targets)]
        out: list[tuple[float, int]] = []
        pad = tok.pad_token_id
        for b in range(0, len(items), self.cfg.batch_size):
            batch = items[b:b + self.cfg.batch_size]
            width = max(len(x["input_ids"]) for x in batch)
            ids = torch.tensor([x["input_ids"] + [pad] * (width - len(x["input_ids"])) for x in batch], device=self.device)
            mask = torch.tensor([[1] * len(x["input_ids"]) + [0] * (width - len(x["input_ids"])) for x in batch], device=self.device)
            labels = torch.tensor([x["labels"] + [-100] * (width - len(x["labels"])) for x in batch], device=self.device)
            tgt = labels[:, 1:]
            keep = tgt != -100
            with torch.inference_mode():
                # the LM head only at answer positions: full-vocabulary logits for every prompt
                # token would cost ~1 GB per batch (49k vocabulary) and most of the time
                hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
                logp = torch.log_softmax(self.model.get_output_embeddings()(hidden[keep]).float(), dim=-1)
            token_lp = logp.gather(-1, tgt[keep].unsqueeze(-1)).squeeze(-1)
            per_row = torch.zeros(len(batch), device=token_lp.device).index_add_(
                0, keep.nonzero()[:, 0], token_lp)
            out += [(float(-per_row[i]), int(keep[i].sum())) for i in range(len(batch))]
        return out

    def choice_nll(self, prompts: list[Messages], choices: list[str]) -> list[list[float]]:
        """Summed NLL of every choice (plus end-of-turn) as the answer to each prompt. The
        prompt runs once and its key/value cache is shared by all choices, so 77 labels
        cost one prompt pass plus 77 short continuations instead of 77 full passes."""
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

    def generate(self, prompts: list[Messages], *, description: str = "Generating") -> list[Generation]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok, cfg = self.tokenizer, self.cfg
        tok.padding_side = "left"
        texts = [self.render(p) for p in prompts]
        lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # similar lengths batch together
        out: list[Generation | None] = [None] * len(texts)
        stop = [s for s in cfg.stop if s]

        class StopOnStrings(StoppingCriteria):
            def __init__(self, start: int):
                self.start = start

            def __call__(self, input_ids, scores, **kw):
                if not stop:
                    return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                done = [cut_at_stop(tok.decode(row[self.start:], skip_special_tokens=True), stop)[1]
                        for row in input_ids]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        eos_ids = {i for i in [tok.eos_token_id, tok.pad_token_id] if i is not None}
        with task_bar(description, len(texts)) as advance:
            for b in range(0, len(order), cfg.batch_size):
                idx = order[b:b + cfg.batch_size]
                enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
                start = enc["input_ids"].shape[1]
                t0 = time.perf_counter()
                with torch.inference_mode():
                    gen = self.model.generate(
                        **enc, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.temperature > 0,
                        temperature=cfg.temperature if cfg.temperature > 0 else None, top_p=None, top_k=None,
                        pad_token_id=tok.pad_token_id, stopping_criteria=StoppingCriteriaList([StopOnStrings(start)]),
                    )
                dt = time.perf_counter() - t0
                for row, i in zip(gen[:, start:].tolist(), idx):
                    n = next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row))
                    text, _ = cut_at_stop(tok.decode(row[:n], skip_special_tokens=True), stop)
                    out[i] = Generation(text=text.strip(), prompt_tokens=lengths[i], completion_tokens=n,
                                        latency_s=dt, compute_s=dt / len(idx))
                advance(len(idx))
        return out  # type: ignore[return-value]
