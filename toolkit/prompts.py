"""The prompts every strategy shares, so arms differ only in what they add."""

from __future__ import annotations

from toolkit.chat import Messages


def system_prompt(instruction: str, labels: list[str] | None) -> str:
    if labels:
        return f"{instruction}\nAnswer with exactly one of these labels: {', '.join(labels)}."
    return instruction


def passages_block(passages: list[str]) -> str:
    return "\n".join(f"[{i}] {p.strip()}" for i, p in enumerate(passages, 1))


def user_message(question: str, passages: list[str] | None = None) -> str:
    if passages:
        return (f"Use the passages below to answer.\n\nPassages:\n{passages_block(passages)}\n\n"
                f"Question: {question}")
    return question


def build_messages(instruction: str, labels: list[str] | None, question: str, *,
                   passages: list[str] | None = None,
                   shots: list[tuple[str, str]] = ()) -> Messages:
    msgs: Messages = [{"role": "system", "content": system_prompt(instruction, labels)}]
    for q, a in shots:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": user_message(question, passages)})
    return msgs
