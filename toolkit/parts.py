"""The parts of a config. A suite keeps its settings flat (`generator: {model: ...,
max_new_tokens: ...}`), as users write them; each field names the part of its config it
belongs to, and code that needs one part (what loads a model, what one request changes, what
the trainer reads) asks for that part by name instead of keeping a list of the other fields to
leave out. Its own module so the strategy configs, which `ls` imports, do not load the suite
schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def part(name: str) -> dict[str, Any]:
    """`Field(..., **part("generation"))`: the field belongs to that part."""
    return {"json_schema_extra": {"part": name}}


def part_of(model: type[BaseModel], field: str) -> str | None:
    extra = model.model_fields[field].json_schema_extra
    return extra.get("part") if isinstance(extra, dict) else None  # type: ignore[return-value]


def fields_of(model: type[BaseModel], *parts: str) -> tuple[str, ...]:
    """The fields of `model` in the given parts, in declaration order."""
    return tuple(f for f in model.model_fields if part_of(model, f) in parts)


def values_of(cfg: BaseModel, *parts: str) -> dict[str, Any]:
    """{field: value} of the given parts of a config."""
    return {f: getattr(cfg, f) for f in fields_of(type(cfg), *parts)}
