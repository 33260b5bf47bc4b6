"""The training files OpenAI's fine-tuning API takes, checked line by line with its rules:
chat (`{"messages": [...]}`, for chat models) and prompt/completion (`{"prompt": ...,
"completion": ...}`, for its completion models). A file holds one format throughout."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.chat import TrainItem

ROLES = ("system", "user", "assistant", "tool", "function")
MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id"}
CHAT, COMPLETION = "chat", "prompt_completion"


class FormatError(ValueError):
    def __init__(self, line: int | None, message: str):
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


def _chat_line(i: int, row: dict) -> None:
    if not isinstance(row.get("messages"), list) or not row["messages"]:
        raise FormatError(i, "each line must be a JSON object with a non-empty `messages` list (chat) or "
                             "`prompt` and `completion` strings")
    for j, m in enumerate(row["messages"]):
        if not isinstance(m, dict) or "role" not in m:
            raise FormatError(i, f"messages[{j}] needs a `role` and `content`")
        if m["role"] not in ROLES:
            raise FormatError(i, f"messages[{j}].role {str(m['role'])[:40]!r} is not one of {', '.join(ROLES)}")
        if extra := set(m) - MESSAGE_KEYS:
            raise FormatError(i, f"messages[{j}] has an unrecognised key {sorted(extra)[0][:40]!r}")
        if not isinstance(m.get("content"), str) and not m.get("function_call") and not m.get("tool_calls"):
            raise FormatError(i, f"messages[{j}].content must be a string")
    if not any(m["role"] == "assistant" for m in row["messages"]):
        raise FormatError(i, "no assistant message: every example needs the answer to learn")


def _completion_line(i: int, row: dict) -> None:
    for key in ("prompt", "completion"):
        if not isinstance(row.get(key), str):
            raise FormatError(i, f"`{key}` must be a string")
    if extra := set(row) - {"prompt", "completion"}:
        raise FormatError(i, f"unrecognised key {sorted(extra)[0][:40]!r}: a prompt/completion line holds "
                             f"`prompt` and `completion` only")
    if not row["completion"].strip():
        raise FormatError(i, "`completion` is empty: every example needs the answer to learn")


def check_training_file(data: bytes) -> tuple[int, str]:
    """(examples, format) of a training file; FormatError naming the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(None, "the file is not UTF-8 text") from None
    n, fmt = 0, None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(i, f"not valid JSON ({e.msg})") from None
        except RecursionError:  # thousands of nested brackets
            raise FormatError(i, "not valid JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            raise FormatError(i, "each line must be a JSON object")
        here = COMPLETION if "prompt" in row and "messages" not in row else CHAT
        if fmt is None:
            fmt = here
        elif here != fmt:
            raise FormatError(i, f"a {here.replace('_', '/')} line in a {fmt.replace('_', '/')} file: use one format "
                                 f"throughout")
        (_chat_line if fmt == CHAT else _completion_line)(i, row)
        n += 1
    if n == 0:
        raise FormatError(None, "the file holds no examples")
    return n, fmt or CHAT


def train_items(path: Path) -> list:
    """Examples as toolkit.chat.TrainItem. Chat: the conversation up to its last assistant
    message is the prompt, that message the answer the model learns. Prompt/completion: the
    prompt is one user turn (rendered with the model's chat template, as the server renders a
    fine-tuned model's /v1/completions prompt), the completion the answer."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "messages" in row:
            msgs = row["messages"]
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            items.append(TrainItem([{"role": m["role"], "content": m.get("content") or ""} for m in msgs[:last]],
                                   msgs[last]["content"]))
        else:
            items.append(TrainItem([{"role": "user", "content": row["prompt"]}], row["completion"].strip()))
    return items
