"""Chat prompts as token ids: one rendering and one answer-masked tokenisation that
training, scoring, the local backend and the server share, so a prompt is the same
string whether it trains, answers or is served."""

from __future__ import annotations

from dataclasses import dataclass

Messages = list[dict[str, str]]


@dataclass
class TrainItem:
    messages: Messages  # the prompt, as the strategy will send it at answer time
    target: str
    weight: float = 1.0  # the loss weight of its answer tokens (finetune balance: class_weight)


def render_chat(tokenizer, messages: Messages, *, add_generation_prompt: bool = True) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    # Models without a chat template (base models): a plain transcript.
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    text = text.lstrip()
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def answer_suffix(tokenizer) -> str:
    """What ends an answer: the tokenizer's end-of-turn token (scored, and trained, as part of it)."""
    return tokenizer.eos_token or ""


def tokenize_item(tok, item: TrainItem, max_len: int) -> dict[str, list[int]]:
    """Prompt and answer as ids, with labels -100 on the prompt: the loss and the likelihood
    count the answer tokens (and end-of-turn) only."""
    return tokenize_counted(tok, item, max_len)[0]


def tokenize_counted(tok, item: TrainItem, max_len: int) -> tuple[dict[str, list[int]], int]:
    """tokenize_item, and how many tokens the max_len cut dropped (0: the example fits)."""
    prompt = tok(render_chat(tok, item.messages), add_special_tokens=False)["input_ids"]
    answer = tok(item.target + answer_suffix(tok), add_special_tokens=False)["input_ids"]
    full = len(prompt) + len(answer)
    answer = answer[:max_len - 1]
    prompt = prompt[-(max_len - len(answer)):]  # keep the end of the prompt (the question)
    ids = prompt + answer
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + answer}, full - len(ids)
