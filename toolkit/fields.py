"""Every field a suite can hold, read from the schema itself (toolkit.config and the strategy
configs): its type, default, bounds and description. `adaptbench suite-fields [SECTION]` prints
them; scripts/make_suite_reference.py writes the same as docs/suite-reference.md, which a test
keeps in step with the schema."""

from __future__ import annotations

import json
import shutil
import textwrap
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from strategies.registry import STRATEGY_TYPES
from toolkit.config import (
    ChromaServerConfig,
    DataConfig,
    DecisionConfig,
    EmbedderConfig,
    FileSpec,
    GeneratorConfig,
    HnswConfig,
    JudgeConfig,
    KnowledgeBaseConfig,
    PriceConfig,
    SplitConfig,
    Suite,
)
from toolkit.errors import UserError
from toolkit.parts import part_of


def sections() -> dict[str, tuple[type[BaseModel], str]]:
    """section -> (model, where it sits in a suite), in the order a suite is written."""
    out: dict[str, tuple[type[BaseModel], str]] = {
        "suite": (Suite, "the top level of the suite file"),
        "data": (DataConfig, "data:"),
        "data.file": (FileSpec, "each of data.train, data.validation, data.test, data.file and data.extra_train[]; "
                                "a plain string is its path"),
        "data.split": (SplitConfig, "data.split:"),
        "generator": (GeneratorConfig, "generator:, and an arm's own generator: on top of it"),
        "embedder": (EmbedderConfig, "embedder:"),
    }
    for name, (_, cfg) in STRATEGY_TYPES.items():
        out[f"strategies.{name}"] = (cfg, f"strategies: {{ARM: {{type: {name}, ...}}}}")
    finetune = STRATEGY_TYPES["finetune"][1]
    for nested in ("augment", "search"):
        model = next(a for a in get_args(finetune.model_fields[nested].annotation) if isinstance(a, type))
        out[f"strategies.finetune.{nested}"] = (model, f"{nested}: of a finetune or rag_finetune arm")
    ray = next(a for a in get_args(finetune.model_fields["ray"].annotation) if isinstance(a, type))
    out["strategies.ray"] = (ray, "ray: of any arm, read under `adaptbench run --ray`")
    out["knowledge_base"] = (KnowledgeBaseConfig, "knowledge_base:, when it is not just a folder")
    out["knowledge_base.chroma"] = (ChromaServerConfig, "knowledge_base.chroma: (a Chroma server)")
    out["knowledge_base.hnsw"] = (HnswConfig, "knowledge_base.hnsw: (the index's HNSW graph)")
    out.update({"decision": (DecisionConfig, "decision:"), "judge": (JudgeConfig, "judge:"),
                "prices": (PriceConfig, "prices:")})
    return out


@dataclass
class FieldDoc:
    name: str
    type: str
    default: str
    description: str
    part: str | None


def _model_section(model: type) -> str | None:
    return next((name for name, (m, _) in sections().items() if m is model), None)


def type_name(ann: Any) -> str:
    """A field's type as a suite author reads it: `int`, `'grid' | 'random'`, `list[str]`, `null`..."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(dict.fromkeys(type_name(a) for a in args))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if ann is type(None):
        return "null"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"({_model_section(ann) or ann.__name__})"
    if ann is Any:
        return "any"
    return getattr(ann, "__name__", str(ann))


def _bounds(info) -> str:
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = [f"{sign} {getattr(m, k)}" for m in info.metadata for k, sign in marks.items()
             if getattr(m, k, None) is not None]
    return f" ({', '.join(found)})" if found else ""


def _default(info) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(its defaults)"
    return json.dumps(value, ensure_ascii=False)  # JSON is YAML: the default as a suite would spell it


def fields(model: type[BaseModel]) -> list[FieldDoc]:
    return [FieldDoc(name, type_name(info.annotation) + _bounds(info), _default(info),
                     " ".join((info.description or "").split()), part_of(model, name))
            for name, info in model.model_fields.items()]


def pick(section: str | None) -> dict[str, tuple[type[BaseModel], str]]:
    """The sections a name asks for: all, one (`generator`, `strategies.finetune` or just
    `finetune`), or every section under a prefix (`strategies`)."""
    every = sections()
    if not section:
        return every
    chosen = {k: v for k, v in every.items()
              if k == section or k.startswith(section + ".") or k.split(".")[-1] == section}
    if not chosen:
        raise UserError(f"no section '{section}' (choose from: {', '.join(every)})", field="SECTION")
    return chosen


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def render_text(section: str | None = None, width: int | None = None) -> str:
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    out = []
    for name, (model, where) in pick(section).items():
        out.append(f"{name}  ({where})")
        if _doc(model):
            out += textwrap.wrap(_doc(model), width, initial_indent="  ", subsequent_indent="  ")
        for f in fields(model):
            out.append(f"  {f.name}: {f.type} = {f.default}")
            out += textwrap.wrap(f.description, width, initial_indent="      ", subsequent_indent="      ")
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default_cell(default: str) -> str:
    return f"*{default}*" if default in ("required", "(its defaults)") else f"`{_cell(default)}`"


def render_markdown() -> str:
    out = ["# Suite reference", "",
           "Every field a suite file can hold, generated from the schema by `scripts/make_suite_reference.py`",
           "(`adaptbench suite-fields [SECTION]` prints the same in a terminal). A test fails when this file",
           "and the schema disagree.", ""]
    for name, (model, where) in sections().items():
        out += [f"## {name}", "", f"Where: {where}.", ""]
        if _doc(model):
            out += [_doc(model), ""]
        out += ["| field | type | default | description |", "|---|---|---|---|"]
        out += [f"| `{f.name}` | {_cell(f.type)} | {_default_cell(f.default)} | {_cell(f.description)} |"
                for f in fields(model)]
        out.append("")
    return "\n".join(out)
